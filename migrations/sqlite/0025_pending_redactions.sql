-- Redactions that arrived before the event they redact (federation delivers out of order). The
-- redaction is stored as usual; its target is applied when it arrives, stored in redacted form,
-- if the redaction may apply to it: the same server sent both, or the redaction's sender had
-- the redact power level when the redaction was accepted (`by_power`).
CREATE TABLE pending_redactions (
    room_nid        INTEGER NOT NULL REFERENCES rooms (room_nid),
    target_event_id TEXT NOT NULL,
    redaction_nid   INTEGER NOT NULL REFERENCES events (event_nid),
    by_power        BOOLEAN NOT NULL,
    PRIMARY KEY (target_event_id, redaction_nid)
);
