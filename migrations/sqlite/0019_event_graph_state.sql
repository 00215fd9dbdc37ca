-- no-transaction
-- (SQLite cannot drop a NOT NULL: the events table is rebuilt, which needs foreign keys off,
-- which cannot change inside a transaction; the rebuild runs in its own transaction below.)
--
-- The event graph (issue 14, second slice): the state before each event beside the state after
-- it, outliers without state, each room's current state as a state group (the resolution of the
-- states after its forward extremities), the changes of current state as a stream for sync, and
-- a stream range of its own for backfilled history. Events stored before this migration keep
-- everything: their state before is the state after their prev event (rooms were written by one
-- writer, in order), the current state group is the state after each room's newest event.
PRAGMA foreign_keys = OFF;
BEGIN IMMEDIATE;

-- `state_group` is the state after the event (for a rejected event: the state before it);
-- `state_group_before` the state before it (the state at its prev events). Both are NULL for an
-- outlier, which has no place in the room's state, and `state_group_before` for a room's first
-- event.
CREATE TABLE events_rebuilt (
    event_nid            INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id             TEXT NOT NULL UNIQUE,
    room_nid             INTEGER NOT NULL REFERENCES rooms (room_nid),
    stream_ordering      INTEGER NOT NULL UNIQUE,
    depth                INTEGER NOT NULL,
    event_type           TEXT NOT NULL,
    state_key            TEXT,
    sender               TEXT NOT NULL,
    origin_server_ts     INTEGER NOT NULL,
    json                 TEXT NOT NULL,
    redacted_by          TEXT,
    prev_state_nid       INTEGER,
    state_group          INTEGER REFERENCES state_groups (state_group),
    status               TEXT NOT NULL DEFAULT 'normal'
        CHECK (status IN ('normal', 'outlier', 'rejected', 'soft_failed')),
    rejection_reason     TEXT,
    topological_ordering INTEGER NOT NULL DEFAULT 0,
    state_group_before   INTEGER REFERENCES state_groups (state_group)
);
INSERT INTO events_rebuilt (event_nid, event_id, room_nid, stream_ordering, depth, event_type,
    state_key, sender, origin_server_ts, json, redacted_by, prev_state_nid, state_group, status,
    rejection_reason, topological_ordering, state_group_before)
SELECT e.event_nid, e.event_id, e.room_nid, e.stream_ordering, e.depth, e.event_type,
    e.state_key, e.sender, e.origin_server_ts, e.json, e.redacted_by, e.prev_state_nid,
    e.state_group, e.status, e.rejection_reason, e.topological_ordering,
    (SELECT p.state_group FROM event_edges g JOIN events p ON p.event_nid = g.cited_event_nid
     WHERE g.event_nid = e.event_nid AND g.kind = 0
     ORDER BY p.depth DESC, p.stream_ordering DESC LIMIT 1)
FROM events e;
DROP TABLE events;
ALTER TABLE events_rebuilt RENAME TO events;
CREATE INDEX events_room_stream ON events (room_nid, stream_ordering);
CREATE INDEX events_room_sender ON events (room_nid, sender, stream_ordering);
CREATE INDEX events_room_time ON events (room_nid, origin_server_ts, stream_ordering);
CREATE INDEX events_room_topological ON events (room_nid, topological_ordering, stream_ordering);

-- A room's current state as a group. `current_state` holds the same map flattened for the hot
-- reads; an append moves this group with compare-and-set, so two writers of one room (two
-- processes over one database) cannot interleave their changes unseen.
CREATE TABLE room_current_state (
    room_nid    INTEGER PRIMARY KEY REFERENCES rooms (room_nid),
    state_group INTEGER NOT NULL REFERENCES state_groups (state_group)
);
INSERT INTO room_current_state (room_nid, state_group)
SELECT e.room_nid, e.state_group FROM events e
WHERE e.stream_ordering = (SELECT MAX(x.stream_ordering) FROM events x WHERE x.room_nid = e.room_nid);

-- Every change of a room's current state, at the stream position of the append that made it:
-- how incremental sync learns of state that changed without a state event in the timeline (a
-- fork's resolution picking an older event). `event_nid` is NULL when the key left the state.
CREATE TABLE current_state_deltas (
    stream_ordering INTEGER NOT NULL,
    room_nid        INTEGER NOT NULL REFERENCES rooms (room_nid),
    event_type      TEXT NOT NULL,
    state_key       TEXT NOT NULL,
    event_nid       INTEGER REFERENCES events (event_nid),
    PRIMARY KEY (room_nid, stream_ordering, event_type, state_key)
);
CREATE INDEX current_state_deltas_stream ON current_state_deltas (stream_ordering);
-- History so far: each state event changed the current state when it was written.
INSERT INTO current_state_deltas (stream_ordering, room_nid, event_type, state_key, event_nid)
SELECT stream_ordering, room_nid, event_type, state_key, event_nid FROM events
WHERE state_key IS NOT NULL AND status = 'normal';

-- Backfilled events take stream positions counting down from 0, below every live event, so
-- that sync (which reads forwards from its token) never sees old history as new.
INSERT INTO stream_positions (stream, position) VALUES ('backfill', 0);

-- The auth chain of an event is walked through its `auth_events` edges by nid.
CREATE INDEX event_edges_auth ON event_edges (event_nid, kind, cited_event_nid);

COMMIT;
PRAGMA foreign_keys = ON;
