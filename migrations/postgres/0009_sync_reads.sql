-- How far a user has read counts their own latest event in the room: found by index, not by
-- scanning the room's events on every sync.
CREATE INDEX events_room_sender ON events (room_nid, sender, stream_ordering);
