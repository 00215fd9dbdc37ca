-- Event edges in fewer indexes (issue 14's send-path budget): a local message writes about four
-- edges, and each index over them is one more page written per commit.
--
-- - The primary key carries `cited_event_nid`, so the auth chain's walk by event and kind reads
--   it from the key's index (`event_edges_auth` goes).
-- - "Who cites this event" is asked for prev edges only, by nid (an arriving event that is
--   already cited is no forward extremity); appended events cite the newest events, so this
--   index grows at its end.
-- - Edges citing events not stored yet are found by id to learn their nid when the event
--   arrives; edges to stored events (every local event's) are not in that index at all.
DROP INDEX event_edges_auth;
DROP INDEX event_edges_cited;
ALTER TABLE event_edges DROP CONSTRAINT event_edges_pkey;
ALTER TABLE event_edges ADD CONSTRAINT event_edges_pkey
    PRIMARY KEY (event_nid, kind, cited_event_id) INCLUDE (cited_event_nid);
CREATE INDEX event_edges_children ON event_edges (cited_event_nid) WHERE kind = 0;
CREATE INDEX event_edges_unresolved ON event_edges (cited_event_id) WHERE cited_event_nid IS NULL;

-- Edges, forward extremities and an event's state before are written only by the append, in the
-- transaction that writes the event they name: a foreign key re-checks per row what that one
-- path guarantees, with a trigger query per row on the hottest insert there is (a message
-- writes about four edges and an extremity).
ALTER TABLE event_edges DROP CONSTRAINT event_edges_event_nid_fkey;
ALTER TABLE forward_extremities DROP CONSTRAINT forward_extremities_event_nid_fkey;
ALTER TABLE events DROP CONSTRAINT events_state_group_before_fkey;
