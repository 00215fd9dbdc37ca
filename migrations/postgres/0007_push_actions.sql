-- What each new event asks of each local member's push rules: whether it notifies and
-- highlights them, and the actions themselves (for /notifications).
CREATE TABLE event_push_actions (
    event_nid       BIGINT NOT NULL REFERENCES events (event_nid),
    room_nid        BIGINT NOT NULL REFERENCES rooms (room_nid),
    user_id         TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL,
    notify          BOOLEAN NOT NULL,
    highlight       BOOLEAN NOT NULL,
    actions         TEXT NOT NULL,
    ts              BIGINT NOT NULL,
    PRIMARY KEY (event_nid, user_id)
);
CREATE INDEX event_push_actions_user ON event_push_actions (user_id, room_nid, stream_ordering);
