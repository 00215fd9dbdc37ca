//! The caps on what a user may make the server store or fan out: every collection and string a
//! client controls has one, so no single account can grow a table, a sync response or a push
//! fan-out without bound. Each is refused with 413 `M_TOO_LARGE` (the spec's code for an entity
//! that is too large) and leaves nothing written. docs/security.md lists them.

use crate::{Error, Result};

/// Presence `status_msg`, in bytes.
pub const MAX_STATUS_MSG_BYTES: usize = 1024;
/// One to-device message's content, in bytes (the size of an event).
pub const MAX_TO_DEVICE_CONTENT_BYTES: usize = 65_536;
/// Messages one `sendToDevice` request queues, after `*` is expanded to every device.
pub const MAX_TO_DEVICE_MESSAGES: usize = 10_000;
/// A dehydrated device's `device_data` (MSC3814), serialised, in bytes: an encrypted account
/// pickle with its one-time keys is a few KiB.
pub const MAX_DEHYDRATED_DEVICE_DATA_BYTES: usize = 65_536;
/// One account data entry's content, in bytes.
pub const MAX_ACCOUNT_DATA_BYTES: usize = 131_072;
/// One stored filter, in bytes.
pub const MAX_FILTER_BYTES: usize = 65_536;
/// `initial_state` events in one `createRoom`.
pub const MAX_INITIAL_STATE: usize = 256;
/// `invite` entries in one `createRoom`.
pub const MAX_CREATE_ROOM_INVITES: usize = 256;
/// User-defined push rules per user (server-default rules do not count).
pub const MAX_USER_PUSH_RULES: usize = 500;
/// One push rule (its pattern, conditions and actions), serialised, in bytes.
pub const MAX_PUSH_RULE_BYTES: usize = 4096;
/// Pushers per user (each is a gateway every notifying event is posted to).
pub const MAX_PUSHERS_PER_USER: usize = 32;

/// `Err(M_TOO_LARGE)` when `size` exceeds `max`.
pub(crate) fn at_most(what: &str, size: usize, max: usize) -> Result<()> {
    if size > max {
        return Err(Error::TooLarge(format!(
            "{what} is {size}, more than the {max} this server accepts"
        )));
    }
    Ok(())
}
