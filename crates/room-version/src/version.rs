//! The room version table: which event format, id formats, redaction algorithm, signing scheme,
//! authorisation rules and state resolution algorithm each supported room version uses.
//!
//! Every other module asks a [`RoomVersion`] instead of matching on version strings, so adding a
//! version is one entry here plus whatever new rule it brings.

use ruma::room_version_rules::RoomVersionRules;

/// Whether a room version is advertised as stable or unstable (`m.room_versions`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stability {
    Stable,
    Unstable,
}

/// The shape of PDUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventFormat {
    /// Room versions 4 to 11: event ids are reference hashes, every event has a `room_id`, the
    /// create event is cited in `auth_events`.
    V4,
    /// Room version 12: the create event has no `room_id` and is never cited in `auth_events`.
    V12,
}

/// How event ids are formed. Every supported version uses the room-v4 form; the enum exists so
/// the table says so explicitly and a future format is one more variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventIdFormat {
    /// `$` + URL-safe unpadded base64 of the reference hash.
    ReferenceHashUrlSafe,
}

/// How room ids are formed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoomIdFormat {
    /// `!opaque:server`, chosen by the creating server.
    ServerScoped,
    /// `!` + the create event's reference hash (MSC4291).
    CreateEventHash,
}

/// Which redaction algorithm applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedactionAlgorithm {
    /// Rooms 9 and 10: keeps `origin`, `membership`, `prev_state` at the top level.
    V9,
    /// Rooms 11 and later (MSC2176 and MSC3821).
    V11,
}

/// Which key signs events, and so which signatures a receiver requires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SigningScheme {
    /// The homeserver's signing key; entity = server name. Keys are fetched over the network by
    /// the caller and have a validity period.
    ServerKey,
    /// The sender's account key (MSC4243); entity = the bare key, key id `ed25519:1`, the key is
    /// the sender's localpart. No fetch, no validity period.
    AccountKey,
}

/// The state resolution algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateResAlgorithm {
    /// State resolution v2 (rooms 2 to 11).
    V2,
    /// State resolution v2.1 (MSC4297, rooms 12 and later).
    V2_1,
}

/// One supported room version and the rules it implies.
#[derive(Debug)]
pub struct RoomVersion {
    id: &'static str,
    stability: Stability,
    event_format: EventFormat,
    room_id_format: RoomIdFormat,
    redaction: RedactionAlgorithm,
    signing: SigningScheme,
    state_res: StateResAlgorithm,
    /// ruma's description of the same version, used to drive ruma's redaction, auth rules and
    /// state resolution. Never exposed: callers only see our enums.
    rules: RoomVersionRules,
}

/// The id of the unstable account-key room version.
pub const ACCOUNT_KEY_ROOM_VERSION: &str = "org.matrix.12.4243";

static V10: RoomVersion = RoomVersion {
    id: "10",
    stability: Stability::Stable,
    event_format: EventFormat::V4,
    room_id_format: RoomIdFormat::ServerScoped,
    redaction: RedactionAlgorithm::V9,
    signing: SigningScheme::ServerKey,
    state_res: StateResAlgorithm::V2,
    rules: RoomVersionRules::V10,
};

static V11: RoomVersion = RoomVersion {
    id: "11",
    stability: Stability::Stable,
    event_format: EventFormat::V4,
    room_id_format: RoomIdFormat::ServerScoped,
    redaction: RedactionAlgorithm::V11,
    signing: SigningScheme::ServerKey,
    state_res: StateResAlgorithm::V2,
    rules: RoomVersionRules::V11,
};

static V12: RoomVersion = RoomVersion {
    id: "12",
    stability: Stability::Stable,
    event_format: EventFormat::V12,
    room_id_format: RoomIdFormat::CreateEventHash,
    redaction: RedactionAlgorithm::V11,
    signing: SigningScheme::ServerKey,
    state_res: StateResAlgorithm::V2_1,
    rules: RoomVersionRules::V12,
};

/// Room version 12 with account-key signing (MSC4243). Its auth rules are v12's plus the
/// key-form requirements applied in `auth`.
static V12_4243: RoomVersion = RoomVersion {
    id: ACCOUNT_KEY_ROOM_VERSION,
    stability: Stability::Unstable,
    event_format: EventFormat::V12,
    room_id_format: RoomIdFormat::CreateEventHash,
    redaction: RedactionAlgorithm::V11,
    signing: SigningScheme::AccountKey,
    state_res: StateResAlgorithm::V2_1,
    rules: RoomVersionRules::V12,
};

static ALL: [&RoomVersion; 4] = [&V10, &V11, &V12, &V12_4243];

/// A room version string this server does not implement. Maps to `M_UNSUPPORTED_ROOM_VERSION`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported room version {version:?}")]
pub struct UnsupportedRoomVersion {
    pub version: String,
}

