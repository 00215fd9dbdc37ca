-- The event graph (issue 14, first slice): each event's edges as rows, its status, and a
-- topological ordering for reading history apart from the stream ordering that sync uses;
-- forward extremities by event nid. Events stored before this migration keep everything: their
-- edges are read out of their JSON and the extremities carried over from the old table.

-- One row per entry of an event's `prev_events` (kind 0) or `auth_events` (kind 1). The cited
-- event is kept by id because it may not be stored yet (federation delivers out of order);
-- `cited_event_nid` is filled when it is, by whichever of the two arrives second.
CREATE TABLE event_edges (
    event_nid       INTEGER NOT NULL REFERENCES events (event_nid),
    kind            INTEGER NOT NULL CHECK (kind IN (0, 1)),
    cited_event_id  TEXT NOT NULL,
    cited_event_nid INTEGER,
    PRIMARY KEY (event_nid, kind, cited_event_id)
);
-- Who cites an event: to fill `cited_event_nid` when it arrives, and to walk the graph forwards.
CREATE INDEX event_edges_cited ON event_edges (cited_event_id, kind);

-- 'normal', 'outlier' (stored for its auth chain only, no state or timeline place),
-- 'rejected' (failed authorisation; `rejection_reason` says why) or 'soft_failed' (authorised
-- by its own state but not by the room's current state: kept out of timelines and extremities).
ALTER TABLE events ADD COLUMN status TEXT NOT NULL DEFAULT 'normal'
    CHECK (status IN ('normal', 'outlier', 'rejected', 'soft_failed'));
ALTER TABLE events ADD COLUMN rejection_reason TEXT;
-- Where the event sits in the room's history as `/messages` and `/context` read it: its depth
-- for events persisted in order (backfill will give older events orderings of their own).
ALTER TABLE events ADD COLUMN topological_ordering INTEGER NOT NULL DEFAULT 0;
UPDATE events SET topological_ordering = depth;
CREATE INDEX events_room_topological ON events (room_nid, topological_ordering, stream_ordering);

-- The edges of the events stored before this table. Room versions 1 and 2 cite
-- `[event id, {hashes}]` pairs, later versions plain event ids.
INSERT INTO event_edges (event_nid, kind, cited_event_id)
SELECT e.event_nid, 0, CASE j.type WHEN 'array' THEN json_extract(j.value, '$[0]') ELSE j.value END
FROM events e, json_each(e.json, '$.prev_events') j
WHERE json_type(e.json, '$.prev_events') = 'array'
  AND (j.type = 'text' OR (j.type = 'array' AND json_type(j.value, '$[0]') = 'text'))
ON CONFLICT DO NOTHING;
INSERT INTO event_edges (event_nid, kind, cited_event_id)
SELECT e.event_nid, 1, CASE j.type WHEN 'array' THEN json_extract(j.value, '$[0]') ELSE j.value END
FROM events e, json_each(e.json, '$.auth_events') j
WHERE json_type(e.json, '$.auth_events') = 'array'
  AND (j.type = 'text' OR (j.type = 'array' AND json_type(j.value, '$[0]') = 'text'))
ON CONFLICT DO NOTHING;
UPDATE event_edges SET cited_event_nid = (SELECT c.event_nid FROM events c WHERE c.event_id = event_edges.cited_event_id);

-- Forward extremities by nid: the events of a room that no stored event cites as a prev event
-- yet (what a new local event builds on). Carried over from the table keyed by event id.
ALTER TABLE forward_extremities RENAME TO forward_extremities_by_id;
CREATE TABLE forward_extremities (
    room_nid  INTEGER NOT NULL REFERENCES rooms (room_nid),
    event_nid INTEGER NOT NULL REFERENCES events (event_nid),
    PRIMARY KEY (room_nid, event_nid)
);
INSERT INTO forward_extremities (room_nid, event_nid)
SELECT f.room_nid, e.event_nid FROM forward_extremities_by_id f JOIN events e ON e.event_id = f.event_id
WHERE TRUE
ON CONFLICT DO NOTHING;
DROP TABLE forward_extremities_by_id;
