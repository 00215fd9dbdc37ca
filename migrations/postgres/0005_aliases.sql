-- Local room aliases (`#localpart:this.server` → room) and the directory's read path.
-- Aliases on other servers are resolved over federation and never stored here.

CREATE TABLE room_aliases (
    alias      TEXT PRIMARY KEY,
    room_nid   BIGINT NOT NULL REFERENCES rooms (room_nid),
    -- Who created the alias: the one user besides room moderators and admins who may delete it.
    creator    TEXT NOT NULL,
    created_ts BIGINT NOT NULL
);
CREATE INDEX room_aliases_room ON room_aliases (room_nid);

-- The published rooms, for /publicRooms without a scan of every room.
CREATE INDEX rooms_published ON rooms (room_nid) WHERE is_public;
