-- Operations that take several transactions (room creation, a profile change's fan-out into the
-- user's rooms, account deactivation): one row each, written in the same transaction as the
-- operation's first step and deleted after its last, so that one a crash (or a dropped request)
-- cut short is finished later by whichever process claims it. A process running an operation
-- holds it until `lease_until` (ms), renewed while it runs; a row whose lease has run out is
-- anyone's to claim (a conditional update: one claimer wins).
CREATE TABLE pending_operations (
    operation_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- What it is ('create_room', 'profile', 'deactivate') and for whom (a local user id).
    kind         TEXT NOT NULL,
    subject      TEXT NOT NULL,
    -- What resuming it needs, as JSON.
    params       TEXT NOT NULL,
    -- The process that holds it (a random id per process start), until when.
    owner        TEXT NOT NULL,
    lease_until  BIGINT NOT NULL,
    created_ts   BIGINT NOT NULL
);
CREATE INDEX pending_operations_lease ON pending_operations (lease_until);
