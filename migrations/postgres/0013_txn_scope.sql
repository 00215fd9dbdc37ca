-- Transaction ids are scoped by the endpoint they were used on (the spec: a retransmission is
-- the same device, the same txn id and the same HTTP path). `scope` is the path without its
-- version prefix and txn id, e.g. `/rooms/!r/send/m.room.message` or
-- `/rooms/!r/redact/$e`: the same txn id on another path is a new request.
ALTER TABLE event_txn_ids ADD COLUMN scope TEXT NOT NULL DEFAULT '';
-- Rows written before this migration came from `/send` (or `/redact`, whose redactions are
-- recorded as sends of `m.room.redaction`; retrying one after the upgrade redacts again, which
-- changes nothing).
UPDATE event_txn_ids SET scope = (
    SELECT '/rooms/' || r.room_id || '/send/' || e.event_type
    FROM events e JOIN rooms r ON r.room_nid = e.room_nid
    WHERE e.event_id = event_txn_ids.event_id
) WHERE EXISTS (SELECT 1 FROM events e WHERE e.event_id = event_txn_ids.event_id);
ALTER TABLE event_txn_ids DROP CONSTRAINT event_txn_ids_pkey;
ALTER TABLE event_txn_ids ADD PRIMARY KEY (user_id, device_id, scope, txn_id);

-- To-device transactions are per event type (`/sendToDevice/{eventType}/{txnId}`).
ALTER TABLE to_device_txns ADD COLUMN event_type TEXT NOT NULL DEFAULT '';
ALTER TABLE to_device_txns DROP CONSTRAINT to_device_txns_pkey;
ALTER TABLE to_device_txns ADD PRIMARY KEY (sender, device_id, event_type, txn_id);
