-- Event edges in fewer b-trees (issue 14's send-path budget): a local message writes about four
-- edges, and each index over them is one more page written per commit.
--
-- - The table is clustered by its key (WITHOUT ROWID): the key is how edges are read (an
--   event's edges; the auth chain's walk by event and kind), and the rows carry
--   `cited_event_nid`, so the walk needs no separate index (`event_edges_auth` goes).
-- - "Who cites this event" is asked for prev edges only, by nid (an arriving event that is
--   already cited is no forward extremity); appended events cite the newest events, so this
--   index grows at its end.
-- - Edges citing events not stored yet are found by id to learn their nid when the event
--   arrives; edges to stored events (every local event's) are not in that index at all.
-- (No foreign key to `events`: edges are written only by the append, with their event, as on
-- PostgreSQL where the check is a trigger query per row.)
CREATE TABLE event_edges_clustered (
    event_nid       INTEGER NOT NULL,
    kind            INTEGER NOT NULL CHECK (kind IN (0, 1)),
    cited_event_id  TEXT NOT NULL,
    cited_event_nid INTEGER,
    PRIMARY KEY (event_nid, kind, cited_event_id)
) WITHOUT ROWID;
INSERT INTO event_edges_clustered (event_nid, kind, cited_event_id, cited_event_nid)
SELECT event_nid, kind, cited_event_id, cited_event_nid FROM event_edges;
DROP TABLE event_edges;
ALTER TABLE event_edges_clustered RENAME TO event_edges;
CREATE INDEX event_edges_children ON event_edges (cited_event_nid) WHERE kind = 0;
CREATE INDEX event_edges_unresolved ON event_edges (cited_event_id) WHERE cited_event_nid IS NULL;
