-- Where this server has read each other server's erasure log up to (MSC4243.md §2.4 item 29):
-- the `erasure.id` its last `/query/accounts` poll answered, and when it polled.
CREATE TABLE account_key_erasure_cursors (
    domain     TEXT PRIMARY KEY,
    erasure_id BIGINT NOT NULL,
    polled_ts  BIGINT NOT NULL
);
