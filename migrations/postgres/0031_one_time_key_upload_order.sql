-- One-time keys are claimed in the order they were uploaded (MSC4225, spec v1.15): when each
-- was stored, in milliseconds. Keys stored before this column existed share 0 and go first, in
-- key id order as before.
ALTER TABLE e2e_one_time_keys ADD COLUMN uploaded_ts BIGINT NOT NULL DEFAULT 0;
