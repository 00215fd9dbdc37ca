#!/bin/sh
# Entrypoint of the Complement image (see Dockerfile): certificate, CA trust, MYELIN_* settings,
# then `myelin serve`. The settings mirror complement/myelindeploy/config.go: groups Myelin does
# not know yet are left out after asking `myelin check-config`, because Myelin exits 2 on an
# unknown key.
set -eu

: "${SERVER_NAME:?SERVER_NAME must be set}"
ca=/complement/ca
mkdir -p /data /tls

# A federation certificate for SERVER_NAME, signed with the run's CA.
openssl req -new -newkey rsa:2048 -nodes -subj "/CN=$SERVER_NAME" \
    -keyout /tls/server.key -out /tls/server.csr 2>/dev/null
printf 'subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth\n' "$SERVER_NAME" > /tls/ext.cnf
openssl x509 -req -in /tls/server.csr -CA "$ca/ca.crt" -CAkey "$ca/ca.key" -CAcreateserial \
    -days 7 -sha256 -extfile /tls/ext.cnf -out /tls/server.crt 2>/dev/null

# Trust the CA for outbound TLS (the system store, which Myelin's client also reads).
cp "$ca/ca.crt" /usr/local/share/ca-certificates/complement-ca.crt
update-ca-certificates >/dev/null 2>&1 || true

export MYELIN_SERVER_NAME="$SERVER_NAME"
export MYELIN_DATA_DIR=/data
export MYELIN_LISTEN__CLIENT=0.0.0.0:8008
export MYELIN_LISTEN__FEDERATION=0.0.0.0:8448
export MYELIN_TLS__CERTIFICATE=/tls/server.crt
export MYELIN_TLS__PRIVATE_KEY=/tls/server.key
export MYELIN_HTTP__SHUTDOWN_GRACE_PERIOD_SECS=2
export MYELIN_LOG__FILTER="${MYELIN_LOG__FILTER:-info}"
export NO_COLOR=1

# try_group "NAME" VAR=VALUE...: export the variables if `myelin check-config` accepts them.
try_group() {
    name="$1"; shift
    if env "$@" myelin check-config >/dev/null 2>&1; then
        for kv in "$@"; do export "$kv"; done
    else
        echo "complement-entrypoint: config group '$name' not accepted by this Myelin; left out" >&2
    fi
}

try_group registration MYELIN_REGISTRATION__ENABLED=true MYELIN_REGISTRATION__SHARED_SECRET=complement
try_group passwords MYELIN_PASSWORDS__MEMORY_KIB=8 MYELIN_PASSWORDS__ITERATIONS=1 MYELIN_PASSWORDS__PARALLELISM=1
# Future keys (names to be confirmed when Myelin adds them; keep in step with config.go):
try_group federation.ca MYELIN_FEDERATION__EXTRA_CA_CERTIFICATES="$ca/ca.crt"
try_group federation.allow_private_addresses MYELIN_FEDERATION__ALLOW_PRIVATE_ADDRESSES=true
try_group rate_limits MYELIN_RATE_LIMITS__ENABLED=false
try_group media.legacy MYELIN_MEDIA__LEGACY_UNAUTHENTICATED_ENDPOINTS=true

exec myelin serve
