//! Room aliases and the room directory: creating, resolving and deleting local aliases, the
//! aliases of a room, whether a room is published, and the list of published rooms
//! (`/publicRooms`) with search and stable pagination.
//!
//! Only aliases on this server are known here; resolving another server's aliases needs
//! federation and answers "not found" until then. `createRoom`'s `room_alias_name` goes through
//! [`Directory::local_alias`] for its grammar and then through the rooms area, which creates the
//! alias as one of its steps. A canonical alias a client sends is checked by
//! [`Directory::check_canonical_alias`].
//!
//! `/publicRooms` reads every published room's summary state in two queries and searches, sorts
//! and pages in memory: right for directories of thousands of rooms. A much larger directory
//! wants a summary table kept up to date by the event writer, paged in SQL.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use myelin_room_version::{
    Pdu, RoomVersion,
    redaction::{PowerLevel, user_power_level},
};
use myelin_store::{EventRow, PublishedRoom, RoomRow, Store};
use ruma::{
    OwnedRoomAliasId, OwnedServerName, RoomAliasId, RoomId, UserId,
    directory::{PublicRoomsChunk, RoomTypeFilter},
    room::{JoinRuleKind, RoomType},
};
use serde_json::Value;

use crate::{
    Error, Result,
    accounts::AuthedUser,
    now_millis,
    rooms::{
        Rooms,
        events::{LocalEvent, Ruled},
    },
};

/// The current state the directory shows for a published room.
const SUMMARY_STATE: &[&str] = &[
    "m.room.create",
    "m.room.name",
    "m.room.topic",
    "m.room.canonical_alias",
    "m.room.avatar",
    "m.room.join_rules",
    "m.room.history_visibility",
    "m.room.guest_access",
];

/// A `/publicRooms` request, already parsed.
#[derive(Debug, Clone, Default)]
pub struct PublicRoomsQuery {
    /// The server whose directory is asked for (`None`: this one).
    pub server: Option<OwnedServerName>,
    pub limit: Option<usize>,
    pub since: Option<String>,
    pub search_term: Option<String>,
    /// Only rooms of these types (empty: all).
    pub room_types: Vec<RoomTypeFilter>,
    /// A third-party network: this server bridges none, so such a directory is empty.
    pub third_party: bool,
}

/// A page of the room directory.
#[derive(Debug, Clone, Default)]
pub struct PublicRoomsPage {
    pub chunk: Vec<PublicRoomsChunk>,
    pub next_batch: Option<String>,
    pub prev_batch: Option<String>,
    pub total_room_count_estimate: usize,
}

/// The aliases and directory area.
#[derive(Debug)]
pub struct Directory {
    store: Store,
    server_name: OwnedServerName,
}

impl Directory {
    pub fn new(store: Store, server_name: OwnedServerName) -> Self {
        Directory { store, server_name }
    }

    /// `#localpart:this.server`, for `createRoom`'s `room_alias_name` (`M_INVALID_PARAM` if the
    /// result is no valid alias).
    pub fn local_alias(&self, localpart: &str) -> Result<OwnedRoomAliasId> {
        if localpart.is_empty()
            || localpart.contains([':', '#'])
            || localpart.contains(char::is_whitespace)
        {
            return Err(Error::InvalidParam(format!(
                "Invalid room alias name {localpart:?}: it must be a non-empty alias localpart without ':', '#' or whitespace"
            )));
        }
        RoomAliasId::parse(format!("#{localpart}:{}", self.server_name))
            .map_err(|e| Error::InvalidParam(format!("Invalid room alias name {localpart:?}: {e}")))
    }

    /// Refuses aliases of other servers, which only their own server may create or delete.
    fn ensure_local(&self, alias: &RoomAliasId) -> Result<()> {
        if alias.server_name() == self.server_name {
            Ok(())
        } else {
            Err(Error::InvalidParam(format!(
                "Room alias {alias} is not on this server ({})",
                self.server_name
            )))
        }
    }

