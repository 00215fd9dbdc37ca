-- Pushers: where to send a user's push notifications (POST /pushers/set). Keyed by the user and
-- the (app_id, pushkey) pair the client chose. A pusher goes with the device that created it:
-- deleting the device (logout) deletes its pushers. `device_id` is NULL for pushers whose device
-- is unknown, which no foreign key then checks.
CREATE TABLE pushers (
    user_id             TEXT NOT NULL,
    app_id              TEXT NOT NULL,
    pushkey             TEXT NOT NULL,
    -- 'http' (the only kind delivered; the service refuses others).
    kind                TEXT NOT NULL,
    app_display_name    TEXT NOT NULL,
    device_display_name TEXT NOT NULL,
    profile_tag         TEXT,
    lang                TEXT NOT NULL,
    -- The pusher's `data` object, JSON text (for http: url, format and anything else).
    data                TEXT NOT NULL,
    device_id           TEXT,
    -- When the pushkey was last set: the push gateway's `pushkey_ts`.
    created_ts          INTEGER NOT NULL,
    PRIMARY KEY (user_id, app_id, pushkey),
    FOREIGN KEY (user_id, device_id) REFERENCES devices (user_id, device_id) ON DELETE CASCADE
);
-- `append: false` removes the same (app_id, pushkey) from every other user.
CREATE INDEX pushers_key ON pushers (app_id, pushkey);
CREATE INDEX pushers_device ON pushers (user_id, device_id);
