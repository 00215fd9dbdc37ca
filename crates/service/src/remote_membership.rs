//! Membership through other servers, the joining side: a local user joins (or knocks on) a room
//! this server is not in by the spec's `make_join`/`send_join` (`make_knock`/`send_knock`)
//! handshake with a server that is (a *resident*). Rejecting an invite or rescinding a knock
//! through `make_leave`/`send_leave` is the rooms area's (`rooms::invites`).
//!
//! A join (`Services::join_room`) is local when this server is in the room. Otherwise the
//! candidates are asked in turn (the servers the client named and the server of whoever invited
//! the user; only when the client named none, the room id's server, the inviter's and the
//! servers of members this server last knew), each through the
//! per-destination backoff (`Services::federation`): a template from `make_join`, filled in with
//! the user's join content and signed with this server's key, then `send_join`, whose answer is
//! checked and placed by `Rooms::place_remote_join`. A candidate that fails hands over to the
//! next; the client gets the last failure (a resident's own Matrix error as it gave it).

use std::time::Duration;

use tokio::time::Instant;

use myelin_federation::FederationError;
use myelin_room_version::{
    CanonicalJsonObject, CanonicalJsonValue, RoomVersion, verify::ServerKeys,
};
use ruma::{
    OwnedRoomId, OwnedServerName, OwnedUserId, RoomId, RoomVersionId, ServerName, UserId,
    api::{
        OutgoingRequest,
        federation::membership::{
            create_join_event, create_knock_event, prepare_join_event, prepare_knock_event,
        },
        path_builder::SinglePath,
    },
};
use serde_json::{Map, Value, value::RawValue};

use crate::{Error, Result, Services, rooms::ResidentJoinAnswer};

/// The largest `make_join`/`make_knock` answer read: one event template.
const MAKE_TEMPLATE_BYTES: usize = 256 * 1024;
/// The largest `send_knock` answer read.
const MAX_KNOCK_STATE_BYTES: usize = 1024 * 1024;
/// How long the keys of the servers that signed a join's state are waited for.
const KEY_FETCH_BUDGET: Duration = Duration::from_secs(60);
/// Servers of members this server last knew of, asked after the others.
const KNOWN_SERVERS_ASKED: usize = 5;

impl Services {
    /// `POST /join/{roomIdOrAlias}` and `/rooms/{roomId}/join` (see the module docs). `via`:
    /// the servers the client named (`via`/`server_name`) or the alias resolved to.
    pub async fn join_room(
        &self,
        user: &UserId,
        room_id: &str,
        via: &[OwnedServerName],
        reason: Option<&str>,
        extra_content: Map<String, Value>,
    ) -> Result<String> {
        let joined = self
            .join_room_here_or_through(user, room_id, via, reason, extra_content)
            .await?;
        // The room's servers hear of the user's devices (the spec's rule for a join that brings
        // servers not yet receiving the user's device-list updates); best effort.
        if let Err(err) = self.e2ee.announce_devices(user).await {
            tracing::warn!(%user, room_id = %joined, %err, "could not announce devices after a join");
        }
        Ok(joined)
    }

    async fn join_room_here_or_through(
        &self,
        user: &UserId,
        room_id: &str,
        via: &[OwnedServerName],
        reason: Option<&str>,
        extra_content: Map<String, Value>,
    ) -> Result<String> {
        let _joining = self.rooms.remote_join_lock(room_id).await;
        if self.rooms.is_resident(room_id).await? {
            match self
                .rooms
                .join(user, room_id, reason, extra_content.clone())
                .await
            {
                // A restricted join the user qualifies for, but no local member may invite:
                // a server whose members may authorises it, as a join through it (MSC3083).
                Err(Error::UnableToAuthoriseJoin(why)) => {
                    let candidates = self.rooms.servers_able_to_authorise(room_id).await?;
                    if candidates.is_empty() {
                        return Err(Error::UnableToAuthoriseJoin(why));
                    }
                    let content = self
                        .rooms
                        .client_join_content(user, reason, extra_content)
                        .await?;
                    let content = &content;
                    return self
                        .through_candidates("join", room_id, candidates, |server| async move {
                            self.join_through(&server, user, room_id, content).await
                        })
                        .await;
                }
                local => return local,
            }
        }
        let candidates = self.join_candidates(user, room_id, via).await?;
        if candidates.is_empty() {
            if self.store.room(room_id).await?.is_some() {
                // Everyone here left, and no other server is known: the room's state here is
                // all there is to join on.
                return self.rooms.join(user, room_id, reason, extra_content).await;
            }
            return Err(Error::NotFound(format!(
                "Room {room_id} is not known to this server and no server to join it through was given"
            )));
        }
        let content = self
            .rooms
            .client_join_content(user, reason, extra_content)
            .await?;
        let content = &content;
        self.through_candidates("join", room_id, candidates, |server| async move {
            self.join_through(&server, user, room_id, content).await
        })
        .await
    }

