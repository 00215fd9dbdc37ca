-- Relations between events (`content.m.relates_to`): one row per relating event, written in the
-- transaction that persists it and deleted when it is redacted (redaction strips the relation).
-- Read by `/relations`, `/threads` and the aggregations bundled into events' `unsigned`.
CREATE TABLE event_relations (
    event_nid       INTEGER PRIMARY KEY REFERENCES events (event_nid),
    room_nid        INTEGER NOT NULL REFERENCES rooms (room_nid),
    -- The event related to. Not a foreign key: the parent may be unknown to this server.
    parent_event_id TEXT NOT NULL,
    rel_type        TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    sender          TEXT NOT NULL,
    stream_ordering INTEGER NOT NULL
);
CREATE INDEX event_relations_parent ON event_relations (parent_event_id, stream_ordering);
-- `/threads`: the thread roots of a room by their latest reply.
CREATE INDEX event_relations_threads ON event_relations (room_nid, rel_type, stream_ordering);

-- Relations of the events stored before this table existed (redacted events have lost theirs).
INSERT INTO event_relations (event_nid, room_nid, parent_event_id, rel_type, event_type, sender, stream_ordering)
SELECT event_nid, room_nid, json_extract(json, '$.content."m.relates_to".event_id'),
       json_extract(json, '$.content."m.relates_to".rel_type'), event_type, sender, stream_ordering
FROM events
WHERE state_key IS NULL AND redacted_by IS NULL
  AND json_type(json, '$.content."m.relates_to".event_id') = 'text'
  AND json_type(json, '$.content."m.relates_to".rel_type') = 'text';
