-- Relations between events (`content.m.relates_to`): one row per relating event, written in the
-- transaction that persists it and deleted when it is redacted (redaction strips the relation).
-- Read by `/relations`, `/threads` and the aggregations bundled into events' `unsigned`.
CREATE TABLE event_relations (
    event_nid       BIGINT PRIMARY KEY REFERENCES events (event_nid),
    room_nid        BIGINT NOT NULL REFERENCES rooms (room_nid),
    -- The event related to. Not a foreign key: the parent may be unknown to this server.
    parent_event_id TEXT NOT NULL,
    rel_type        TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    sender          TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL
);
CREATE INDEX event_relations_parent ON event_relations (parent_event_id, stream_ordering);
-- `/threads`: the thread roots of a room by their latest reply.
CREATE INDEX event_relations_threads ON event_relations (room_nid, rel_type, stream_ordering);

-- Relations of the events stored before this table existed (redacted events have lost theirs).
INSERT INTO event_relations (event_nid, room_nid, parent_event_id, rel_type, event_type, sender, stream_ordering)
SELECT event_nid, room_nid, rel ->> 'event_id', rel ->> 'rel_type', event_type, sender, stream_ordering
FROM (
    SELECT e.event_nid, e.room_nid, e.event_type, e.sender, e.stream_ordering,
           (e.json::jsonb) -> 'content' -> 'm.relates_to' AS rel
    FROM events e
    WHERE e.state_key IS NULL AND e.redacted_by IS NULL
) AS related
WHERE jsonb_typeof(rel) = 'object'
  AND jsonb_typeof(rel -> 'event_id') = 'string'
  AND jsonb_typeof(rel -> 'rel_type') = 'string';
