//! Rooms on this server: building, authorising and persisting local events (one ordered writer
//! per room), room creation with presets, room upgrades, membership changes, the reads clients make (state,
//! events, members, timeline pages, search) with history visibility enforced, and the reads
//! other servers make (`federation_reads`: events, state, auth chains, missing events, backfill),
//! and the resident's side of other servers' joins, leaves and knocks (`federation_membership`).
//!
//! Rooms with other servers: events received from them (`receive`), invites both ways and the
//! rejection of an invite to a room this server is not in (`invites`), and the room side of a
//! join through a resident server (`remote_join`; the handshake itself is
//! `crate::remote_membership`).

mod acl;
mod append;
mod bans;
mod client_send;
mod create;
pub mod events;
mod federation_membership;
mod federation_reads;
pub(crate) mod hierarchy;
mod invite_filter;
mod invites;
mod locks;
pub(crate) mod membership;
mod push;
pub(crate) mod read;
pub(crate) mod receive;
pub(crate) mod redact;
mod relations;
mod remote_hierarchy;
mod remote_join;
mod report;
pub(crate) mod search;
mod upgrade;
pub(crate) mod visibility;

use std::sync::Arc;

use myelin_room_version::{CanonicalJsonObject, CanonicalJsonValue, Pdu, RoomVersion};
use myelin_store::{EventRow, RoomRow, Store};
use ruma::{OwnedServerName, UserId};

use crate::{Error, Result, server_keys::ServerKeys};

pub use acl::acl_allows;
pub use bans::InboundBan;
pub use create::{CreateRoom, Preset};
pub use federation_membership::{Handshake, JoinAnswer, MembershipTemplate, SentMembership};
pub use federation_reads::{
    BACKFILL_MAX, MISSING_EVENTS_MAX, MissingEventsQuery, ServedState, ServedStateIds,
};
pub use hierarchy::{HierarchyPage, HierarchyRequest};
pub use invite_filter::{INVITE_PERMISSION_CONFIG, InviteFilter, InviteVerdict};
pub use invites::{InboundInvite, RoomFederation};
pub use read::{Direction, EventContext, EventFilter, MembersFilter, MessagesPage, PageRequest};
pub use receive::{OutlierTimings, Received, ReceivedEvent};
pub use relations::{RelationsPage, RelationsRequest, ThreadsInclude};
pub use remote_join::{PlacedJoinTimings, ResidentJoinAnswer};
pub use report::MAX_REPORT_REASON_BYTES;
pub(crate) use report::check_reason as check_report_reason;
pub use search::{SEARCH_KEYS, SearchRequest, SearchResults, search_words};

/// The rooms area.
#[derive(Debug)]
pub struct Rooms {
    store: Store,
    server_name: OwnedServerName,
    keys: Arc<ServerKeys>,
    /// Local users' account keys and everyone's key states (account-key rooms).
    account_keys: Arc<crate::account_keys::AccountKeys>,
    /// The per-room locks (one writer per room, one upgrade per room), with their order.
    locks: locks::RoomLocks,
    /// Woken after every persisted event (sync waits on it).
    pub notify: crate::notifier::Notifier,
    /// Parsed push rules by user, with the account data position they were read at.
    push_rules: push::RulesCache,
    /// History visibility facts by snapshot and reader.
    visibility_facts: visibility::FactsCache,
    /// Hands each persisted event that notifies someone to their push gateways.
    pushers: Arc<crate::pushers::Pushers>,
    /// Users' settings, which follow them into an upgraded room's replacement when they join.
    user_data: Arc<crate::user_data::UserData>,
    /// The version of rooms created without one (`rooms.default_room_version`).
    default_version: &'static RoomVersion,
    /// Requests to other servers and their keys, for memberships across servers (invites,
    /// rejections): `None` until [`Rooms::with_federation`].
    federation: Option<invites::RoomFederation>,
    /// Other servers' recent `/hierarchy` answers (the client walk's rooms on other servers).
    hierarchy_answers: remote_hierarchy::AnswerCache,
    /// Journals room creation, which takes a transaction per event (`crate::operations`).
    journal: Arc<crate::operations::Journal>,
}

