-- Rooms, their events, state snapshots and the hot tables read on every send and sync.
-- Inside the database rooms, events and state groups have short integer ids (nids); strings
-- appear only at the edges.

CREATE TABLE rooms (
    room_nid     INTEGER PRIMARY KEY AUTOINCREMENT,
    room_id      TEXT NOT NULL UNIQUE,
    room_version TEXT NOT NULL,
    creator      TEXT NOT NULL,
    created_ts   INTEGER NOT NULL,
    -- Published in the room directory.
    is_public    INTEGER NOT NULL DEFAULT 0
);

-- Server-wide stream positions. Incrementing a row inside the writing transaction serialises
-- writers, so positions become visible in commit order and a reader never skips one.
CREATE TABLE stream_positions (
    stream   TEXT PRIMARY KEY,
    position INTEGER NOT NULL
);
INSERT INTO stream_positions (stream, position) VALUES ('events', 0);

-- State snapshots: a group holds only what changed since its parent; chains are bounded.
CREATE TABLE state_groups (
    state_group  INTEGER PRIMARY KEY AUTOINCREMENT,
    room_nid     INTEGER NOT NULL REFERENCES rooms (room_nid),
    parent_group INTEGER REFERENCES state_groups (state_group),
    chain_length INTEGER NOT NULL
);

CREATE TABLE events (
    event_nid        INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id         TEXT NOT NULL UNIQUE,
    room_nid         INTEGER NOT NULL REFERENCES rooms (room_nid),
    stream_ordering  INTEGER NOT NULL UNIQUE,
    depth            INTEGER NOT NULL,
    event_type       TEXT NOT NULL,
    state_key        TEXT,
    sender           TEXT NOT NULL,
    origin_server_ts INTEGER NOT NULL,
    -- The PDU as canonical JSON; replaced by its redacted form when a redaction applies.
    json             TEXT NOT NULL,
    redacted_by      TEXT,
    -- For a state event: the state event it replaced (clients see its content as prev_content).
    prev_state_nid   INTEGER,
    -- The room state after this event.
    state_group      INTEGER NOT NULL REFERENCES state_groups (state_group)
);
CREATE INDEX events_room_stream ON events (room_nid, stream_ordering);

CREATE TABLE state_group_entries (
    state_group INTEGER NOT NULL REFERENCES state_groups (state_group),
    event_type  TEXT NOT NULL,
    state_key   TEXT NOT NULL,
    event_nid   INTEGER NOT NULL REFERENCES events (event_nid),
    PRIMARY KEY (state_group, event_type, state_key)
);

CREATE TABLE current_state (
    room_nid   INTEGER NOT NULL REFERENCES rooms (room_nid),
    event_type TEXT NOT NULL,
    state_key  TEXT NOT NULL,
    event_nid  INTEGER NOT NULL REFERENCES events (event_nid),
    PRIMARY KEY (room_nid, event_type, state_key)
);

CREATE TABLE room_memberships (
    room_nid        INTEGER NOT NULL REFERENCES rooms (room_nid),
    user_id         TEXT NOT NULL,
    membership      TEXT NOT NULL,
    event_nid       INTEGER NOT NULL REFERENCES events (event_nid),
    stream_ordering INTEGER NOT NULL,
    forgotten       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (room_nid, user_id)
);
CREATE INDEX room_memberships_user ON room_memberships (user_id, membership);

CREATE TABLE forward_extremities (
    room_nid INTEGER NOT NULL REFERENCES rooms (room_nid),
    event_id TEXT NOT NULL,
    PRIMARY KEY (room_nid, event_id)
);

-- Client transaction ids, so a retried send returns the first send's event.
CREATE TABLE event_txn_ids (
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    txn_id     TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    created_ts INTEGER NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id)
);
