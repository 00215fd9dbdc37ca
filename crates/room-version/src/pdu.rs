//! The PDU model: an event as it travels between servers, kept as the canonical JSON it arrived
//! as, with typed accessors; the format checks on receipt; and building, hashing and signing PDUs
//! for local sends.
//!
//! Why keep the JSON: hashes and signatures cover fields we do not model (and fields added by
//! future versions), so re-serialising a typed struct would change event ids. The typed fields
//! are a read-only view over that JSON.

use ruma::events::TimelineEventType;
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId,
    OwnedUserId, UInt,
};
use serde_json::value::RawValue;

use crate::account_key::{AccountKeyError, KeyFormUserId};
use crate::canonical::{self, JsonError, get_object, get_str, to_canonical_string};
use crate::signing::{ACCOUNT_KEY_ID, KeyPair, sign_json};
use crate::version::{EventFormat, RoomIdFormat, RoomVersion, SigningScheme};

/// Largest PDU, in bytes of canonical JSON including signatures (CS API "Size limits").
pub const MAX_PDU_BYTES: usize = 65_536;
/// Largest `sender`, `state_key`, `type`, `room_id` and event id, in bytes.
pub const MAX_ID_BYTES: usize = 255;
pub const MAX_PREV_EVENTS: usize = 20;
pub const MAX_AUTH_EVENTS: usize = 10;

