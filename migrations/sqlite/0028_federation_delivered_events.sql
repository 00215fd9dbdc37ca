-- Local users' events that a resident server delivers to the room's other servers, so this
-- server's federation sender leaves them: a join made through another server's send_join (the
-- resident accepted it and sends it on). Written in the same transaction as the event; read by
-- the sender's one "ours to send" test beside federation_relayed_events.
CREATE TABLE federation_delivered_events (
    event_nid BIGINT PRIMARY KEY REFERENCES events (event_nid)
);