    async fn room(&self, room_id: &str) -> Result<RoomRow> {
        self.store
            .room(room_id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("Unknown room {room_id}")))
    }

    /// `PUT /directory/room/{roomAlias}`: a joined member points a new local alias at a room.
    pub async fn create_alias(
        &self,
        user: &AuthedUser,
        alias: &RoomAliasId,
        room_id: &RoomId,
    ) -> Result<()> {
        self.ensure_local(alias)?;
        let room = self.room(room_id.as_str()).await?;
        if !self.is_joined(&room, &user.user_id).await? {
            return Err(Error::Forbidden(format!(
                "You must be joined to {room_id} to give it an alias"
            )));
        }
        if !self
            .store
            .create_alias(
                alias.as_str(),
                room.room_nid,
                user.user_id.as_str(),
                now_millis(),
            )
            .await?
        {
            return Err(Error::AliasInUse(format!(
                "Room alias {alias} already exists"
            )));
        }
        tracing::info!(%alias, %room_id, user = %user.user_id, "created a room alias");
        Ok(())
    }

    /// An alias of this server: the room and the servers that can be asked to join it
    /// (`GET /directory/room/{roomAlias}` and `/query/directory` for this server's aliases).
    pub async fn resolve(&self, alias: &RoomAliasId) -> Result<(String, Vec<OwnedServerName>)> {
        let not_found = || Error::NotFound(format!("Room alias {alias} not found"));
        if alias.server_name() != self.server_name {
            // Other servers' aliases are theirs to resolve (`Services::resolve_alias`).
            return Err(not_found());
        }
        let row = self
            .store
            .alias(alias.as_str())
            .await?
            .ok_or_else(not_found)?;
        // This server first, then the others with members in the room.
        let mut servers = vec![self.server_name.clone()];
        if let Some(room) = self.store.room(&row.room_id).await? {
            for member in self.store.joined_user_ids(room.room_nid).await? {
                if let Ok(member) = ruma::UserId::parse(member.as_str())
                    && !servers.iter().any(|s| s == member.server_name())
                {
                    servers.push(member.server_name().to_owned());
                }
            }
        }
        Ok((row.room_id, servers))
    }

    /// `DELETE /directory/room/{roomAlias}`: by the alias's creator, a joined member who may set
    /// the room's canonical alias, or a server admin. An alias the room's canonical alias event
    /// lists is then removed from it, sent as `user`; if `user` may not send that event the
    /// alias is still deleted (the spec's recommendation).
    pub async fn delete_alias(
        &self,
        rooms: &Rooms,
        user: &AuthedUser,
        alias: &RoomAliasId,
    ) -> Result<()> {
        let not_found = || Error::NotFound(format!("Room alias {alias} not found"));
        if alias.server_name() != self.server_name {
            return Err(not_found());
        }
        let row = self
            .store
            .alias(alias.as_str())
            .await?
            .ok_or_else(not_found)?;
        let allowed = user.is_admin
            || row.creator == user.user_id.as_str()
            || self
                .may_set_canonical_alias(&self.room(&row.room_id).await?, &user.user_id)
                .await?;
        if !allowed {
            return Err(Error::Forbidden(format!(
                "You may not delete {alias}: only its creator, room moderators and server admins may"
            )));
        }
        if !self.store.delete_alias(alias.as_str()).await? {
            return Err(not_found());
        }
        tracing::info!(%alias, user = %user.user_id, "deleted a room alias");
        let room = self.room(&row.room_id).await?;
        if let Some(mut content) = self.state_content(&room, "m.room.canonical_alias").await?
            && let Some(fields) = content.as_object_mut()
        {
            let mut changed = false;
            if fields.get("alias").and_then(Value::as_str) == Some(alias.as_str()) {
                fields.remove("alias");
                changed = true;
            }
            if let Some(Value::Array(alt)) = fields.get_mut("alt_aliases") {
                let before = alt.len();
                alt.retain(|a| a.as_str() != Some(alias.as_str()));
                changed |= alt.len() != before;
                if alt.is_empty() {
                    fields.remove("alt_aliases");
                }
            }
            if changed {
                let event = LocalEvent {
                    event_type: "m.room.canonical_alias",
                    state_key: Some(""),
                    content,
                    ruled: Ruled::Plain,
                    txn: None,
                };
                match rooms.send(&room, &user.user_id, event).await {
                    Ok(_) => {}
                    Err(Error::Forbidden(reason)) => {
                        tracing::info!(%alias, user = %user.user_id, %reason, "deleted alias stays in the canonical alias event")
                    }
                    Err(err) => return Err(err),
                }
            }
        }
        Ok(())
    }

    /// `GET /rooms/{roomId}/aliases`: for joined members, or anyone if the room is world
    /// readable.
    pub async fn room_aliases(&self, user: &UserId, room_id: &RoomId) -> Result<Vec<String>> {
        let forbidden = || {
            Error::Forbidden(format!(
                "You are not joined to {room_id} and it is not world readable"
            ))
        };
        // An unknown room is answered like a room the user may not see, revealing nothing.
        let room = self
            .store
            .room(room_id.as_str())
            .await?
            .ok_or_else(forbidden)?;
        let world_readable = self
            .state_content(&room, "m.room.history_visibility")
            .await?
            .is_some_and(|c| c["history_visibility"] == "world_readable");
        if !world_readable && !self.is_joined(&room, user).await? {
            return Err(forbidden());
        }
        Ok(self.store.room_aliases(room.room_nid).await?)
    }

    /// Checks an `m.room.canonical_alias` content a local user is about to send: every alias it
    /// adds (`alias` and `alt_aliases`, less those already in the room's current canonical alias
    /// event) must be an alias (else `M_INVALID_PARAM`) that points at this room (else
    /// `M_BAD_ALIAS`). Aliases of other servers cannot be checked without federation and are
    /// refused.
    pub async fn check_canonical_alias(&self, room_id: &RoomId, content: &Value) -> Result<()> {
        let room = self.room(room_id.as_str()).await?;
        let listed = |content: &Value| -> Result<Vec<String>> {
            let mut aliases = Vec::new();
            match &content["alias"] {
                Value::Null => {}
                Value::String(alias) => aliases.push(alias.clone()),
                _ => return Err(Error::InvalidParam("`alias` must be a string".to_owned())),
            }
            match &content["alt_aliases"] {
                Value::Null => {}
                Value::Array(list) => {
                    for alias in list {
                        let alias = alias.as_str().ok_or_else(|| {
                            Error::InvalidParam("`alt_aliases` must hold strings".to_owned())
                        })?;
                        aliases.push(alias.to_owned());
                    }
                }
                _ => {
                    return Err(Error::InvalidParam(
                        "`alt_aliases` must be a list".to_owned(),
                    ));
                }
            }
            Ok(aliases)
        };
        let current = self
            .state_content(&room, "m.room.canonical_alias")
            .await?
            .map(|content| listed(&content).unwrap_or_default())
            .unwrap_or_default();
        for alias in listed(content)? {
            if current.contains(&alias) {
                continue;
            }
            let bad = |why: &str| Error::BadAlias(format!("Room alias {alias} {why}"));
            let parsed = RoomAliasId::parse(&alias)
                .map_err(|e| Error::InvalidParam(format!("Invalid room alias {alias:?}: {e}")))?;
            if parsed.server_name() != self.server_name {
                return Err(bad(
                    "is on another server, which this server cannot ask yet",
                ));
            }
            match self.store.alias(parsed.as_str()).await? {
                Some(row) if row.room_nid == room.room_nid => {}
                _ => return Err(bad("does not point to this room")),
            }
        }
        Ok(())
    }

    /// `GET /directory/list/room/{roomId}`: whether the room is published.
    pub async fn is_published(&self, room_id: &RoomId) -> Result<bool> {
        Ok(self.room(room_id.as_str()).await?.is_public)
    }

    /// `PUT /directory/list/room/{roomId}`: by a joined member who may set the room's canonical
    /// alias, or a server admin.
    pub async fn set_published(
        &self,
        user: &AuthedUser,
        room_id: &RoomId,
        public: bool,
    ) -> Result<()> {
        let room = self.room(room_id.as_str()).await?;
        if !user.is_admin && !self.may_set_canonical_alias(&room, &user.user_id).await? {
            return Err(Error::Forbidden(format!(
                "You may not change whether {room_id} is published: it needs the power to set its canonical alias"
            )));
        }
        self.store.set_room_public(room.room_nid, public).await?;
        tracing::info!(%room_id, public, user = %user.user_id, "changed a room's directory visibility");
        Ok(())
    }

    /// This server's room directory: published local rooms, most joined members first (other
    /// servers' directories are asked through `Services::public_rooms`).
    pub async fn public_rooms(&self, query: PublicRoomsQuery) -> Result<PublicRoomsPage> {
        if let Some(server) = &query.server
            && *server != self.server_name
        {
            return Err(Error::Internal(format!(
                "the directory of {server} was asked of this server's own directory"
            )));
        }
        if query.third_party {
            return Ok(PublicRoomsPage::default());
        }
        let since = query.since.as_deref().map(PageToken::parse).transpose()?;
        let search = query
            .search_term
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_lowercase);
        let mut rooms: Vec<PublicRoomsChunk> = self
            .store
            .published_rooms(SUMMARY_STATE)
            .await?
            .into_iter()
            .filter_map(summary)
            .filter(|chunk| {
                query.room_types.is_empty()
                    || query
                        .room_types
                        .iter()
                        .any(|t| t.as_str() == chunk.room_type.as_ref().map(RoomType::as_str))
            })
            .filter(|chunk| {
                search
                    .as_deref()
                    .is_none_or(|term| matches_search(chunk, term))
            })
            .collect();
        // Sorted here, not by the database, so that the order is the tokens' byte order on
        // every backend and collation.
        rooms.sort_by(|a, b| {
            b.num_joined_members
                .cmp(&a.num_joined_members)
                .then_with(|| a.room_id.as_str().cmp(b.room_id.as_str()))
        });

        let keys: Vec<(u64, &str)> = rooms
            .iter()
            .map(|c| (u64::from(c.num_joined_members), c.room_id.as_str()))
            .collect();
        let (range, next, prev) = page(&keys, since.as_ref(), query.limit.unwrap_or(usize::MAX));
        let next_batch = next.map(|t| t.encode());
        let prev_batch = prev.map(|t| t.encode());
        let total_room_count_estimate = rooms.len();
        let chunk = rooms
            .into_iter()
            .skip(range.start)
            .take(range.len())
            .collect();
        Ok(PublicRoomsPage {
            chunk,
            next_batch,
            prev_batch,
            total_room_count_estimate,
        })
    }

    async fn is_joined(&self, room: &RoomRow, user: &UserId) -> Result<bool> {
        Ok(self
            .store
            .membership(room.room_nid, user.as_str())
            .await?
            .is_some_and(|(membership, _, _)| membership == "join"))
    }

    async fn state_content(&self, room: &RoomRow, event_type: &str) -> Result<Option<Value>> {
        let keys = [(event_type.to_owned(), String::new())];
        let rows = self.store.current_state(room.room_nid, Some(&keys)).await?;
        Ok(rows
            .first()
            .and_then(|row| serde_json::from_str::<Value>(&row.json).ok())
            .map(|json| json["content"].clone()))
    }

    /// Whether `user` is joined and has the power to send `m.room.canonical_alias`: who may
    /// manage a room's aliases and its place in the directory.
    async fn may_set_canonical_alias(&self, room: &RoomRow, user: &UserId) -> Result<bool> {
        if !self.is_joined(room, user).await? {
            return Ok(false);
        }
        let version = RoomVersion::get(&room.room_version).map_err(|_| {
            Error::Internal(format!(
                "room {} has unknown version {}",
                room.room_id, room.room_version
            ))
        })?;
        let keys = [
            ("m.room.create".to_owned(), String::new()),
            ("m.room.power_levels".to_owned(), String::new()),
        ];
        let state = self.store.current_state(room.room_nid, Some(&keys)).await?;
        let pdu = |kind: &str| {
            state
                .iter()
                .find(|row| row.event_type == kind)
                .map(|row| pdu_of(row, version))
                .transpose()
        };
        let create = pdu("m.room.create")?
            .ok_or_else(|| Error::Internal(format!("room {} has no create event", room.room_id)))?;
        let power = pdu("m.room.power_levels")?;
        // The auth rules' required level for a state event: its `events` entry, else
        // `state_default` (50 with a power levels event, 0 without one).
        let required = match power.as_ref().and_then(Pdu::content_object) {
            Some(content) => {
                let int = |v: Option<&ruma::CanonicalJsonValue>| match v {
                    Some(ruma::CanonicalJsonValue::Integer(i)) => Some(i64::from(*i)),
                    _ => None,
                };
                let events = match content.get("events") {
                    Some(ruma::CanonicalJsonValue::Object(events)) => {
                        int(events.get("m.room.canonical_alias"))
                    }
                    _ => None,
                };
                events
                    .or_else(|| int(content.get("state_default")))
                    .unwrap_or(50)
            }
            None => 0,
        };
        Ok(
            user_power_level(version, user.as_str(), &create, power.as_ref())
                >= PowerLevel::Int(required),
        )
    }
}

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

