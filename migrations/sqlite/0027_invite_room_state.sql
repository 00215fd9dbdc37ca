-- Invites to rooms this server is not in (issue 16). Such a room has no state here: its row,
-- the invite event (an outlier) and the invitee's membership are stored, and the stripped
-- state the inviting server sent with the invite is what the invitee's clients are shown.
-- One row per invitee, for the invite event it came with (a later invite replaces it).
CREATE TABLE invite_room_state (
    room_nid  INTEGER NOT NULL REFERENCES rooms (room_nid),
    user_id   TEXT NOT NULL,
    event_nid INTEGER NOT NULL REFERENCES events (event_nid),
    -- A JSON array of the events in the client format they are shown in.
    events    TEXT NOT NULL,
    PRIMARY KEY (room_nid, user_id)
);
