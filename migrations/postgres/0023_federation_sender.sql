-- The federation sender and the per-destination backoff (issue 15). The sender is driven by the
-- events stream: each destination keeps the stream position up to which it has been served, so
-- nothing is lost across restarts, and nothing is queued per event.

-- How far the sender has looked through the events stream for each local event's destinations:
-- every event up to here is accounted for in `federation_destinations` and
-- `federation_destination_rooms`. Starts at the current head: history older than the sender is
-- not sent.
CREATE TABLE federation_fanout (
    id       SMALLINT PRIMARY KEY CHECK (id = 0),
    position BIGINT NOT NULL
);
INSERT INTO federation_fanout (id, position)
SELECT 0, position FROM stream_positions WHERE stream = 'events';

-- Every server this one sends to.
CREATE TABLE federation_destinations (
    destination      TEXT PRIMARY KEY,
    -- Every event meant for the destination at or below this stream ordering has been delivered
    -- (or, after an outage, left for the destination to fetch).
    event_position   BIGINT NOT NULL,
    -- The same in the receipts stream, for local users' read receipts.
    receipt_position BIGINT NOT NULL,
    -- The last transaction number used: transaction ids count up and are never reused.
    txn_serial       BIGINT NOT NULL DEFAULT 0,
    -- When the destination last accepted a transaction (ms).
    last_success_ts  BIGINT
);

-- The rooms a destination is owed events in, with the stream ordering of the latest event meant
-- for it there: a destination's pending events are read from these rooms only, and no further.
CREATE TABLE federation_destination_rooms (
    destination     TEXT NOT NULL REFERENCES federation_destinations (destination),
    room_nid        BIGINT NOT NULL REFERENCES rooms (room_nid),
    stream_ordering BIGINT NOT NULL,
    PRIMARY KEY (destination, room_nid)
);

-- EDUs that must survive a restart (to-device messages for remote users), until the
-- destination has accepted the transaction that carried them.
CREATE TABLE federation_edu_outbox (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    destination TEXT NOT NULL,
    edu_type    TEXT NOT NULL,
    -- The EDU's content as JSON.
    content     TEXT NOT NULL,
    created_ts  BIGINT NOT NULL
);
CREATE INDEX federation_edu_outbox_destination ON federation_edu_outbox (destination, id);

-- Destinations whose last request failed, shared by every kind of outbound request. A row is
-- removed as soon as the destination answers or sends a request of its own.
CREATE TABLE federation_backoff (
    destination   TEXT PRIMARY KEY,
    -- Consecutive failures; the wait after the n-th is min * 2^(n-1), capped.
    failures      BIGINT NOT NULL,
    -- No request goes to the destination before this (ms).
    retry_at_ts   BIGINT NOT NULL,
    -- The first failure of this outage (ms).
    down_since_ts BIGINT NOT NULL,
    last_error    TEXT NOT NULL
);

-- Local users' receipts newer than a destination's position.
CREATE INDEX receipts_position ON receipts (stream_position);
