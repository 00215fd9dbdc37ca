-- Transactions other servers sent to /_matrix/federation/v1/send/{txnId}: the answer given, so
-- that a retransmission (the sender retries until it hears 200) gets the same answer without the
-- transaction being processed again. Rows older than a day are pruned.
CREATE TABLE federation_inbound_txns (
    origin      TEXT NOT NULL,
    txn_id      TEXT NOT NULL,
    -- The response body as sent: {"pdus": {event_id: {} | {"error": ...}}}.
    response    TEXT NOT NULL,
    received_ts BIGINT NOT NULL,
    PRIMARY KEY (origin, txn_id)
);
CREATE INDEX federation_inbound_txns_received ON federation_inbound_txns (received_ts);

-- Remote users' device lists as far as their servers told us (m.device_list_update and
-- m.signing_key_update EDUs): the newest stream id heard and whether what this server knows of
-- their devices is stale (to be fetched again before it is used).
CREATE TABLE remote_device_lists (
    user_id    TEXT PRIMARY KEY NOT NULL,
    stream_id  BIGINT NOT NULL,
    stale      BOOLEAN NOT NULL,
    updated_ts BIGINT NOT NULL
);