/// A published room as the directory shows it, from its current state. Values of the wrong shape
/// are left out rather than failing the whole list.
fn summary(room: PublishedRoom) -> Option<PublicRoomsChunk> {
    let content = |kind: &str| -> Value {
        room.state
            .get(kind)
            .and_then(|json| serde_json::from_str::<Value>(json).ok())
            .map(|event| event["content"].clone())
            .unwrap_or(Value::Null)
    };
    let text = |kind: &str, field: &str| content(kind)[field].as_str().map(str::to_owned);
    let room_id = RoomId::parse(&room.room_id).ok()?;
    let mut chunk = PublicRoomsChunk::from(ruma::directory::PublicRoomsChunkInit {
        num_joined_members: ruma::UInt::try_from(room.joined_members).unwrap_or_default(),
        room_id,
        world_readable: text("m.room.history_visibility", "history_visibility").as_deref()
            == Some("world_readable"),
        guest_can_join: text("m.room.guest_access", "guest_access").as_deref() == Some("can_join"),
    });
    chunk.name = text("m.room.name", "name").filter(|n| !n.is_empty());
    chunk.topic = text("m.room.topic", "topic").filter(|t| !t.is_empty());
    chunk.canonical_alias =
        text("m.room.canonical_alias", "alias").and_then(|alias| RoomAliasId::parse(alias).ok());
    chunk.avatar_url = text("m.room.avatar", "url")
        .filter(|url| !url.is_empty())
        .map(Into::into);
    chunk.join_rule = text("m.room.join_rules", "join_rule")
        .map(|rule| JoinRuleKind::from(rule.as_str()))
        .unwrap_or(JoinRuleKind::Invite);
    chunk.room_type = text("m.room.create", "type").map(|t| RoomType::from(t.as_str()));
    Some(chunk)
}