/// A PDU that fails the format checks. On receipt: drop it. From a client: `M_BAD_JSON`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PduError {
    #[error(transparent)]
    Json(#[from] JsonError),
    #[error("PDU is {size} bytes, more than {MAX_PDU_BYTES}")]
    TooLarge { size: usize },
    #[error("required field {0} is missing")]
    MissingField(&'static str),
    #[error("field {0} has the wrong type")]
    WrongType(&'static str),
    #[error("field {field} is {len} bytes, more than {MAX_ID_BYTES}")]
    FieldTooLong { field: &'static str, len: usize },
    #[error("{field} has {count} entries, more than {max}")]
    TooManyEvents {
        field: &'static str,
        count: usize,
        max: usize,
    },
    #[error("{field} is out of range")]
    OutOfRange { field: &'static str },
    #[error("{field} is not a valid identifier: {value:?}")]
    InvalidId { field: &'static str, value: String },
    #[error("m.room.create must not have a room_id in this room version")]
    CreateHasRoomId,
    #[error("the create event must not be cited in auth_events in this room version")]
    CreateEventInAuthEvents,
    #[error("sender must be a key-form user id in this room version: {0}")]
    SenderNotKeyForm(AccountKeyError),
    #[error("the signing key does not belong to the sender: {0}")]
    WrongSigner(String),
}

impl PduError {
    /// The Matrix error code for a client that submitted such an event.
    pub fn errcode(&self) -> &'static str {
        match self {
            PduError::TooLarge { .. } => "M_TOO_LARGE",
            PduError::Json(JsonError::NotJson(_)) => "M_NOT_JSON",
            _ => "M_BAD_JSON",
        }
    }
}

/// A PDU: canonical JSON plus a typed view of it.
#[derive(Clone, Debug)]
pub struct Pdu {
    event_id: OwnedEventId,
    json: CanonicalJsonObject,
    room_id: Option<OwnedRoomId>,
    sender: OwnedUserId,
    kind: TimelineEventType,
    kind_str: String,
    state_key: Option<String>,
    content: Box<RawValue>,
    prev_events: Vec<OwnedEventId>,
    auth_events: Vec<OwnedEventId>,
    depth: u64,
    origin_server_ts: MilliSecondsSinceUnixEpoch,
    redacts: Option<OwnedEventId>,
    rejected: bool,
}

impl Pdu {
    /// Parse a PDU received over federation: run every format check of the room version, then
    /// compute its event id from the reference hash (rooms 1 and 2: take the `event_id` it
    /// carries). Signatures and hashes are checked separately
    /// (`verify::verify_pdu`), because their failures have different outcomes.
    pub fn from_federation(bytes: &[u8], version: &RoomVersion) -> Result<Pdu, PduError> {
        let json = canonical::parse_object(bytes)?;
        Self::from_canonical(json, version)
    }

    /// Like [`Pdu::from_federation`] for JSON already parsed into canonical form.
    pub fn from_canonical(
        json: CanonicalJsonObject,
        version: &RoomVersion,
    ) -> Result<Pdu, PduError> {
        check_format(&json, version)?;
        let event_id = canonical::event_id(&json, version)?;
        Self::typed(event_id, json, version)
    }

    /// A PDU loaded from our own storage, whose id is already known and whose checks already
    /// passed: only the typed view is built (no hashing, no size checks). Also used for test
    /// fixtures that carry made-up event ids.
    pub fn from_stored(
        event_id: &str,
        json: CanonicalJsonObject,
        version: &RoomVersion,
    ) -> Result<Pdu, PduError> {
        Self::typed(event_id.to_owned(), json, version)
    }

    fn typed(
        event_id: String,
        json: CanonicalJsonObject,
        version: &RoomVersion,
    ) -> Result<Pdu, PduError> {
        let event_id = parse_event_id("event_id", &event_id)?;
        let kind = get_str(&json, "type").ok_or(PduError::MissingField("type"))?;
        let kind_str = kind.to_owned();
        let kind = TimelineEventType::from(kind);
        let sender = get_str(&json, "sender").ok_or(PduError::MissingField("sender"))?;
        let sender = OwnedUserId::try_from(sender).map_err(|_| PduError::InvalidId {
            field: "sender",
            value: sender.to_owned(),
        })?;
        let room_id = match get_str(&json, "room_id") {
            Some(r) => Some(OwnedRoomId::try_from(r).map_err(|_| PduError::InvalidId {
                field: "room_id",
                value: r.to_owned(),
            })?),
            None if json.contains_key("room_id") => return Err(PduError::WrongType("room_id")),
            None => None,
        };
        let state_key = match json.get("state_key") {
            None => None,
            Some(CanonicalJsonValue::String(s)) => Some(s.clone()),
            Some(_) => return Err(PduError::WrongType("state_key")),
        };
        let content_obj = get_object(&json, "content").ok_or(PduError::WrongType("content"))?;
        let content = RawValue::from_string(to_canonical_string(content_obj))
            .map_err(|_| PduError::WrongType("content"))?;
        let prev_events = id_list(&json, "prev_events", version)?;
        let auth_events = id_list(&json, "auth_events", version)?;
        let depth = match json.get("depth") {
            Some(CanonicalJsonValue::Integer(i)) => {
                u64::try_from(i64::from(*i)).map_err(|_| PduError::OutOfRange { field: "depth" })?
            }
            None => 0,
            Some(_) => return Err(PduError::WrongType("depth")),
        };
        let origin_server_ts = match json.get("origin_server_ts") {
            Some(CanonicalJsonValue::Integer(i)) => UInt::try_from(i64::from(*i))
                .map(MilliSecondsSinceUnixEpoch)
                .map_err(|_| PduError::OutOfRange {
                    field: "origin_server_ts",
                })?,
            Some(_) => return Err(PduError::WrongType("origin_server_ts")),
            None => return Err(PduError::MissingField("origin_server_ts")),
        };
        // v11 moved `redacts` into content; earlier versions have it at the top level.
        let redacts_src = if version.rules().redaction.content_field_redacts {
            get_str(content_obj, "redacts")
        } else {
            get_str(&json, "redacts")
        };
        let redacts = match (kind == TimelineEventType::RoomRedaction, redacts_src) {
            (true, Some(r)) => Some(parse_event_id("redacts", r)?),
            _ => None,
        };
        Ok(Pdu {
            event_id,
            json,
            room_id,
            sender,
            kind,
            kind_str,
            state_key,
            content,
            prev_events,
            auth_events,
            depth,
            origin_server_ts,
            redacts,
            rejected: false,
        })
    }

    pub fn event_id(&self) -> &str {
        self.event_id.as_str()
    }
    /// `None` only for the create event of v12-format rooms.
    pub fn room_id(&self) -> Option<&str> {
        self.room_id.as_ref().map(|r| r.as_str())
    }
    pub fn sender(&self) -> &str {
        self.sender.as_str()
    }
    pub fn event_type(&self) -> &str {
        self.kind_str.as_str()
    }
    pub fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }
    pub fn is_state(&self) -> bool {
        self.state_key.is_some()
    }
    /// The content as canonical JSON text.
    pub fn content(&self) -> &RawValue {
        &self.content
    }
    /// The content as a canonical JSON object.
    pub fn content_object(&self) -> Option<&CanonicalJsonObject> {
        get_object(&self.json, "content")
    }
    pub fn prev_events(&self) -> impl ExactSizeIterator<Item = &str> {
        self.prev_events.iter().map(|e| e.as_str())
    }
    pub fn auth_events(&self) -> impl ExactSizeIterator<Item = &str> {
        self.auth_events.iter().map(|e| e.as_str())
    }
    pub fn depth(&self) -> u64 {
        self.depth
    }
    pub fn origin_server_ts(&self) -> u64 {
        self.origin_server_ts.0.into()
    }
    /// For redaction events, the id of the event they redact.
    pub fn redacts(&self) -> Option<&str> {
        self.redacts.as_ref().map(|e| e.as_str())
    }
    /// The JSON as received (federation format: no `event_id` for v3+ rooms).
    pub fn json(&self) -> &CanonicalJsonObject {
        &self.json
    }
    pub fn into_json(self) -> CanonicalJsonObject {
        self.json
    }
    /// The canonical JSON text, what goes over federation and into storage.
    pub fn canonical_json(&self) -> String {
        to_canonical_string(&self.json)
    }
    /// The room this event belongs to. For a v12-format create event (which has no `room_id`)
    /// that is the room its own id defines: `!` + its reference hash.
    pub fn room_id_or_own(&self) -> String {
        match self.room_id() {
            Some(r) => r.to_owned(),
            None => format!("!{}", self.event_id().trim_start_matches('$')),
        }
    }

    /// The event in the Client-Server format (`ClientEvent`): `content`, `event_id`,
    /// `origin_server_ts`, `room_id`, `sender`, `state_key`, `type`, and `unsigned` as given
    /// (the caller adds `age`, `prev_content`, ... there). Federation-only fields are dropped. In
    /// account-key rooms pass the result through `projection::project_for_client`.
    pub fn client_event(
        &self,
        unsigned: serde_json::Map<String, serde_json::Value>,
    ) -> serde_json::Value {
        let content: serde_json::Value =
            serde_json::from_str(self.content.get()).unwrap_or_else(|_| serde_json::json!({}));
        let mut out = serde_json::json!({
            "content": content,
            "event_id": self.event_id(),
            "origin_server_ts": self.origin_server_ts(),
            "room_id": self.room_id_or_own(),
            "sender": self.sender(),
            "type": self.event_type(),
            "unsigned": unsigned,
        });
        if let (Some(key), Some(obj)) = (self.state_key(), out.as_object_mut()) {
            obj.insert(
                "state_key".into(),
                serde_json::Value::String(key.to_owned()),
            );
        }
        out
    }

    /// Whether this event was rejected by the checks on receipt. Rejected events never count as
    /// auth events or in state resolution.
    pub fn rejected(&self) -> bool {
        self.rejected
    }
    pub fn set_rejected(&mut self, rejected: bool) {
        self.rejected = rejected;
    }
    /// The redacted form (for events whose content hash failed, or that a redaction applies to).
    /// The event id is unchanged: it is computed from the redacted form anyway.
    pub fn redacted(&self, version: &RoomVersion) -> Result<Pdu, PduError> {
        let json = canonical::redact(&self.json, version)?;
        let mut pdu = Self::typed(self.event_id.to_string(), json, version)?;
        pdu.rejected = self.rejected;
        Ok(pdu)
    }

    /// How another event cites this one in `prev_events`/`auth_events`: its id, or in rooms 1
    /// and 2 the pair `[event_id, {"sha256": reference hash}]`.
    pub fn reference(&self, version: &RoomVersion) -> Result<CanonicalJsonValue, PduError> {
        let id = CanonicalJsonValue::String(self.event_id.to_string());
        if !version.event_ids_in_pdu() {
            return Ok(id);
        }
        let mut hashes = CanonicalJsonObject::new();
        hashes.insert(
            "sha256".to_owned(),
            CanonicalJsonValue::String(canonical::reference_hash_base64(&self.json, version)?),
        );
        Ok(CanonicalJsonValue::Array(vec![
            id,
            CanonicalJsonValue::Object(hashes),
        ]))
    }

    pub(crate) fn owned_event_id(&self) -> &OwnedEventId {
        &self.event_id
    }
    pub(crate) fn kind(&self) -> &TimelineEventType {
        &self.kind
    }
    pub(crate) fn typed_sender(&self) -> &ruma::UserId {
        &self.sender
    }
    pub(crate) fn typed_room_id(&self) -> Option<&ruma::RoomId> {
        self.room_id.as_deref()
    }
    pub(crate) fn ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.origin_server_ts
    }
    pub(crate) fn prev_event_ids(&self) -> &[OwnedEventId] {
        &self.prev_events
    }
    pub(crate) fn auth_event_ids(&self) -> &[OwnedEventId] {
        &self.auth_events
    }
    pub(crate) fn redacts_id(&self) -> Option<&OwnedEventId> {
        self.redacts.as_ref()
    }
}

fn parse_event_id(field: &'static str, s: &str) -> Result<OwnedEventId, PduError> {
    OwnedEventId::try_from(s).map_err(|_| PduError::InvalidId {
        field,
        value: s.to_owned(),
    })
}

fn id_list(
    json: &CanonicalJsonObject,
    field: &'static str,
    version: &RoomVersion,
) -> Result<Vec<OwnedEventId>, PduError> {
    match json.get(field) {
        None => Ok(Vec::new()),
        Some(CanonicalJsonValue::Array(items)) => items
            .iter()
            .map(|v| parse_event_id(field, cited_id(v, field, version)?))
            .collect(),
        Some(_) => Err(PduError::WrongType(field)),
    }
}

/// The event id in one entry of `prev_events`/`auth_events`: the entry itself, or in rooms 1
/// and 2 the first half of an `[event_id, {"sha256": hash}]` pair. The pair's hash is not
/// checked against the cited event: the spec gives it no role on receipt, and Synapse ignores it.
fn cited_id<'a>(
    entry: &'a CanonicalJsonValue,
    field: &'static str,
    version: &RoomVersion,
) -> Result<&'a str, PduError> {
    match (version.event_ids_in_pdu(), entry) {
        (false, CanonicalJsonValue::String(s)) => Ok(s),
        (true, CanonicalJsonValue::Array(pair)) => match pair.as_slice() {
            [CanonicalJsonValue::String(s), CanonicalJsonValue::Object(_)] => Ok(s),
            _ => Err(PduError::WrongType(field)),
        },
        _ => Err(PduError::WrongType(field)),
    }
}