    /// `POST /knock/{roomIdOrAlias}`: locally when this server is in the room, else through
    /// the candidates of a join (`make_knock`/`send_knock`); the knock is then stored outside
    /// the room with the stripped state the resident answered, which the user's clients see.
    pub async fn knock_room(
        &self,
        user: &UserId,
        room_id: &str,
        via: &[OwnedServerName],
        reason: Option<&str>,
    ) -> Result<String> {
        let _joining = self.rooms.remote_join_lock(room_id).await;
        if self.rooms.is_resident(room_id).await? {
            return self.rooms.knock(user, room_id, reason).await;
        }
        let candidates = self.join_candidates(user, room_id, via).await?;
        self.through_candidates("knock", room_id, candidates, |server| async move {
            self.knock_through(&server, user, room_id, reason).await
        })
        .await
    }

    /// Tries the handshake `attempt` with each candidate server in turn until one takes it
    /// (see [`is_final`] for failures after which no other is asked). Returns the room id, or
    /// the last failure.
    async fn through_candidates<F, Fut>(
        &self,
        what: &str,
        room_id: &str,
        candidates: Vec<OwnedServerName>,
        mut attempt: F,
    ) -> Result<String>
    where
        F: FnMut(OwnedServerName) -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        let mut last_error = None;
        for server in candidates {
            match attempt(server.clone()).await {
                Ok(()) => return Ok(room_id.to_owned()),
                Err(err) => {
                    tracing::info!(%room_id, %server, %err, "could not {what} through this server");
                    let stop = is_final(&err);
                    last_error = Some(err);
                    if stop {
                        break;
                    }
                }
            }
        }
        Err(last_error.unwrap_or_else(|| {
            Error::NotFound(format!(
                "Room {room_id} is not known to this server and no server to {what} through was given"
            ))
        }))
    }

    /// `make_knock` and `send_knock` with one resident server.
    async fn knock_through(
        &self,
        server: &ServerName,
        user: &UserId,
        room_id: &str,
        reason: Option<&str>,
    ) -> Result<()> {
        let parsed_room = OwnedRoomId::try_from(room_id)
            .map_err(|e| Error::InvalidParam(format!("{room_id} is not a room id: {e}")))?;
        let template = self
            .make_template(server, user, |member, ver| {
                let mut request =
                    prepare_knock_event::v1::Request::new(parsed_room.clone(), member);
                request.ver = ver;
                request
            })
            .await?;
        let version = template_version(
            server,
            Some(&template.room_version),
            self.account_keys.enabled(),
        )?;
        let mut content = CanonicalJsonObject::new();
        if let Some(reason) = reason {
            content.insert(
                "reason".to_owned(),
                CanonicalJsonValue::String(reason.to_owned()),
            );
        }
        let knock = self
            .rooms
            .member_event_from_template(
                server,
                room_id,
                version,
                user,
                template.event.get().as_bytes(),
                "knock",
                content,
            )
            .await?;
        let event_id = ruma::OwnedEventId::try_from(knock.event_id())
            .map_err(|e| Error::Internal(format!("built event id: {e}")))?;
        let raw = RawValue::from_string(knock.canonical_json())
            .map_err(|e| Error::Internal(format!("built event: {e}")))?;
        let answer = self
            .federation
            .send_limited(
                server,
                create_knock_event::v1::Request::new(parsed_room, event_id, raw),
                MAX_KNOCK_STATE_BYTES,
            )
            .await
            .map_err(|err| remote_error(server, err))?;
        let events: Vec<Box<RawValue>> = answer
            .knock_room_state
            .iter()
            .filter_map(|event| serde_json::value::to_raw_value(event).ok())
            .collect();
        let shown = self
            .rooms
            .checked_stripped_state(version, room_id, &events)
            .await
            .map_err(|err| Error::BadGateway(format!("{server} answered send_knock with {err}")))?;
        let creator = shown
            .iter()
            .find(|event| event["type"] == "m.room.create")
            .and_then(|event| event["sender"].as_str())
            .unwrap_or_default()
            .to_owned();
        let shown = serde_json::to_string(&shown)
            .map_err(|e| Error::Internal(format!("knock state: {e}")))?;
        self.rooms
            .persist_outside(
                room_id,
                version,
                &creator,
                &knock,
                user.as_str(),
                "knock",
                Some(&shown),
            )
            .await
    }

    /// The servers to ask, in order, without duplicates or this server.
    async fn join_candidates(
        &self,
        user: &UserId,
        room_id: &str,
        via: &[OwnedServerName],
    ) -> Result<Vec<OwnedServerName>> {
        // Servers the client named (or the alias gave) are the ones to ask, with the server
        // of whoever invited the user: the client chose them (a restricted room's
        // authorising server, say), so a refusal there is the answer, not a cue to try the
        // room id's server behind the client's back. Only with none named does this server
        // guess: the room id's server and the servers of members it knew.
        let mut servers: Vec<OwnedServerName> = via.to_vec();
        if via.is_empty()
            && let Ok(parsed) = RoomId::parse(room_id)
            && let Some(server) = parsed.server_name()
        {
            servers.push(server.to_owned());
        }
        if let Some(room) = self.store.room(room_id).await? {
            // Whoever invited (or, with no server named, last changed the membership of) the
            // user.
            if let Some((membership, event_nid, _)) =
                self.store.membership(room.room_nid, user.as_str()).await?
                && (via.is_empty() || membership == "invite")
                && let Some(event) = self.store.event_by_nid(event_nid).await?
                && let Ok(sender) = UserId::parse(event.sender.as_str())
            {
                servers.push(sender.server_name().to_owned());
            }
            if !via.is_empty() {
                return Ok(self.distinct_others(servers));
            }
            let mut known: Vec<OwnedServerName> = Vec::new();
            for member in self.store.joined_user_ids(room.room_nid).await? {
                if let Ok(member) = UserId::parse(member.as_str())
                    && !known.iter().any(|s| s == member.server_name())
                {
                    known.push(member.server_name().to_owned());
                }
            }
            servers.extend(known.into_iter().take(KNOWN_SERVERS_ASKED));
        }
        Ok(self.distinct_others(servers))
    }

    /// `servers` without duplicates or this server, in order.
    fn distinct_others(&self, mut servers: Vec<OwnedServerName>) -> Vec<OwnedServerName> {
        let mut seen = std::collections::HashSet::new();
        servers.retain(|server| *server != self.config.server_name && seen.insert(server.clone()));
        servers
    }

    /// `make_join` or `make_knock` with one resident server (`request`: the request for a user
    /// id and the room versions offered): first with the account-name id, offering every
    /// version but the account-key ones; when the resident answers that the room is an
    /// account-key one (`M_INCOMPATIBLE_ROOM_VERSION` naming it), again with the user's
    /// key-form id, offering that version alone (see `docs/account-keys.md`).
    async fn make_template<R>(
        &self,
        server: &ServerName,
        user: &UserId,
        request: impl Fn(OwnedUserId, Vec<RoomVersionId>) -> R,
    ) -> Result<R::IncomingResponse>
    where
        R: OutgoingRequest<PathBuilder = SinglePath>,
    {
        let err = match self
            .federation
            .send_limited(
                server,
                request(user.to_owned(), supported_versions()),
                MAKE_TEMPLATE_BYTES,
            )
            .await
        {
            Ok(template) => return Ok(template),
            Err(err) => remote_error(server, err),
        };
        let Some(version) = account_key_room_version(&err).filter(|_| self.account_keys.enabled())
        else {
            return Err(err);
        };
        let member = self.rooms.room_user_id(version, user).await?;
        let member = OwnedUserId::try_from(member)
            .map_err(|e| Error::Internal(format!("a key-form user id: {e}")))?;
        let offered = RoomVersionId::try_from(version.id()).into_iter().collect();
        self.federation
            .send_limited(server, request(member, offered), MAKE_TEMPLATE_BYTES)
            .await
            .map_err(|err| remote_error(server, err))
    }

    /// The handshake with one resident server.
    async fn join_through(
        &self,
        server: &ServerName,
        user: &UserId,
        room_id: &str,
        content: &Map<String, Value>,
    ) -> Result<()> {
        let parsed_room = OwnedRoomId::try_from(room_id)
            .map_err(|e| Error::InvalidParam(format!("{room_id} is not a room id: {e}")))?;
        let started = Instant::now();
        let template = self
            .make_template(server, user, |member, ver| {
                let mut request = prepare_join_event::v1::Request::new(parsed_room.clone(), member);
                request.ver = ver;
                request
            })
            .await?;
        let version = template_version(
            server,
            template.room_version.as_ref(),
            self.account_keys.enabled(),
        )?;
        let join = self
            .rooms
            .member_event_from_template(
                server,
                room_id,
                version,
                user,
                template.event.get().as_bytes(),
                "join",
                canonical_content(content)?,
            )
            .await?;
        let json = join.canonical_json();
        let event_id = ruma::OwnedEventId::try_from(join.event_id())
            .map_err(|e| Error::Internal(format!("built event id: {e}")))?;
        let raw = RawValue::from_string(json.clone())
            .map_err(|e| Error::Internal(format!("built event: {e}")))?;
        let make_join = started.elapsed();
        let started = Instant::now();
        let answer = self
            .federation
            .send(
                server,
                create_join_event::v2::Request::new(parsed_room, event_id, raw),
            )
            .await
            .map_err(|err| remote_error(server, err))?
            .room_state;
        let send_join = started.elapsed();

        // The resident's signed copy (a restricted join) must be the event sent.
        let join_bytes: Vec<u8> = match &answer.event {
            Some(signed) => {
                let theirs =
                    myelin_room_version::receipt::check_format(version, signed.get().as_bytes())
                        .map_err(|e| {
                            Error::BadGateway(format!(
                                "{server} answered an invalid join event: {e}"
                            ))
                        })?;
                if theirs.event_id() != join.event_id() {
                    return Err(Error::BadGateway(format!(
                        "{server} answered a different join event than the one sent"
                    )));
                }
                signed.get().as_bytes().to_vec()
            }
            None => json.into_bytes(),
        };
        let state: Vec<&[u8]> = answer.state.iter().map(|e| e.get().as_bytes()).collect();
        let auth_chain: Vec<&[u8]> = answer
            .auth_chain
            .iter()
            .map(|e| e.get().as_bytes())
            .collect();
        let started = Instant::now();
        let mut keys = ServerKeys::new();
        let every: Vec<&[u8]> = state
            .iter()
            .chain(auth_chain.iter())
            .copied()
            .chain(std::iter::once(join_bytes.as_slice()))
            .collect();
        self.add_signing_keys(
            version,
            &every,
            &mut keys,
            Instant::now() + KEY_FETCH_BUDGET,
        )
        .await?;
        let key_fetch = started.elapsed();
        // Account-key rooms: the members are verified (within a bound) before the room reaches
        // clients, so that they see names rather than an empty room (MSC4243.md §2.3 item 23).
        if version.uses_account_keys() {
            self.verify_named(&every, crate::account_verification::JOIN_VERIFY_WAIT)
                .await;
        }
        let placed = self
            .rooms
            .place_remote_join(
                room_id,
                version,
                ResidentJoinAnswer {
                    join: &join_bytes,
                    state: &state,
                    auth_chain: &auth_chain,
                },
                &keys,
            )
            .await?;
        // One line per join through another server, with where its time went (milliseconds).
        let [formats, signatures, auth, persist] = placed.outlier_ms();
        tracing::info!(
            %room_id,
            %server,
            event_id = join.event_id(),
            state = placed.state_events,
            auth_chain = placed.auth_chain_events,
            make_join_ms = make_join.as_millis(),
            send_join_ms = send_join.as_millis(),
            keys_ms = key_fetch.as_millis(),
            state_checks_ms = placed.state_checks.as_millis(),
            formats_ms = formats,
            signatures_ms = signatures,
            auth_ms = auth,
            persist_ms = persist,
            state_group_ms = placed.state_group.as_millis(),
            join_event_ms = placed.join_event.as_millis(),
            "joined a room through another server"
        );
        // As after a local join: the user's settings for a room this one replaces follow.
        self.rooms.carry_over_after_join(room_id, user).await;
        Ok(())
    }
}

