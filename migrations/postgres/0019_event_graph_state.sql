-- The event graph (issue 14, second slice): the state before each event beside the state after
-- it, outliers without state, each room's current state as a state group (the resolution of the
-- states after its forward extremities), the changes of current state as a stream for sync, and
-- a stream range of its own for backfilled history. Events stored before this migration keep
-- everything: their state before is the state after their prev event (rooms were written by one
-- writer, in order), the current state group is the state after each room's newest event.

-- `state_group` is the state after the event (for a rejected event: the state before it);
-- `state_group_before` the state before it (the state at its prev events). Both are NULL for an
-- outlier, which has no place in the room's state, and `state_group_before` for a room's first
-- event.
ALTER TABLE events ALTER COLUMN state_group DROP NOT NULL;
ALTER TABLE events ADD COLUMN state_group_before BIGINT REFERENCES state_groups (state_group);
UPDATE events SET state_group_before = (
    SELECT p.state_group FROM event_edges g JOIN events p ON p.event_nid = g.cited_event_nid
    WHERE g.event_nid = events.event_nid AND g.kind = 0
    ORDER BY p.depth DESC, p.stream_ordering DESC LIMIT 1);

-- A room's current state as a group. `current_state` holds the same map flattened for the hot
-- reads; an append moves this group with compare-and-set, so two writers of one room (two
-- processes over one database) cannot interleave their changes unseen.
CREATE TABLE room_current_state (
    room_nid    BIGINT PRIMARY KEY REFERENCES rooms (room_nid),
    state_group BIGINT NOT NULL REFERENCES state_groups (state_group)
);
INSERT INTO room_current_state (room_nid, state_group)
SELECT e.room_nid, e.state_group FROM events e
WHERE e.stream_ordering = (SELECT MAX(x.stream_ordering) FROM events x WHERE x.room_nid = e.room_nid);

-- Every change of a room's current state, at the stream position of the append that made it:
-- how incremental sync learns of state that changed without a state event in the timeline (a
-- fork's resolution picking an older event). `event_nid` is NULL when the key left the state.
CREATE TABLE current_state_deltas (
    stream_ordering BIGINT NOT NULL,
    room_nid        BIGINT NOT NULL REFERENCES rooms (room_nid),
    event_type      TEXT NOT NULL,
    state_key       TEXT NOT NULL,
    event_nid       BIGINT REFERENCES events (event_nid),
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
