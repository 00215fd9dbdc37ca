-- Per-user data that needs no room: filters, account data (global and per room, which also
-- holds room tags as `m.tag` and push rules as `m.push_rules`), and profiles.

-- Filters uploaded by clients, as the canonical JSON of the parsed filter definition.
CREATE TABLE filters (
    filter_id   INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id     TEXT NOT NULL REFERENCES users (user_id),
    filter_json TEXT NOT NULL
);
CREATE INDEX filters_user ON filters (user_id);

-- The account data stream: one counter for the whole server, bumped by every write in the
-- writing transaction. The row lock orders concurrent writers, so positions become visible in
-- increasing order and /sync can return "everything after position N" without gaps.
CREATE TABLE account_data_stream (
    only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    position INTEGER NOT NULL
);
INSERT INTO account_data_stream (only_row, position) VALUES (TRUE, 0);

-- The latest content of each (user, room, type); `room_id` is '' for global account data.
CREATE TABLE account_data (
    user_id         TEXT NOT NULL REFERENCES users (user_id),
    room_id         TEXT NOT NULL,
    data_type       TEXT NOT NULL,
    content         TEXT NOT NULL,
    stream_position INTEGER NOT NULL,
    PRIMARY KEY (user_id, room_id, data_type)
);
CREATE INDEX account_data_user_stream ON account_data (user_id, stream_position);

-- Profiles of local users. NULL: the field is not set.
CREATE TABLE profiles (
    user_id     TEXT PRIMARY KEY REFERENCES users (user_id),
    displayname TEXT,
    avatar_url  TEXT
);
