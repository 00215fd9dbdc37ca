-- Receipts, to-device messages and presence: the per-user streams /sync delivers beside
-- events. Each has its own position in stream_positions (typing lives in memory).
INSERT INTO stream_positions (stream, position) VALUES ('receipts', 0), ('to_device', 0), ('presence', 0);

CREATE TABLE receipts (
    room_nid        INTEGER NOT NULL REFERENCES rooms (room_nid),
    user_id         TEXT NOT NULL,
    receipt_type    TEXT NOT NULL,
    -- '' for an unthreaded receipt.
    thread_id       TEXT NOT NULL,
    event_id        TEXT NOT NULL,
    ts              INTEGER NOT NULL,
    stream_position INTEGER NOT NULL,
    PRIMARY KEY (room_nid, user_id, receipt_type, thread_id)
);
CREATE INDEX receipts_stream ON receipts (room_nid, stream_position);

CREATE TABLE to_device_messages (
    stream_position INTEGER PRIMARY KEY,
    user_id         TEXT NOT NULL,
    device_id       TEXT NOT NULL,
    sender          TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    content         TEXT NOT NULL
);
CREATE INDEX to_device_messages_device ON to_device_messages (user_id, device_id, stream_position);

-- A sender's transaction ids, so a retried /sendToDevice delivers once.
CREATE TABLE to_device_txns (
    sender     TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    txn_id     TEXT NOT NULL,
    created_ts INTEGER NOT NULL,
    PRIMARY KEY (sender, device_id, txn_id)
);

CREATE TABLE presence (
    user_id         TEXT PRIMARY KEY,
    state           TEXT NOT NULL,
    status_msg      TEXT,
    last_active_ts  INTEGER NOT NULL,
    stream_position INTEGER NOT NULL
);
