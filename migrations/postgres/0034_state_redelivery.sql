-- Current state delivered again to clients (MSC4243 §2.6 item 39): when an account key is
-- verified late, its member event and the current state it sent are appended to the delta log
-- at a new stream position, marked so that only syncs with `use_state_after` receive them.
ALTER TABLE current_state_deltas ADD COLUMN redelivery BOOLEAN NOT NULL DEFAULT FALSE;
