-- Server-side search (`POST /search`): one row per searchable event, written in the transaction
-- that persists it and deleted when it is redacted (redaction strips the searched fields).
-- `key` says which content field the text came from (`content.body`, `content.name`,
-- `content.topic`), so a search can be narrowed to some of them.
CREATE TABLE event_search (
    event_nid       BIGINT PRIMARY KEY REFERENCES events (event_nid),
    room_nid        BIGINT NOT NULL REFERENCES rooms (room_nid),
    stream_ordering BIGINT NOT NULL,
    key             TEXT NOT NULL,
    vector          TSVECTOR NOT NULL
);
-- The word lookup; ordering and room filters run on the matches it finds.
CREATE INDEX event_search_vector ON event_search USING GIN (vector);

-- The events stored before this table existed (redacted ones have lost their text). The same
-- choice of field as the service's `search_text_of`: a message's body, a room's name or topic.
INSERT INTO event_search (event_nid, room_nid, stream_ordering, key, vector)
SELECT event_nid, room_nid, stream_ordering, key, to_tsvector('english', value)
FROM (
    SELECT e.event_nid, e.room_nid, e.stream_ordering,
           CASE e.event_type WHEN 'm.room.name' THEN 'content.name'
                             WHEN 'm.room.topic' THEN 'content.topic'
                             ELSE 'content.body' END AS key,
           (e.json::jsonb) -> 'content' -> (CASE e.event_type WHEN 'm.room.name' THEN 'name'
                                                   WHEN 'm.room.topic' THEN 'topic'
                                                   ELSE 'body' END) AS field
    FROM events e
    WHERE e.redacted_by IS NULL
      AND ((e.state_key IS NULL AND e.event_type NOT IN ('m.room.name', 'm.room.topic'))
           OR (e.state_key = '' AND e.event_type IN ('m.room.name', 'm.room.topic')))
) AS candidates
CROSS JOIN LATERAL (SELECT field #>> '{}' AS value) AS text
WHERE jsonb_typeof(field) = 'string' AND value <> '';