fn required_string<'a>(
    json: &'a CanonicalJsonObject,
    field: &'static str,
) -> Result<&'a str, PduError> {
    let s = match json.get(field) {
        None => return Err(PduError::MissingField(field)),
        Some(CanonicalJsonValue::String(s)) => s.as_str(),
        Some(_) => return Err(PduError::WrongType(field)),
    };
    if s.len() > MAX_ID_BYTES {
        return Err(PduError::FieldTooLong {
            field,
            len: s.len(),
        });
    }
    Ok(s)
}

fn required_list(
    json: &CanonicalJsonObject,
    field: &'static str,
    max: usize,
    version: &RoomVersion,
) -> Result<Vec<String>, PduError> {
    let Some(value) = json.get(field) else {
        return Err(PduError::MissingField(field));
    };
    let CanonicalJsonValue::Array(items) = value else {
        return Err(PduError::WrongType(field));
    };
    if items.len() > max {
        return Err(PduError::TooManyEvents {
            field,
            count: items.len(),
            max,
        });
    }
    items
        .iter()
        .map(|v| {
            let s = cited_id(v, field, version)?;
            if s.len() > MAX_ID_BYTES {
                return Err(PduError::FieldTooLong {
                    field,
                    len: s.len(),
                });
            }
            parse_event_id(field, s).map(|_| s.to_owned())
        })
        .collect()
}