/// A failure after which no other server is asked: the user may not join (the resident said
/// so with a refusal every resident would give), or the room's version is not one this server
/// supports.
fn is_final(err: &Error) -> bool {
    matches!(err, Error::UnsupportedRoomVersion(_))
        || matches!(err, Error::Remote { errcode, .. } if errcode == "M_INCOMPATIBLE_ROOM_VERSION")
}

/// A request to another server that failed, as the client's error: the other server's refusal
/// (4xx) with its status and Matrix error, else 502.
pub(crate) fn remote_error(server: &ServerName, err: FederationError) -> Error {
    let FederationError::Status { status, body } = &err else {
        return Error::BadGateway(format!("{server}: {err}"));
    };
    if *status >= 500 {
        return Error::BadGateway(format!("{server}: {err}"));
    }
    // A refusal without a Matrix error body keeps its status, as `M_UNKNOWN`.
    let mut body = match serde_json::from_str::<Value>(body) {
        Ok(Value::Object(body)) if body.get("errcode").is_some_and(Value::is_string) => body,
        _ => Map::from_iter([("errcode".to_owned(), Value::from("M_UNKNOWN"))]),
    };
    let message = body.get("error").and_then(Value::as_str).map_or_else(
        || format!("{server} refused the request (HTTP {status})"),
        |e| format!("{server}: {e}"),
    );
    body.insert("error".to_owned(), Value::from(message.clone()));
    Error::Remote {
        status: *status,
        errcode: body["errcode"].as_str().unwrap_or("M_UNKNOWN").to_owned(),
        message,
        body,
    }
}

