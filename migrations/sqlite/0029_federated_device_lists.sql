-- Device lists across servers (issue 17): what the device-list sender tells other servers of
-- local users' devices, and remote users' devices cached while this server shares a room with
-- them.

-- What a row of the device-list stream is about, for other servers: 'device' (the device
-- `device_id` got keys, was renamed or deleted: an `m.device_list_update`), 'device_on_join'
-- (the same, announced again because the user joined a room: its servers may not know the
-- device yet, and a Myelin receiver tells its clients nothing new), 'cross_signing'
-- (the user's master or self-signing key changed: an `m.signing_key_update`), or 'user'
-- (something only this server's clients hear of: rows written before this migration, remote
-- users' changes, signatures by the user-signing key).
ALTER TABLE device_list_changes ADD COLUMN device_id TEXT;
ALTER TABLE device_list_changes ADD COLUMN kind TEXT NOT NULL DEFAULT 'user';

-- How far the device-list sender has read the device-list stream: every local change up to here
-- is in the federation outbox for the servers sharing a room with the user. Starts at the
-- stream's head: older changes are not sent.
CREATE TABLE federation_device_list_fanout (
    id       INTEGER PRIMARY KEY CHECK (id = 0),
    position INTEGER NOT NULL
);
INSERT INTO federation_device_list_fanout (id, position)
SELECT 0, position FROM stream_positions WHERE stream = 'device_lists';

-- When the cached devices of a remote user (below) were filled, as an events stream position:
-- a membership change after it in a room the user is in makes the cache suspect (this server
-- may have stopped sharing a room with them and missed updates). NULL: nothing cached.
ALTER TABLE remote_device_lists ADD COLUMN cached_at INTEGER;

-- A remote user's devices as their server last told us (`/user/devices` or an
-- `m.device_list_update` that followed on from what was cached).
CREATE TABLE remote_devices (
    user_id      TEXT NOT NULL,
    device_id    TEXT NOT NULL,
    -- The device keys as their server sent them; NULL for a device without keys.
    keys_json    TEXT,
    display_name TEXT,
    PRIMARY KEY (user_id, device_id)
);

-- A remote user's master and self-signing keys ('master', 'self_signing'), cached likewise.
CREATE TABLE remote_cross_signing_keys (
    user_id  TEXT NOT NULL,
    key_type TEXT NOT NULL,
    key_json TEXT NOT NULL,
    PRIMARY KEY (user_id, key_type)
);