fn is_url_safe_hash(s: &str) -> bool {
    s.len() == 43
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The format checks on receipt of a PDU (server-server API, step 1), per room version.
pub fn check_format(json: &CanonicalJsonObject, version: &RoomVersion) -> Result<(), PduError> {
    let size = to_canonical_string(json).len();
    if size > MAX_PDU_BYTES {
        return Err(PduError::TooLarge { size });
    }
    let kind = required_string(json, "type")?;
    let sender = required_string(json, "sender")?;
    if ruma::UserId::parse(sender).is_err() {
        return Err(PduError::InvalidId {
            field: "sender",
            value: sender.to_owned(),
        });
    }
    if version.signing() == SigningScheme::AccountKey {
        KeyFormUserId::parse(sender).map_err(PduError::SenderNotKeyForm)?;
    }
    // The spec limits `state_key` to 255 bytes, but Synapse has long counted code points, and
    // rooms hold events with longer keys in bytes: refusing them here would break those rooms
    // on this server (as it did Dendrite's). Other servers' events are held to 255 code
    // points; the events this server signs to the spec's bytes (`build_pdu`).
    match json.get("state_key") {
        None => {}
        Some(CanonicalJsonValue::String(s)) if s.chars().count() > MAX_ID_BYTES => {
            return Err(PduError::FieldTooLong {
                field: "state_key",
                len: s.len(),
            });
        }
        Some(CanonicalJsonValue::String(_)) => {}
        Some(_) => return Err(PduError::WrongType("state_key")),
    }
    let is_create = kind == "m.room.create";
    let room_id = match (version.event_format(), is_create) {
        (EventFormat::V12, true) => {
            if json.contains_key("room_id") {
                return Err(PduError::CreateHasRoomId);
            }
            None
        }
        _ => Some(required_string(json, "room_id")?),
    };
    if let Some(room_id) = room_id {
        let valid = match version.room_id_format() {
            RoomIdFormat::ServerScoped => ruma::RoomId::parse(room_id).is_ok(),
            RoomIdFormat::CreateEventHash => {
                room_id.strip_prefix('!').is_some_and(is_url_safe_hash)
            }
        };
        if !valid {
            return Err(PduError::InvalidId {
                field: "room_id",
                value: room_id.to_owned(),
            });
        }
    }
    if version.event_ids_in_pdu() {
        // Rooms 1 and 2: the id is the creating server's `$opaque:domain`.
        let id = required_string(json, "event_id")?;
        let valid = ruma::EventId::parse(id).is_ok_and(|e| e.server_name().is_some());
        if !valid {
            return Err(PduError::InvalidId {
                field: "event_id",
                value: id.to_owned(),
            });
        }
    }
    required_list(json, "prev_events", MAX_PREV_EVENTS, version)?;
    let auth_events = required_list(json, "auth_events", MAX_AUTH_EVENTS, version)?;
    if let (EventFormat::V12, Some(room_id)) = (version.event_format(), room_id) {
        let create_id = format!("${}", room_id.trim_start_matches('!'));
        if auth_events.contains(&create_id) {
            return Err(PduError::CreateEventInAuthEvents);
        }
    }
    match json.get("depth") {
        None => return Err(PduError::MissingField("depth")),
        Some(CanonicalJsonValue::Integer(i)) if i64::from(*i) < 0 => {
            return Err(PduError::OutOfRange { field: "depth" });
        }
        Some(CanonicalJsonValue::Integer(_)) => {}
        Some(_) => return Err(PduError::WrongType("depth")),
    }
    match json.get("origin_server_ts") {
        None => return Err(PduError::MissingField("origin_server_ts")),
        Some(CanonicalJsonValue::Integer(i)) if i64::from(*i) < 0 => {
            return Err(PduError::OutOfRange {
                field: "origin_server_ts",
            });
        }
        Some(CanonicalJsonValue::Integer(_)) => {}
        Some(_) => return Err(PduError::WrongType("origin_server_ts")),
    }
    match json.get("content") {
        None => return Err(PduError::MissingField("content")),
        Some(CanonicalJsonValue::Object(_)) => {}
        Some(_) => return Err(PduError::WrongType("content")),
    }
    match get_object(json, "hashes") {
        None if json.contains_key("hashes") => return Err(PduError::WrongType("hashes")),
        None => return Err(PduError::MissingField("hashes")),
        Some(h) => match h.get("sha256") {
            Some(CanonicalJsonValue::String(_)) => {}
            None => return Err(PduError::MissingField("hashes.sha256")),
            Some(_) => return Err(PduError::WrongType("hashes.sha256")),
        },
    }
    match json.get("signatures") {
        Some(CanonicalJsonValue::Object(_)) => {}
        None => return Err(PduError::MissingField("signatures")),
        Some(_) => return Err(PduError::WrongType("signatures")),
    }
    // `unsigned` is free-form; only its type matters.
    match json.get("unsigned") {
        None | Some(CanonicalJsonValue::Object(_)) => {}
        Some(_) => return Err(PduError::WrongType("unsigned")),
    }
    Ok(())
}

/// The key that signs an event being built.
#[derive(Clone, Copy, Debug)]
pub enum EventSigner<'a> {
    /// A homeserver signing key (rooms that are not account-key rooms).
    Server {
        server_name: &'a str,
        key_id: &'a str,
        key: &'a KeyPair,
    },
    /// The sender's account key (account-key rooms): entity = the bare key, `ed25519:1`.
    Account(&'a KeyPair),
}

impl EventSigner<'_> {
    fn entity_and_key_id(&self) -> (String, String) {
        match self {
            EventSigner::Server {
                server_name,
                key_id,
                ..
            } => ((*server_name).to_owned(), (*key_id).to_owned()),
            EventSigner::Account(key) => (
                key.account_key().as_str().to_owned(),
                ACCOUNT_KEY_ID.to_owned(),
            ),
        }
    }
    fn key(&self) -> &KeyPair {
        match self {
            EventSigner::Server { key, .. } => key,
            EventSigner::Account(key) => key,
        }
    }
}