impl UnsupportedRoomVersion {
    /// The Matrix error code the API layer should answer with.
    pub fn errcode(&self) -> &'static str {
        "M_UNSUPPORTED_ROOM_VERSION"
    }
}

impl RoomVersion {
    /// Look up a room version by its id. Unknown ids are refused.
    pub fn get(id: &str) -> Result<&'static RoomVersion, UnsupportedRoomVersion> {
        ALL.iter()
            .copied()
            .find(|v| v.id == id)
            .ok_or_else(|| UnsupportedRoomVersion {
                version: id.to_owned(),
            })
    }

    /// The version new rooms get when the client does not ask for one.
    pub fn default_for_new_rooms() -> &'static RoomVersion {
        &V12
    }

    /// Every supported version, oldest first (for `m.room_versions`).
    pub fn all() -> &'static [&'static RoomVersion] {
        &ALL
    }

    pub fn id(&self) -> &'static str {
        self.id
    }
    pub fn stability(&self) -> Stability {
        self.stability
    }
    pub fn event_format(&self) -> EventFormat {
        self.event_format
    }
    pub fn event_id_format(&self) -> EventIdFormat {
        EventIdFormat::ReferenceHashUrlSafe
    }
    pub fn room_id_format(&self) -> RoomIdFormat {
        self.room_id_format
    }
    pub fn redaction(&self) -> RedactionAlgorithm {
        self.redaction
    }
    pub fn signing(&self) -> SigningScheme {
        self.signing
    }
    pub fn state_res(&self) -> StateResAlgorithm {
        self.state_res
    }

    /// True for account-key rooms (MSC4243).
    pub fn uses_account_keys(&self) -> bool {
        self.signing == SigningScheme::AccountKey
    }

    /// Whether third-party invites exist in this version (disabled in account-key rooms,
    /// MSC4243.md §4 Q10).
    pub fn allows_third_party_invites(&self) -> bool {
        !self.uses_account_keys()
    }

    /// Whether the room's creators have infinite power (v12 and later): what `@room`
    /// permission checks and power level reads must honour.
    pub fn privileges_creators(&self) -> bool {
        self.rules.authorization.explicitly_privilege_room_creators
    }

    pub(crate) fn rules(&self) -> &RoomVersionRules {
        &self.rules
    }
}

impl PartialEq for RoomVersion {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}
impl Eq for RoomVersion {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lists_the_four_versions_and_refuses_others() {
        let ids: Vec<_> = RoomVersion::all().iter().map(|v| v.id()).collect();
        assert_eq!(ids, ["10", "11", "12", "org.matrix.12.4243"]);
        assert_eq!(RoomVersion::default_for_new_rooms().id(), "12");
        for bad in ["9", "1", "", "12 ", "org.matrix.12.4244", "13"] {
            let err = RoomVersion::get(bad).unwrap_err();
            assert_eq!(err.errcode(), "M_UNSUPPORTED_ROOM_VERSION");
            assert_eq!(err.version, bad);
        }
    }

    #[test]
    fn each_version_states_its_rules() {
        let v10 = RoomVersion::get("10").unwrap();
        assert_eq!(v10.redaction(), RedactionAlgorithm::V9);
        assert_eq!(v10.state_res(), StateResAlgorithm::V2);
        assert_eq!(v10.room_id_format(), RoomIdFormat::ServerScoped);
        assert_eq!(v10.event_id_format(), EventIdFormat::ReferenceHashUrlSafe);
        let v11 = RoomVersion::get("11").unwrap();
        assert_eq!(v11.redaction(), RedactionAlgorithm::V11);
        assert_eq!(v11.event_format(), EventFormat::V4);
        let v12 = RoomVersion::get("12").unwrap();
        assert_eq!(v12.event_format(), EventFormat::V12);
        assert_eq!(v12.room_id_format(), RoomIdFormat::CreateEventHash);
        assert_eq!(v12.state_res(), StateResAlgorithm::V2_1);
        assert_eq!(v12.signing(), SigningScheme::ServerKey);
        assert_eq!(v12.stability(), Stability::Stable);
        let ak = RoomVersion::get(ACCOUNT_KEY_ROOM_VERSION).unwrap();
        assert_eq!(ak.signing(), SigningScheme::AccountKey);
        assert_eq!(ak.stability(), Stability::Unstable);
        assert_eq!(ak.event_format(), EventFormat::V12);
        assert_eq!(ak.redaction(), RedactionAlgorithm::V11);
        assert!(!ak.allows_third_party_invites());
        assert!(ak.privileges_creators() && v12.privileges_creators());
        assert!(!v11.privileges_creators() && !v10.privileges_creators());
        assert!(v12.allows_third_party_invites());
    }
}
