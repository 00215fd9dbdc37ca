-- Server-side search (`POST /search`): one row per searchable event (rowid = event_nid), written
-- in the transaction that persists it and deleted when it is redacted (redaction strips the
-- searched fields). `key` says which content field the text came from (`content.body`,
-- `content.name`, `content.topic`), so a search can be narrowed to some of them. The other
-- columns are stored beside the text (UNINDEXED) so that a search filters and orders its
-- matches without reading the events table.
CREATE VIRTUAL TABLE event_search USING fts5(
    value,
    key UNINDEXED,
    room_nid UNINDEXED,
    stream_ordering UNINDEXED,
    -- Stemmed like PostgreSQL's `english` configuration, so "redacted" finds "redact".
    tokenize = 'porter unicode61'
);

-- The events stored before this table existed (redacted ones have lost their text). The same
-- choice of field as the service's `search_text_of`: a message's body, a room's name or topic.
INSERT INTO event_search (rowid, value, key, room_nid, stream_ordering)
SELECT event_nid, value, key, room_nid, stream_ordering
FROM (
    SELECT event_nid, room_nid, stream_ordering,
           CASE event_type WHEN 'm.room.name' THEN 'content.name'
                           WHEN 'm.room.topic' THEN 'content.topic'
                           ELSE 'content.body' END AS key,
           json_extract(json, CASE event_type WHEN 'm.room.name' THEN '$.content.name'
                                              WHEN 'm.room.topic' THEN '$.content.topic'
                                              ELSE '$.content.body' END) AS value,
           json_type(json, CASE event_type WHEN 'm.room.name' THEN '$.content.name'
                                           WHEN 'm.room.topic' THEN '$.content.topic'
                                           ELSE '$.content.body' END) AS kind
    FROM events
    WHERE redacted_by IS NULL
      AND ((state_key IS NULL AND event_type NOT IN ('m.room.name', 'm.room.topic'))
           OR (state_key = '' AND event_type IN ('m.room.name', 'm.room.topic')))
) AS candidates
WHERE kind = 'text' AND value <> '';