/// Case-insensitive search of a room's name, topic and canonical alias (`term` is lowercase).
fn matches_search(chunk: &PublicRoomsChunk, term: &str) -> bool {
    [
        chunk.name.as_deref(),
        chunk.topic.as_deref(),
        chunk.canonical_alias.as_ref().map(|a| a.as_str()),
    ]
    .into_iter()
    .flatten()
    .any(|field| field.to_lowercase().contains(term))
}

/// The slice of the directory (ordered by joined members descending, then room id; `keys` are
/// `(members, room id)` in that order) that a page covers, and the tokens of the pages after and
/// before it. A token is a position in that order, not an offset, so it stays meaningful while
/// rooms come, go and change size.
fn page(
    keys: &[(u64, &str)],
    since: Option<&PageToken>,
    limit: usize,
) -> (std::ops::Range<usize>, Option<PageToken>, Option<PageToken>) {
    let before = |token: &PageToken| {
        keys.partition_point(|(members, room_id)| {
            *members > token.members
                || (*members == token.members && *room_id < token.room_id.as_str())
        })
    };
    let (start, end) = match since {
        None => (0, limit.min(keys.len())),
        Some(token) if token.forward => {
            // Forward: everything after the last room of the previous page.
            let at = before(token);
            let start = if keys
                .get(at)
                .is_some_and(|(m, r)| *m == token.members && *r == token.room_id)
            {
                at + 1
            } else {
                at
            };
            (start, start.saturating_add(limit).min(keys.len()))
        }
        Some(token) => {
            // Backward: the page that ends before the first room of the next page.
            let end = before(token);
            (end.saturating_sub(limit), end)
        }
    };
    let token = |index: usize, forward: bool| PageToken {
        forward,
        members: keys[index].0,
        room_id: keys[index].1.to_owned(),
    };
    let next = (end > start && end < keys.len()).then(|| token(end - 1, true));
    let prev = (start > 0 && start < keys.len()).then(|| token(start, false));
    (start..end, next, prev)
}

