-- Dehydrated devices (MSC3814): at most one per user, a device of the account (a `devices` row,
-- with its keys and to-device messages as any device has) that no one logs in to. What makes it
-- dehydrated is this row, with the opaque `device_data` the client rehydrates it from (JSON text,
-- stored as sent). Deleting the device deletes the row.
CREATE TABLE dehydrated_devices (
    user_id     TEXT NOT NULL PRIMARY KEY,
    device_id   TEXT NOT NULL,
    device_data TEXT NOT NULL,
    FOREIGN KEY (user_id, device_id) REFERENCES devices (user_id, device_id) ON DELETE CASCADE
);
