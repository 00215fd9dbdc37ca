-- The server's own ed25519 signing keys. The private half is encrypted at rest
-- (the service layer seals it with a key kept in the data directory).
CREATE TABLE server_signing_keys (
    key_id          TEXT PRIMARY KEY,
    public_key      BLOB NOT NULL,
    private_key_enc BLOB NOT NULL,
    created_ts      INTEGER NOT NULL,
    -- Set when the key is retired; retired keys are published as old_verify_keys.
    expired_ts      INTEGER
);
