-- Account keys (MSC4243, issue 19): the key <-> account mapping of MSC4243.md Q3, for local
-- users' keys and remote keys alike, with what this server knows of each claim.
--
-- One row per (key, claimed domain): `@K:a` and `@K:b` are different room members (Q1), each
-- with its own state. `user_id` is the key-form user id `@<key>:<domain>`, kept whole so the
-- membership index and every read can find a key-form member in one indexed lookup.
CREATE TABLE account_keys (
    account_key         TEXT NOT NULL,
    domain              TEXT NOT NULL,
    user_id             TEXT NOT NULL,
    -- The account name (localpart); NULL while unverified and after erasure.
    account_name        TEXT,
    state               TEXT NOT NULL CHECK (state IN ('local', 'verified', 'unverified', 'erased')),
    -- A local key's private half, sealed by the service (never plaintext); destroyed on erasure.
    private_key_enc     BLOB,
    created_ts          INTEGER NOT NULL,
    first_verified_ts   INTEGER,
    erased_ts           INTEGER,
    -- The signed {errcode: M_ERASED, domain, signatures} served after erasure (canonical JSON).
    erasure_attestation TEXT,
    -- Local erasures: position in this server's erasure log (MSC4243.md Q11), strictly increasing.
    erasure_id          INTEGER,
    -- Unverified remote keys: retry bookkeeping (item 24: never-answered domains first).
    attempts            INTEGER NOT NULL DEFAULT 0,
    last_attempt_ts     INTEGER,
    next_attempt_ts     INTEGER,
    last_outcome        TEXT,
    PRIMARY KEY (account_key, domain)
);
CREATE UNIQUE INDEX account_keys_user_id ON account_keys (user_id);
-- One key per local account, immutable: a second key for one name cannot be inserted.
CREATE UNIQUE INDEX account_keys_local_name ON account_keys (account_name, domain) WHERE state = 'local';
-- Remote verified names: not unique (per-room keys or equivocation give one name several keys).
CREATE INDEX account_keys_verified_name ON account_keys (account_name, domain) WHERE state = 'verified';
-- One verified (or local) domain per key: the first verification wins (Q1).
CREATE UNIQUE INDEX account_keys_one_owner ON account_keys (account_key) WHERE state IN ('local', 'verified');
CREATE UNIQUE INDEX account_keys_erasure_log ON account_keys (erasure_id) WHERE erasure_id IS NOT NULL;
CREATE INDEX account_keys_retry ON account_keys (next_attempt_ts) WHERE state = 'unverified';
