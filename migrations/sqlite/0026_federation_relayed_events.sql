-- Events of other servers' users that this server sends on to the servers of their room as a
-- resident: a join, leave or knock that reached the room through this server's send_join,
-- send_leave or send_knock (the joining server is not in the room yet and cannot reach its other
-- servers itself). Written in the same transaction as the event; the federation sender's "our
-- events" are those of local senders and these.
CREATE TABLE federation_relayed_events (
    event_nid INTEGER PRIMARY KEY REFERENCES events (event_nid)
);