/// A `/publicRooms` pagination token: a room's place in the directory order, and which way the
/// next page goes from it. Encoded as `n` (forward) or `p` (backward) followed by base64 of
/// `<members>:<room id>`, so it survives query strings unescaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PageToken {
    pub(crate) forward: bool,
    pub(crate) members: u64,
    pub(crate) room_id: String,
}

impl PageToken {
    pub(crate) fn encode(&self) -> String {
        let direction = if self.forward { 'n' } else { 'p' };
        let key = URL_SAFE_NO_PAD.encode(format!("{}:{}", self.members, self.room_id));
        format!("{direction}{key}")
    }

    pub(crate) fn parse(token: &str) -> Result<Self> {
        let invalid = || Error::InvalidParam(format!("Invalid pagination token {token:?}"));
        let forward = match token.chars().next() {
            Some('n') => true,
            Some('p') => false,
            _ => return Err(invalid()),
        };
        let bytes = URL_SAFE_NO_PAD.decode(&token[1..]).map_err(|_| invalid())?;
        let key = String::from_utf8(bytes).map_err(|_| invalid())?;
        let (members, room_id) = key.split_once(':').ok_or_else(invalid)?;
        Ok(PageToken {
            forward,
            // Digits only, as `encode` prints them (`u64::from_str` would take a `+`).
            members: crate::rooms::read::parse_position(members)
                .and_then(|n| u64::try_from(n).ok())
                .ok_or_else(invalid)?,
            room_id: room_id.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use myelin_store::test_support::{TestDatabase, test_backends};
    use ruma::{owned_room_alias_id, owned_user_id};
    use serde_json::json;

    use super::*;
    use crate::{
        Config, Services,
        rooms::{CreateRoom, Preset},
    };

    #[tokio::test]
    async fn canonical_aliases_must_point_to_the_room() {
        for kind in test_backends() {
            let db = TestDatabase::create(kind).await;
            let data_dir = tempfile::tempdir().unwrap();
            let mut config = Config {
                data_dir: data_dir.path().to_path_buf(),
                ..Config::default()
            };
            config.database.url = Some(db.url.clone());
            let services = Services::start(config).await.unwrap();
            let alice = owned_user_id!("@alice:localhost");
            let room = |alias: Option<OwnedRoomAliasId>| CreateRoom {
                preset: Some(Preset::PublicChat),
                alias,
                ..CreateRoom::default()
            };
            let here = services
                .rooms
                .create_room(&alice, room(Some(owned_room_alias_id!("#here:localhost"))))
                .await
                .unwrap();
            services
                .rooms
                .create_room(&alice, room(Some(owned_room_alias_id!("#there:localhost"))))
                .await
                .unwrap();
            let here = RoomId::parse(&here).unwrap();
            let directory = &services.directory;
            let check =
                async |content: Value| directory.check_canonical_alias(&here, &content).await;

            let nid = directory.room(here.as_str()).await.unwrap().room_nid;
            assert!(
                directory
                    .store
                    .create_alias("#also:localhost", nid, alice.as_str(), 0)
                    .await
                    .unwrap()
            );
            for ok in [
                json!({}),
                json!({"alias": "#also:localhost", "alt_aliases": ["#here:localhost"]}),
                json!({"alt_aliases": ["#also:localhost"]}),
                json!({"alias": "#here:localhost"}),
                json!({"alt_aliases": ["#here:localhost"]}),
            ] {
                assert!(check(ok.clone()).await.is_ok(), "{ok}");
            }
            for (bad, code) in [
                (json!({"alias": "#there:localhost"}), "M_BAD_ALIAS"),
                (json!({"alias": "#nobody:localhost"}), "M_BAD_ALIAS"),
                (
                    json!({"alt_aliases": ["#here:localhost", "#there:localhost"]}),
                    "M_BAD_ALIAS",
                ),
                (json!({"alias": "not an alias"}), "M_INVALID_PARAM"),
                (
                    json!({"alt_aliases": ["%here:localhost"]}),
                    "M_INVALID_PARAM",
                ),
                (json!({"alias": "#here:elsewhere.example"}), "M_BAD_ALIAS"),
                (json!({"alias": 7}), "M_INVALID_PARAM"),
                (json!({"alt_aliases": "#here:localhost"}), "M_INVALID_PARAM"),
                (json!({"alt_aliases": [7]}), "M_INVALID_PARAM"),
            ] {
                let err = check(bad.clone()).await.expect_err(&bad.to_string());
                let matches = match code {
                    "M_BAD_ALIAS" => matches!(err, Error::BadAlias(_)),
                    _ => matches!(err, Error::InvalidParam(_)),
                };
                assert!(matches, "{bad}: {err:?}");
            }
            // Aliases already in the event are not checked again: a deleted alias may stay.
            assert!(
                directory
                    .store
                    .delete_alias("#here:localhost")
                    .await
                    .unwrap()
            );
            assert!(check(json!({"alias": "#here:localhost"})).await.is_ok());
            services.shutdown().await;
        }
    }

    #[test]
    fn pages_cover_the_directory_once_each_way() {
        let keys = [
            (9, "!a"),
            (5, "!b"),
            (5, "!c"),
            (5, "!d"),
            (2, "!a2"),
            (1, "!e"),
            (1, "!f"),
        ];
        let ids = |range: std::ops::Range<usize>| -> Vec<&str> {
            keys[range].iter().map(|k| k.1).collect()
        };
        for limit in 1..=8 {
            // Forward from the start through every room exactly once.
            let mut seen = Vec::new();
            let mut pages = Vec::new();
            let mut since = None;
            loop {
                let (range, next, prev) = page(&keys, since.as_ref(), limit);
                assert_eq!(prev.is_some(), range.start > 0, "limit {limit}");
                seen.extend(ids(range.clone()));
                pages.push((range, prev));
                match next {
                    Some(next) => since = Some(next),
                    None => break,
                }
            }
            assert_eq!(seen, ids(0..keys.len()), "limit {limit}");
            // Back from the last page through the same pages.
            for i in (1..pages.len()).rev() {
                let prev = pages[i]
                    .1
                    .clone()
                    .expect("a page after the first has a prev");
                let (range, _, _) = page(&keys, Some(&prev), limit);
                assert_eq!(range, pages[i - 1].0, "limit {limit}, page {i}");
            }
        }
        // No limit: everything, no tokens.
        assert_eq!(page(&keys, None, usize::MAX), (0..7, None, None));
        // A token for a room that has gone still places the page.
        let gone = PageToken {
            forward: true,
            members: 5,
            room_id: "!bb".to_owned(),
        };
        assert_eq!(page(&keys, Some(&gone), 2).0, 2..4);
        let gone_back = PageToken {
            forward: false,
            ..gone
        };
        assert_eq!(page(&keys, Some(&gone_back), 2).0, 0..2);
        // Past the end: an empty page.
        let end = PageToken {
            forward: true,
            members: 0,
            room_id: "!z".to_owned(),
        };
        assert_eq!(page(&keys, Some(&end), 3), (7..7, None, None));
        assert_eq!(page(&[], None, 3), (0..0, None, None));
    }

    #[test]
    fn page_tokens_round_trip_and_reject_garbage() {
        let token = PageToken {
            forward: false,
            members: 12,
            room_id: "!abc:example.org".to_owned(),
        };
        assert_eq!(PageToken::parse(&token.encode()).unwrap(), token);
        for bad in ["", "x", "nnot-base64!", "n", "pYWJj"] {
            assert!(PageToken::parse(bad).is_err(), "{bad:?}");
        }
    }
}
