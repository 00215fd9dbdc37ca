//! What the homeserver does: accounts, rooms, timeline, sync, inbound PDUs, account keys.
