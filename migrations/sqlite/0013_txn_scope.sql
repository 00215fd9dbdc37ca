-- Transaction ids are scoped by the endpoint they were used on (the spec: a retransmission is
-- the same device, the same txn id and the same HTTP path). `scope` is the path without its
-- version prefix and txn id, e.g. `/rooms/!r/send/m.room.message` or
-- `/rooms/!r/redact/$e`: the same txn id on another path is a new request. SQLite cannot
-- change a primary key, so the tables are rebuilt.
CREATE TABLE event_txn_ids_new (
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    txn_id     TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    created_ts INTEGER NOT NULL,
    scope      TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (user_id, device_id, scope, txn_id)
);
-- Rows written before this migration came from `/send` (or `/redact`, whose redactions are
-- recorded as sends of `m.room.redaction`; retrying one after the upgrade redacts again, which
-- changes nothing).
INSERT INTO event_txn_ids_new (user_id, device_id, txn_id, event_id, created_ts, scope)
SELECT t.user_id, t.device_id, t.txn_id, t.event_id, t.created_ts,
       COALESCE((SELECT '/rooms/' || r.room_id || '/send/' || e.event_type
                 FROM events e JOIN rooms r ON r.room_nid = e.room_nid
                 WHERE e.event_id = t.event_id), '')
FROM event_txn_ids t;
DROP TABLE event_txn_ids;
ALTER TABLE event_txn_ids_new RENAME TO event_txn_ids;
CREATE INDEX event_txn_ids_event ON event_txn_ids (event_id);

-- To-device transactions are per event type (`/sendToDevice/{eventType}/{txnId}`).
CREATE TABLE to_device_txns_new (
    sender     TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    txn_id     TEXT NOT NULL,
    created_ts INTEGER NOT NULL,
    event_type TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (sender, device_id, event_type, txn_id)
);
INSERT INTO to_device_txns_new (sender, device_id, txn_id, created_ts)
SELECT sender, device_id, txn_id, created_ts FROM to_device_txns;
DROP TABLE to_device_txns;
ALTER TABLE to_device_txns_new RENAME TO to_device_txns;
