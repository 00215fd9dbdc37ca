-- End-to-end encryption keys: device keys, one-time and fallback keys, cross-signing keys and
-- signatures, the device-list stream that /sync and /keys/changes read, and server-side key
-- backup. The server stores keys as the clients sent them (JSON text) and never interprets the
-- encrypted parts. Everything is keyed by user id as a plain string: no assumption about its
-- form is made here, so account-key user ids map onto the same tables.

-- A user whose devices or keys changed gets a row at the next position: /sync's
-- device_lists.changed and /keys/changes read it.
INSERT INTO stream_positions (stream, position) VALUES ('device_lists', 0);
CREATE TABLE device_list_changes (
    stream_position BIGINT PRIMARY KEY,
    user_id         TEXT NOT NULL
);
CREATE INDEX device_list_changes_user ON device_list_changes (user_id, stream_position);

-- A device's identity keys, uploaded once (a different key for the same device is refused);
-- signatures added later are merged in. They go with the device.
CREATE TABLE e2e_device_keys (
    user_id   TEXT NOT NULL,
    device_id TEXT NOT NULL,
    key_json  TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id),
    FOREIGN KEY (user_id, device_id) REFERENCES devices (user_id, device_id) ON DELETE CASCADE
);

-- One-time keys, each claimed (deleted) at most once. `key_id` is the whole
-- `<algorithm>:<id>`; `algorithm` its prefix, for counting and claiming.
CREATE TABLE e2e_one_time_keys (
    user_id   TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id    TEXT NOT NULL,
    key_json  TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, key_id),
    FOREIGN KEY (user_id, device_id) REFERENCES devices (user_id, device_id) ON DELETE CASCADE
);
CREATE INDEX e2e_one_time_keys_claim ON e2e_one_time_keys (user_id, device_id, algorithm);

-- At most one fallback key per device and algorithm, handed out when no one-time key is left
-- (and then marked used, until the device uploads a new one).
CREATE TABLE e2e_fallback_keys (
    user_id   TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id    TEXT NOT NULL,
    key_json  TEXT NOT NULL,
    used      BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (user_id, device_id, algorithm),
    FOREIGN KEY (user_id, device_id) REFERENCES devices (user_id, device_id) ON DELETE CASCADE
);

-- A user's cross-signing keys: 'master', 'self_signing', 'user_signing'. Signatures by the
-- owner's own keys are merged into key_json.
CREATE TABLE e2e_cross_signing_keys (
    user_id  TEXT NOT NULL,
    key_type TEXT NOT NULL,
    key_json TEXT NOT NULL,
    PRIMARY KEY (user_id, key_type)
);

-- Signatures a user's user-signing key made on other users' master keys: shown only to the
-- signer, as the spec asks.
CREATE TABLE e2e_cross_signing_signatures (
    signer_user_id TEXT NOT NULL,
    signer_key_id  TEXT NOT NULL,
    target_user_id TEXT NOT NULL,
    target_key_id  TEXT NOT NULL,
    signature      TEXT NOT NULL,
    PRIMARY KEY (signer_user_id, target_user_id, target_key_id, signer_key_id)
);

-- Key backup versions. Versions count up per user and are never reused: a deleted version
-- keeps its row (deleted = TRUE) so the next one gets a new number.
CREATE TABLE e2e_room_keys_versions (
    user_id        TEXT NOT NULL,
    version        BIGINT NOT NULL,
    -- The {algorithm, auth_data} object as the client sent it.
    algorithm_json TEXT NOT NULL,
    etag           BIGINT NOT NULL DEFAULT 0,
    deleted        BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (user_id, version)
);

CREATE TABLE e2e_room_keys (
    user_id             TEXT NOT NULL,
    version             BIGINT NOT NULL,
    room_id             TEXT NOT NULL,
    session_id          TEXT NOT NULL,
    first_message_index BIGINT NOT NULL,
    forwarded_count     BIGINT NOT NULL,
    is_verified         BOOLEAN NOT NULL,
    -- The whole KeyBackupData object as the client sent it (session_data is opaque).
    key_json            TEXT NOT NULL,
    PRIMARY KEY (user_id, version, room_id, session_id)
);