/// Build a PDU for a local send from a partial event (`type`, `room_id` unless v12 create,
/// `sender`, `content`, `state_key`, `prev_events`, `auth_events`, `depth`, `origin_server_ts`):
/// add the content hash, sign the redacted form with the key the room version demands (the
/// sender's server key, or in account-key rooms the sender's account key), run the format checks
/// and compute the event id. Any `signatures`, `hashes` or `unsigned` given are replaced, and so
/// is `event_id` in rooms 3 and later.
///
/// Rooms 1 and 2: the partial event must carry its `event_id` (`$opaque:domain`, chosen by the
/// server that creates the event: this crate has no randomness), and cite events in
/// `prev_events`/`auth_events` as pairs ([`Pdu::reference`]).
pub fn build_pdu(
    mut partial: CanonicalJsonObject,
    version: &RoomVersion,
    signer: EventSigner<'_>,
) -> Result<Pdu, PduError> {
    partial.remove("signatures");
    partial.remove("hashes");
    partial.remove("unsigned");
    if !version.event_ids_in_pdu() {
        partial.remove("event_id");
    }
    let sender = get_str(&partial, "sender")
        .ok_or(PduError::MissingField("sender"))?
        .to_owned();
    match (version.signing(), &signer) {
        (SigningScheme::AccountKey, EventSigner::Account(key)) => {
            let parsed = KeyFormUserId::parse(&sender).map_err(PduError::SenderNotKeyForm)?;
            if parsed.key != key.account_key() {
                return Err(PduError::WrongSigner(format!(
                    "account key {} does not match sender {sender}",
                    key.account_key()
                )));
            }
        }
        (SigningScheme::ServerKey, EventSigner::Server { server_name, .. }) => {
            let domain = crate::account_key::split_user_id(&sender).map(|(_, d)| d);
            if domain != Some(*server_name) {
                return Err(PduError::WrongSigner(format!(
                    "server {server_name} cannot sign for {sender}"
                )));
            }
        }
        (SigningScheme::AccountKey, _) => {
            return Err(PduError::WrongSigner(
                "account-key rooms need the sender's account key".into(),
            ));
        }
        (SigningScheme::ServerKey, _) => {
            return Err(PduError::WrongSigner(
                "this room version is signed by server keys".into(),
            ));
        }
    }
    // What other servers may hold to code points (`check_format`), this server's own events
    // keep to the spec's bytes.
    if let Some(CanonicalJsonValue::String(key)) = partial.get("state_key")
        && key.len() > MAX_ID_BYTES
    {
        return Err(PduError::FieldTooLong {
            field: "state_key",
            len: key.len(),
        });
    }
    let hash = canonical::content_hash(&partial);
    let mut hashes = CanonicalJsonObject::new();
    hashes.insert("sha256".to_owned(), CanonicalJsonValue::String(hash));
    partial.insert("hashes".to_owned(), CanonicalJsonValue::Object(hashes));
    partial.insert(
        "signatures".to_owned(),
        CanonicalJsonValue::Object(CanonicalJsonObject::new()),
    );
    let mut pdu = Pdu::from_canonical(partial, version)?;
    add_signature(&mut pdu, version, signer)?;
    Ok(pdu)
}

/// Add another signature to a PDU without changing its id: the authorising resident on a
/// restricted join (`join_authorised_via_users_server`), or the co-signer of an invite.
pub fn add_signature(
    pdu: &mut Pdu,
    version: &RoomVersion,
    signer: EventSigner<'_>,
) -> Result<(), PduError> {
    let mut redacted = canonical::redact(&pdu.json, version)?;
    let (entity, key_id) = signer.entity_and_key_id();
    sign_json(&mut redacted, &entity, &key_id, signer.key())?;
    let signature = crate::signing::find_signature_for(&redacted, &entity, &key_id)
        .map_err(|_| PduError::WrongType("signatures"))?
        .to_owned();
    crate::signing::add_signature(&mut pdu.json, &entity, &key_id, signature)?;
    let size = to_canonical_string(&pdu.json).len();
    if size > MAX_PDU_BYTES {
        return Err(PduError::TooLarge { size });
    }
    Ok(())
}
