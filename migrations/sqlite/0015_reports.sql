-- Reports users make about events, rooms and other users (`/report`), for the server's admins.
-- Kept as sent: nothing else reads them yet (the admin API will).
CREATE TABLE reports (
    report_id   INTEGER PRIMARY KEY AUTOINCREMENT,
    reporter    TEXT NOT NULL,
    -- What is reported: a room (with an event, for content), or a user.
    room_id     TEXT,
    event_id    TEXT,
    user_id     TEXT,
    reason      TEXT,
    received_ts INTEGER NOT NULL
);
CREATE INDEX reports_received ON reports (received_ts);
