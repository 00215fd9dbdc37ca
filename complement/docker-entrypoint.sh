#!/bin/sh
# Entrypoint of the Complement image (see Dockerfile): a certificate for SERVER_NAME signed with
# the run's CA, that CA trusted, the settings, then `myelin serve`. The settings mirror
# complement/myelindeploy/config.go: each group goes into a TOML file passed with --config and
# into MYELIN_* variables, and a group Myelin does not know yet is left out after asking
# `myelin check-config` (Myelin exits 2 on an unknown key).
#
# The paths can be moved for a smoke test without Docker (COMPLEMENT_CA_DIR, COMPLEMENT_DATA_DIR,
# COMPLEMENT_TLS_DIR, COMPLEMENT_LISTEN_HOST, MYELIN_BIN, COMPLEMENT_SKIP_CA_STORE=1).
set -eu

: "${SERVER_NAME:?SERVER_NAME must be set}"
ca="${COMPLEMENT_CA_DIR:-/complement/ca}"
data="${COMPLEMENT_DATA_DIR:-/data}"
tls="${COMPLEMENT_TLS_DIR:-/tls}"
host="${COMPLEMENT_LISTEN_HOST:-0.0.0.0}"
myelin="${MYELIN_BIN:-myelin}"
mkdir -p "$data" "$tls"

# A federation certificate for SERVER_NAME, signed with the run's CA.
openssl req -new -newkey rsa:2048 -nodes -subj "/CN=$SERVER_NAME" \
    -keyout "$tls/server.key" -out "$tls/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth\n' "$SERVER_NAME" > "$tls/ext.cnf"
openssl x509 -req -in "$tls/server.csr" -CA "$ca/ca.crt" -CAkey "$ca/ca.key" \
    -CAserial "$tls/ca.srl" -CAcreateserial -days 7 -sha256 -extfile "$tls/ext.cnf" \
    -out "$tls/server.crt" 2>/dev/null

# Trust the CA for outbound TLS (the system store, which Myelin's client also reads).
if [ -z "${COMPLEMENT_SKIP_CA_STORE:-}" ]; then
    cp "$ca/ca.crt" /usr/local/share/ca-certificates/complement-ca.crt
    update-ca-certificates >/dev/null 2>&1 || true
fi

config="$data/complement.toml"
probe="$data/complement-probe.toml"
export NO_COLOR=1

# setting KEY TOML_VALUE: add one line to the group being built.
group=""
setting() {
    group="$group$1 = $2
"
}
# commit_group NAME [required]: keep the group if `myelin check-config` accepts it together with
# what is already kept, and export its MYELIN_* variables; a refused required group stops here.
commit_group() {
    { cat "$config"; printf '%s' "$group"; } > "$probe"
    if out="$("$myelin" --config "$probe" check-config 2>&1)"; then
        printf '%s' "$group" >> "$config"
        # `a.b_c = "v"` -> MYELIN_A__B_C=v (strings bare, other values as written).
        printf '%s' "$group" | while IFS= read -r line; do
            [ -n "$line" ] || continue
            key="${line%% = *}"; value="${line#* = }"
            case "$value" in \"*\") value="${value#\"}"; value="${value%\"}" ;; esac
            printf "export MYELIN_%s='%s'\n" "$(printf '%s' "$key" | sed 's/\./__/g' | tr 'a-z' 'A-Z')" "$value"
        done > "$data/complement-env.group"
        . "$data/complement-env.group"
        cat "$data/complement-env.group" >> "$data/complement-env.sh"
    elif [ "${2:-}" = required ]; then
        echo "complement-entrypoint: myelin check-config refuses the core settings: $out" >&2
        exit 2
    else
        echo "complement-entrypoint: config group '$1' not accepted by this Myelin; left out ($out)" >&2
    fi
    group=""
}

echo "# Written by the Complement entrypoint." > "$config"
: > "$data/complement-env.sh"
setting server_name "\"$SERVER_NAME\""
setting data_dir "\"$data\""
setting listen.client "\"$host:8008\""
setting listen.federation "\"$host:8448\""
setting tls.certificate "\"$tls/server.crt\""
setting tls.private_key "\"$tls/server.key\""
setting http.shutdown_grace_period_secs 2
setting log.filter "\"${COMPLEMENT_MYELIN_LOG:-info}\""
commit_group core required
setting registration.enabled true
setting registration.shared_secret '"complement"'
commit_group registration
setting passwords.memory_kib 8
setting passwords.iterations 1
setting passwords.parallelism 1
commit_group passwords
setting rate_limits.enabled false
commit_group rate_limits
setting media.legacy_endpoints true
commit_group media.legacy
# Complement's URL-preview test serves its page from the host (a private address).
setting media.url_preview.enabled true
setting media.url_preview.allow_private_addresses true
commit_group media.url_preview
setting rooms.default_room_version '"10"'
commit_group rooms.default_room_version
# Federation keys (crates/service/src/config.rs; keep in step with config.go):
setting federation.trusted_ca_files "[\"$ca/ca.crt\"]"
commit_group federation.ca
setting federation.allow_private_addresses true
commit_group federation.allow_private_addresses
rm -f "$probe" "$data/complement-env.group"

exec "$myelin" --config "$config" serve