/// The keys rooms' events are signed with: the server's (server-key rooms) and each local
/// user's account key (account-key rooms).
#[derive(Debug, Clone)]
pub struct RoomKeys {
    pub server: Arc<ServerKeys>,
    pub accounts: Arc<crate::account_keys::AccountKeys>,
}

impl Rooms {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        server_name: OwnedServerName,
        keys: RoomKeys,
        notify: crate::notifier::Notifier,
        pushers: Arc<crate::pushers::Pushers>,
        user_data: Arc<crate::user_data::UserData>,
        journal: Arc<crate::operations::Journal>,
        default_version: &'static RoomVersion,
    ) -> Self {
        Rooms {
            store,
            server_name,
            keys: keys.server,
            account_keys: keys.accounts,
            locks: Default::default(),
            notify,
            push_rules: Default::default(),
            visibility_facts: Default::default(),
            pushers,
            user_data,
            default_version,
            federation: None,
            hierarchy_answers: Default::default(),
            journal,
        }
    }

    /// The version of rooms created without one.
    pub fn default_room_version(&self) -> &'static RoomVersion {
        self.default_version
    }

    /// A room known to this server, or 404.
    pub async fn room(&self, room_id: &str) -> Result<RoomRow> {
        self.store
            .room(room_id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("Unknown room {room_id}")))
    }

    /// The id a local user has in the events of a room of `version`: key form in account-key
    /// rooms (the account key created if the user predates keys), else the user id itself.
    pub(crate) async fn room_user_id(
        &self,
        version: &RoomVersion,
        user: &UserId,
    ) -> Result<String> {
        if version.uses_account_keys() {
            self.account_keys.local_user_id(user.localpart()).await
        } else {
            Ok(user.to_string())
        }
    }

    /// A local user's key-form id, if they have an account key (what they are called in
    /// account-key rooms' state; reads that span rooms look for both forms).
    pub(crate) fn key_form_of(&self, user: &UserId) -> Option<String> {
        if self.is_local(user) {
            self.account_keys.known_local_user_id(user.localpart())
        } else {
            None
        }
    }

    /// Lock order 0 of `locks`: one join of `room_id` through another server at a time.
    pub(crate) async fn remote_join_lock(&self, room_id: &str) -> locks::RemoteJoinGuard {
        self.locks.remote_join(room_id).await
    }

    pub(crate) fn is_local(&self, user_id: &UserId) -> bool {
        user_id.server_name() == self.server_name
    }
}

/// The room version of a stored room.
pub(crate) fn version_of(room: &RoomRow) -> Result<&'static RoomVersion> {
    RoomVersion::get(&room.room_version).map_err(|_| {
        Error::Internal(format!(
            "room {} has unknown version {}",
            room.room_id, room.room_version
        ))
    })
}

/// A stored event as a typed PDU.
fn pdu_of(row: &EventRow, version: &RoomVersion) -> Result<Pdu> {
    let json = myelin_room_version::canonical::parse_object(row.json.as_bytes()).map_err(|e| {
        Error::Internal(format!(
            "stored event {} is not canonical JSON: {e}",
            row.event_id
        ))
    })?;
    Pdu::from_stored(&row.event_id, json, version)
        .map_err(|e| Error::Internal(format!("stored event {}: {e}", row.event_id)))
}

/// `serde_json::Value` → canonical JSON (client content may hold floats: M_BAD_JSON).
fn to_canonical(value: serde_json::Value) -> Result<CanonicalJsonValue> {
    CanonicalJsonValue::try_from(value)
        .map_err(|e| Error::BadJson(format!("Content is not canonical JSON: {e}")))
}

fn to_canonical_object(value: serde_json::Value) -> Result<CanonicalJsonObject> {
    match to_canonical(value)? {
        CanonicalJsonValue::Object(object) => Ok(object),
        _ => Err(Error::BadJson("Content must be a JSON object".to_owned())),
    }
}

/// The strings of the JSON array `value`, read leniently (anything else is no entries, entries
/// that are not strings are skipped): how event contents' lists (ACLs, invite filters, `via`)
/// are read.
fn strings_of(value: &serde_json::Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.as_str().map(str::to_owned))
        .collect()
}

/// An integer for canonical JSON (within ±(2^53−1)).
fn int(value: i64) -> Result<ruma::Int> {
    ruma::Int::new(value)
        .ok_or_else(|| Error::Internal(format!("{value} is out of canonical JSON's integer range")))
}
