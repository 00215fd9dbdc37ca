-- Other servers' signing keys, fetched from the server itself or through a notary, after their
-- self-signatures checked out. One row per (server, key id); a refetch replaces the row.
CREATE TABLE remote_server_keys (
    server_name    TEXT NOT NULL,
    key_id         TEXT NOT NULL,
    public_key     BYTEA NOT NULL,
    -- Until when signatures by the key count: the key object's valid_until_ts, or an old
    -- key's expired_ts (old_verify_keys).
    valid_until_ts BIGINT NOT NULL,
    is_old         BOOLEAN NOT NULL,
    -- After this the key is fetched again before it is used: the earlier of valid_until_ts
    -- and the fetch time plus 7 days (old keys: the fetch time plus 7 days).
    cache_until_ts BIGINT NOT NULL,
    fetched_ts     BIGINT NOT NULL,
    -- The key object the key came in, as its server signed it: relayed when serving as a notary.
    key_object     TEXT NOT NULL,
    PRIMARY KEY (server_name, key_id)
);
