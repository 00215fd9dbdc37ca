-- What each new event asks of each local member's push rules: whether it notifies and
-- highlights them, and the actions themselves (for /notifications).
CREATE TABLE event_push_actions (
    event_nid       INTEGER NOT NULL REFERENCES events (event_nid),
    room_nid        INTEGER NOT NULL REFERENCES rooms (room_nid),
    user_id         TEXT NOT NULL,
    stream_ordering INTEGER NOT NULL,
    notify          INTEGER NOT NULL,
    highlight       INTEGER NOT NULL,
    actions         TEXT NOT NULL,
    ts              INTEGER NOT NULL,
    PRIMARY KEY (event_nid, user_id)
);
CREATE INDEX event_push_actions_user ON event_push_actions (user_id, room_nid, stream_ordering);
