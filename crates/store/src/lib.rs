//! Persistence on PostgreSQL and SQLite (sqlx): the only crate that holds SQL.
//!
//! One API over two backends. SQL is written once in a portable subset (`$N` placeholders,
//! `ON CONFLICT`, `RETURNING`, JSON as text, times as integer milliseconds) and run on whichever
//! pool the [`Store`] holds through the [`with_pool!`] macro, which expands the same statement
//! for each backend so both get native types and native connection settings. A statement that is
//! backend-specific exists only where the dialects truly differ.
//!
//! Areas, one module each: [`server_keys`] (the server's own signing keys), [`accounts`] (local
//! accounts, devices, access and refresh tokens), [`user_data`] (filters, account data,
//! profiles), [`aliases`] (room aliases and the room directory), [`rooms`] (rooms, events and
//! everything persisting one changes), [`graph`] (the event graph: edges, statuses, forward
//! extremities), [`state`] (state snapshots read back, with their
//! in-memory cache), [`sync_reads`] (reads that answer for many rooms at once, for `/sync`),
//! [`ephemeral`] (receipts, to-device messages, presence), [`pushers`] (push gateways to
//! deliver notifications to), [`relations`] (events relating to others: threads, edits,
//! references), [`reports`] (what users report to the admins), [`spaces`] (what the space
//! hierarchy reads), [`search`] (full-text search over room events), [`e2ee`] (device,
//! one-time, fallback and cross-signing keys, and the device-list stream), [`dehydrated`]
//! (MSC3814 dehydrated devices), [`operations`] (the journal of operations that take several
//! transactions, finished after a crash), [`federation_inbound`]
//! (answers to other servers' transactions, remote users' device-list stream ids), [`key_backup`]
//! (server-side room key backup), [`media`] (media ids, pending uploads and thumbnails; the
//! content is on disk), [`federation`] (the federation sender's positions, persisted EDUs and
//! the per-destination backoff). Later areas follow the same shape.
//!
//! Access tokens and rooms, read on nearly every request, are cached in the process and
//! invalidated by the methods that change them (`cache`).
//!
//! Events are group-committed: sends that arrive during a commit are committed together next
//! (`group_commit`).
//!
//! Writes that span statements run in one transaction; on SQLite, this process's writers queue
//! on an in-process gate first (see `store::BeginWrite`), so they never spin in SQLite's busy
//! handler.
//!
//! Migrations live in `migrations/{postgres,sqlite}` at the repository root, in pairs, and are
//! embedded in the binary; [`Store::open`] applies them and refuses a database written by a newer
//! schema than this binary knows.

pub mod account_keys;
pub mod accounts;
pub mod aliases;
mod cache;
pub mod dehydrated;
pub mod device_lists;
pub mod e2ee;
pub mod ephemeral;
mod error;
mod event_write;
pub mod federation;
pub mod federation_inbound;
pub mod graph;
mod group_commit;
pub mod key_backup;
pub mod media;
pub mod operations;
pub mod pushers;
pub mod relations;
pub mod remote_invites;
pub mod remote_media;
pub mod reports;
pub mod rooms;
pub mod search;
pub mod server_keys;
pub mod spaces;
pub mod state;
mod store;
pub mod sync_reads;
pub mod test_support;
pub mod user_data;

pub use account_keys::{AccountKeyRow, KeyState, NewLocalAccountKey, RemoteKeyVerdict};
pub use accounts::{AccessTokenRow, DeviceRow, NewSession, UserRow};
pub use aliases::{AliasRow, PublishedRoom};
pub use dehydrated::{DehydratedDeviceUpload, DehydratedRefused, SessionRefused};
pub use error::StoreError;
pub use federation::{
    BackoffRow, DestinationRow, FanoutEntry, OutboxEdu, OutgoingEvent, OutgoingReceipt, QueueDepth,
};
pub use graph::{
    CurrentStateChange, EdgeKind, EventEdge, EventStatus, OutlierEvent, Placement, StateChange,
    StateValue, WaitingRedaction,
};
#[cfg(any(test, feature = "failpoints"))]
pub use group_commit::CommitPause;
pub use media::{CreatePending, DeletedMedia, MediaRow, ThumbnailRow};
pub use operations::{NewOperation, PendingOperation};
pub use pushers::PusherRow;
pub use relations::{RelationCount, RelationsQuery, ThreadRoot};
pub use remote_invites::{OutsideMembership, OutsidePersisted};
pub use remote_media::{RemoteMediaRow, RemoteMediaTotals, RemoteThumbnailRow};
pub use reports::{NewReport, ReportRow};
pub use rooms::{
    Delivery, EventRow, HistoryPosition, HistoryWalk, JoinedMember, MembershipRow, NewEvent,
    NotificationRow, OwnedNewEvent, Persisted, PushAction, RoomHead, RoomRow, RoomSummaryRow,
    SendContext, SyncSnapshot, TxnKey,
};
pub use search::{SearchHit, SearchOrder, SearchQuery};
pub use server_keys::{RemoteServerKey, StoredSigningKey};
pub use spaces::SpaceRoomState;
pub use state::{GroupMembers, StateMap};
pub use store::{Backend, DatabaseKind, Store, StoreOptions};
pub use sync_reads::{StateDeltaWindow, TimelineWindow};
pub use user_data::{AccountDataRow, ProfileField, ProfileRow};