/// The room versions `make_join`/`make_knock` offer first (`ver`): all this server supports
/// but the account-key ones, whose templates must name the user's key-form id (the user id in
/// the request). A resident of such a room answers `M_INCOMPATIBLE_ROOM_VERSION` naming it,
/// and the join asks again in key form ([`account_key_room_version`]).
fn supported_versions() -> Vec<RoomVersionId> {
    RoomVersion::all()
        .iter()
        .filter(|version| !version.uses_account_keys())
        .filter_map(|version| RoomVersionId::try_from(version.id()).ok())
        .collect()
}

/// The account-key room version a resident's `M_INCOMPATIBLE_ROOM_VERSION` names, if it does.
fn account_key_room_version(err: &Error) -> Option<&'static RoomVersion> {
    let Error::Remote { errcode, body, .. } = err else {
        return None;
    };
    if errcode != "M_INCOMPATIBLE_ROOM_VERSION" {
        return None;
    }
    let version = RoomVersion::get(body.get("room_version")?.as_str()?).ok()?;
    version.uses_account_keys().then_some(version)
}

/// The room version a template names (absent: version 1), if this server can take part in it
/// (account-key rooms only when `account_keys` allows: `experimental.msc4243` on).
fn template_version(
    server: &ServerName,
    version: Option<&RoomVersionId>,
    account_keys: bool,
) -> Result<&'static RoomVersion> {
    let id = version.map_or("1", RoomVersionId::as_str);
    let version = RoomVersion::get(id).map_err(|_| {
        Error::UnsupportedRoomVersion(format!(
            "{server} offered room version {id}, which this server does not support"
        ))
    })?;
    if version.uses_account_keys() && !account_keys {
        return Err(Error::Forbidden(format!(
            "Room version {id} (account keys) is not enabled here, or not for this request"
        )));
    }
    Ok(version)
}

/// A client's member content as canonical JSON (floats are `M_BAD_JSON`).
fn canonical_content(content: &Map<String, Value>) -> Result<CanonicalJsonObject> {
    match CanonicalJsonValue::try_from(Value::Object(content.clone())) {
        Ok(CanonicalJsonValue::Object(object)) => Ok(object),
        _ => Err(Error::BadJson(
            "The member content is not canonical JSON".to_owned(),
        )),
    }
}
