# Sourced by the scripts that federate servers on loopback (tests/interop/synapse,
# tests/interop/account-keys, tests/e2ee): a private CA and one certificate per server, each for
# localhost and 127.0.0.1 (the host every test server name uses).
#
#   make_test_certificates <dir> <label>...   writes <dir>/ca.crt and <dir>/<label>.{crt,key}

make_test_certificates() {
    local dir="$1" name
    shift
    mkdir -p "$dir"
    openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -days 2 \
        -subj "/CN=Myelin test CA" -keyout "$dir/ca.key" -out "$dir/ca.crt" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        2>/dev/null
    for name in "$@"; do
        openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
            -subj "/CN=localhost" -keyout "$dir/$name.key" -out "$dir/$name.csr" 2>/dev/null
        printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
            "extendedKeyUsage=serverAuth,clientAuth" "subjectAltName=DNS:localhost,IP:127.0.0.1" \
            >"$dir/$name.ext"
        openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
            -CAcreateserial -days 2 -extfile "$dir/$name.ext" -out "$dir/$name.crt" 2>/dev/null
    done
}
