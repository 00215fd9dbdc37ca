-- `/timestamp_to_event`: a room's events by the time their sender's server gave them, ties in
-- stream order, so that the event closest to a time is one index probe away.
CREATE INDEX events_room_time ON events (room_nid, origin_server_ts, stream_ordering);
