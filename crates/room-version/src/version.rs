//! The room version table: which event format, id formats, redaction algorithm, signing scheme,
//! authorisation rules and state resolution algorithm each supported room version uses.
//!
//! Every other module asks a [`RoomVersion`] instead of matching on version strings, so adding a
//! version is one entry here plus whatever new rule it brings. The differences between the
//! versions are data in this table ([`AuthRules`], [`RedactionAlgorithm`], [`EventIdFormat`],
//! ...): code elsewhere reads a field, never a version id.

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
    /// Room versions 1 and 2 (the spec's event format 1): the PDU carries its own `event_id`
    /// (`$opaque:origin`, chosen by the server that created it), and `prev_events` and
    /// `auth_events` cite events as `[event_id, {"sha256": reference hash}]` pairs.
    V1,
    /// Room versions 3 to 11 (the spec's event formats 2 and 3, which differ only in the event
    /// id alphabet, see [`EventIdFormat`]): event ids are reference hashes and are not carried in
    /// the PDU, `prev_events`/`auth_events` are lists of ids, every event has a `room_id`, the
    /// create event is cited in `auth_events`.
    V4,
    /// Room version 12: the create event has no `room_id` and is never cited in `auth_events`.
    V12,
}

/// How event ids are formed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventIdFormat {
    /// `$opaque:origin`, chosen by the creating server and carried in the PDU (rooms 1, 2).
    /// Such events are also signed by the server named in the id.
    Opaque,
    /// `$` + standard unpadded base64 of the reference hash (room 3).
    ReferenceHashStandard,
    /// `$` + URL-safe unpadded base64 of the reference hash (rooms 4 and later).
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

/// Which redaction algorithm applies. Each variant is named after the room version that
/// introduced it and keeps what the previous one kept, except where noted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RedactionAlgorithm {
    /// Rooms 1 to 5: also keeps `aliases` in `m.room.aliases` content.
    V1,
    /// Rooms 6 and 7: `m.room.aliases` content is no longer kept.
    V6,
    /// Room 8: keeps `allow` in `m.room.join_rules` content.
    V8,
    /// Rooms 9 and 10: keeps `join_authorised_via_users_server` in member content; keeps
    /// `origin`, `membership`, `prev_state` at the top level (as all earlier ones do).
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
    /// State resolution v1 (room 1).
    V1,
    /// State resolution v2 (rooms 2 to 11).
    V2,
    /// State resolution v2.1 (MSC4297, rooms 12 and later).
    V2_1,
}

/// The authorisation-rule differences between room versions, as flags. ruma's authorisation
/// rules are driven by the same facts; a test checks that this table and ruma's agree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthRules {
    /// Rooms 1–2, auth rule 11: an `m.room.redaction` is allowed only with the `redact` level or
    /// when the redaction's `event_id` and the redacted event's id share a domain. From room 3
    /// redactions pass the auth rules like any event and the check moves to serving time
    /// ("Handling redactions", [`crate::redaction::redaction_applies`]).
    pub redaction_in_auth_rules: bool,
    /// Rooms 1–5, auth rule 4: `m.room.aliases` is allowed iff its `state_key` is the sender's
    /// domain, before any membership or power check.
    pub special_case_aliases: bool,
    /// Rooms 6+: changing `notifications` in power levels needs power above both old and new
    /// values like any other level (before, it could be changed freely).
    pub notifications_power_level_checked: bool,
    /// Rooms 6+: events must be strictly canonical JSON (integers within ±(2^53−1), no floats).
    pub strict_canonical_json: bool,
    /// Rooms 7+: the `knock` membership and join rule.
    pub knocking: bool,
    /// Rooms 8+: the `restricted` join rule and `join_authorised_via_users_server`.
    pub restricted_joins: bool,
    /// Rooms 10+: the `knock_restricted` join rule.
    pub knock_restricted: bool,
    /// Rooms 10+: power level values must be JSON integers. Before, strings holding an integer
    /// are accepted and read as that integer.
    pub integer_power_levels: bool,
    /// Rooms 11+: the room creator is the create event's `sender` (before, `content.creator`).
    pub creator_is_create_sender: bool,
    /// Rooms 12+: creators have infinite power.
    pub creators_privileged: bool,
}

impl AuthRules {
    const V1: AuthRules = AuthRules {
        redaction_in_auth_rules: true,
        special_case_aliases: true,
        notifications_power_level_checked: false,
        strict_canonical_json: false,
        knocking: false,
        restricted_joins: false,
        knock_restricted: false,
        integer_power_levels: false,
        creator_is_create_sender: false,
        creators_privileged: false,
    };
    const V3: AuthRules = AuthRules {
        redaction_in_auth_rules: false,
        ..AuthRules::V1
    };
    const V6: AuthRules = AuthRules {
        special_case_aliases: false,
        notifications_power_level_checked: true,
        strict_canonical_json: true,
        ..AuthRules::V3
    };
    const V7: AuthRules = AuthRules {
        knocking: true,
        ..AuthRules::V6
    };
    const V8: AuthRules = AuthRules {
        restricted_joins: true,
        ..AuthRules::V7
    };
    const V10: AuthRules = AuthRules {
        knock_restricted: true,
        integer_power_levels: true,
        ..AuthRules::V8
    };
    const V11: AuthRules = AuthRules {
        creator_is_create_sender: true,
        ..AuthRules::V10
    };
    const V12: AuthRules = AuthRules {
        creators_privileged: true,
        ..AuthRules::V11
    };
}

/// One supported room version and the rules it implies.
#[derive(Debug)]
pub struct RoomVersion {
    id: &'static str,
    stability: Stability,
    event_format: EventFormat,
    event_id_format: EventIdFormat,
    room_id_format: RoomIdFormat,
    redaction: RedactionAlgorithm,
    signing: SigningScheme,
    state_res: StateResAlgorithm,
    auth_rules: AuthRules,
    /// Rooms 5+: a server key counts only if still valid at the event's `origin_server_ts`.
    enforce_key_validity: bool,
    /// ruma's description of the same version, used to drive ruma's redaction, auth rules and
    /// state resolution. Never exposed: callers only see our enums.
    rules: RoomVersionRules,
}

/// The id of the unstable account-key room version.
pub const ACCOUNT_KEY_ROOM_VERSION: &str = "org.matrix.12.4243";

const V1: RoomVersion = RoomVersion {
    id: "1",
    stability: Stability::Stable,
    event_format: EventFormat::V1,
    event_id_format: EventIdFormat::Opaque,
    room_id_format: RoomIdFormat::ServerScoped,
    redaction: RedactionAlgorithm::V1,
    signing: SigningScheme::ServerKey,
    state_res: StateResAlgorithm::V1,
    auth_rules: AuthRules::V1,
    enforce_key_validity: false,
    rules: RoomVersionRules::V1,
};

const V2: RoomVersion = RoomVersion {
    id: "2",
    state_res: StateResAlgorithm::V2,
    rules: RoomVersionRules::V2,
    ..V1
};

const V3: RoomVersion = RoomVersion {
    id: "3",
    event_format: EventFormat::V4,
    event_id_format: EventIdFormat::ReferenceHashStandard,
    auth_rules: AuthRules::V3,
    rules: RoomVersionRules::V3,
    ..V2
};

const V4: RoomVersion = RoomVersion {
    id: "4",
    event_id_format: EventIdFormat::ReferenceHashUrlSafe,
    rules: RoomVersionRules::V4,
    ..V3
};

const V5: RoomVersion = RoomVersion {
    id: "5",
    enforce_key_validity: true,
    rules: RoomVersionRules::V5,
    ..V4
};

const V6: RoomVersion = RoomVersion {
    id: "6",
    redaction: RedactionAlgorithm::V6,
    auth_rules: AuthRules::V6,
    rules: RoomVersionRules::V6,
    ..V5
};

const V7: RoomVersion = RoomVersion {
    id: "7",
    auth_rules: AuthRules::V7,
    rules: RoomVersionRules::V7,
    ..V6
};

const V8: RoomVersion = RoomVersion {
    id: "8",
    redaction: RedactionAlgorithm::V8,
    auth_rules: AuthRules::V8,
    rules: RoomVersionRules::V8,
    ..V7
};

const V9: RoomVersion = RoomVersion {
    id: "9",
    redaction: RedactionAlgorithm::V9,
    rules: RoomVersionRules::V9,
    ..V8
};

const V10: RoomVersion = RoomVersion {
    id: "10",
    auth_rules: AuthRules::V10,
    rules: RoomVersionRules::V10,
    ..V9
};

const V11: RoomVersion = RoomVersion {
    id: "11",
    redaction: RedactionAlgorithm::V11,
    auth_rules: AuthRules::V11,
    rules: RoomVersionRules::V11,
    ..V10
};

const V12: RoomVersion = RoomVersion {
    id: "12",
    event_format: EventFormat::V12,
    room_id_format: RoomIdFormat::CreateEventHash,
    state_res: StateResAlgorithm::V2_1,
    auth_rules: AuthRules::V12,
    rules: RoomVersionRules::V12,
    ..V11
};

/// Room version 12 with account-key signing (MSC4243). Its auth rules are v12's plus the
/// key-form requirements applied in `auth`.
const V12_4243: RoomVersion = RoomVersion {
    id: ACCOUNT_KEY_ROOM_VERSION,
    stability: Stability::Unstable,
    signing: SigningScheme::AccountKey,
    ..V12
};

static TABLE: [RoomVersion; 13] = [V1, V2, V3, V4, V5, V6, V7, V8, V9, V10, V11, V12, V12_4243];

static ALL: [&RoomVersion; 13] = [
    &TABLE[0], &TABLE[1], &TABLE[2], &TABLE[3], &TABLE[4], &TABLE[5], &TABLE[6], &TABLE[7],
    &TABLE[8], &TABLE[9], &TABLE[10], &TABLE[11], &TABLE[12],
];

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
        ALL[11]
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
        self.event_id_format
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
    /// The authorisation-rule differences this version makes.
    pub fn auth_rules(&self) -> &AuthRules {
        &self.auth_rules
    }
    /// Whether a server key must still be valid at the event's `origin_server_ts` (rooms 5+;
    /// before, any known key of the server counts).
    pub fn enforce_key_validity(&self) -> bool {
        self.enforce_key_validity
    }
    /// Whether PDUs carry their own `event_id` and cite events as `[id, hashes]` pairs.
    pub fn event_ids_in_pdu(&self) -> bool {
        self.event_id_format == EventIdFormat::Opaque
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
        self.auth_rules.creators_privileged
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
    fn table_lists_every_stable_version_and_refuses_others() {
        let ids: Vec<_> = RoomVersion::all().iter().map(|v| v.id()).collect();
        assert_eq!(
            ids,
            [
                "1",
                "2",
                "3",
                "4",
                "5",
                "6",
                "7",
                "8",
                "9",
                "10",
                "11",
                "12",
                "org.matrix.12.4243"
            ]
        );
        assert_eq!(RoomVersion::default_for_new_rooms().id(), "12");
        for bad in ["0", "01", "1.0", "", "12 ", "org.matrix.12.4244", "13"] {
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

    /// The table's own facts, version by version, against the spec's list of changes.
    #[test]
    fn older_versions_state_their_differences() {
        let get = |id: &str| -> &'static RoomVersion { RoomVersion::get(id).unwrap() };
        let formats: Vec<_> = (1..=12)
            .map(|n| get(&n.to_string()).event_id_format())
            .collect();
        use EventIdFormat::*;
        assert_eq!(
            formats[..4],
            [Opaque, Opaque, ReferenceHashStandard, ReferenceHashUrlSafe]
        );
        assert!(formats[4..].iter().all(|f| *f == ReferenceHashUrlSafe));
        assert_eq!(get("2").event_format(), EventFormat::V1);
        assert_eq!(get("3").event_format(), EventFormat::V4);
        assert_eq!(get("1").state_res(), StateResAlgorithm::V1);
        assert_eq!(get("2").state_res(), StateResAlgorithm::V2);
        let redactions: Vec<_> = (1..=11).map(|n| get(&n.to_string()).redaction()).collect();
        use RedactionAlgorithm as R;
        assert_eq!(
            redactions,
            [
                R::V1,
                R::V1,
                R::V1,
                R::V1,
                R::V1,
                R::V6,
                R::V6,
                R::V8,
                R::V9,
                R::V9,
                R::V11
            ]
        );
        assert!(!get("4").enforce_key_validity() && get("5").enforce_key_validity());
        assert!(get("2").auth_rules().redaction_in_auth_rules);
        assert!(!get("3").auth_rules().redaction_in_auth_rules);
        assert!(get("5").auth_rules().special_case_aliases);
        assert!(!get("6").auth_rules().special_case_aliases);
        assert!(get("6").auth_rules().notifications_power_level_checked);
        assert!(get("6").auth_rules().strict_canonical_json);
        assert!(!get("6").auth_rules().knocking && get("7").auth_rules().knocking);
        assert!(!get("7").auth_rules().restricted_joins && get("8").auth_rules().restricted_joins);
        assert!(!get("9").auth_rules().integer_power_levels);
        assert!(get("10").auth_rules().integer_power_levels);
        assert!(get("10").auth_rules().knock_restricted && !get("9").auth_rules().knock_restricted);
        assert!(get("1").event_ids_in_pdu() && !get("3").event_ids_in_pdu());
    }

    /// ruma's auth rules, redaction and state resolution are driven by ruma's flags, the rest of
    /// this crate by ours: they must say the same thing for every version.
    #[test]
    fn table_agrees_with_rumas_rules() {
        use ruma::room_version_rules::{EventIdFormatVersion, StateResolutionVersion};
        for v in RoomVersion::all() {
            let r = v.rules();
            let a = v.auth_rules();
            let z = &r.authorization;
            assert_eq!(
                a.redaction_in_auth_rules,
                z.special_case_room_redaction,
                "{}",
                v.id()
            );
            assert_eq!(
                a.special_case_aliases,
                z.special_case_room_aliases,
                "{}",
                v.id()
            );
            assert_eq!(
                a.strict_canonical_json,
                z.strict_canonical_json,
                "{}",
                v.id()
            );
            assert_eq!(
                a.notifications_power_level_checked,
                z.limit_notifications_power_levels,
                "{}",
                v.id()
            );
            assert_eq!(a.knocking, z.knocking, "{}", v.id());
            assert_eq!(a.restricted_joins, z.restricted_join_rule, "{}", v.id());
            assert_eq!(
                a.knock_restricted,
                z.knock_restricted_join_rule,
                "{}",
                v.id()
            );
            assert_eq!(a.integer_power_levels, z.integer_power_levels, "{}", v.id());
            assert_eq!(
                a.creator_is_create_sender,
                z.use_room_create_sender,
                "{}",
                v.id()
            );
            assert_eq!(
                a.creators_privileged,
                z.explicitly_privilege_room_creators,
                "{}",
                v.id()
            );
            assert_eq!(
                v.enforce_key_validity(),
                r.enforce_key_validity,
                "{}",
                v.id()
            );
            let id_format = match r.event_id_format {
                EventIdFormatVersion::V1 => EventIdFormat::Opaque,
                EventIdFormatVersion::V2 => EventIdFormat::ReferenceHashStandard,
                _ => EventIdFormat::ReferenceHashUrlSafe,
            };
            assert_eq!(v.event_id_format(), id_format, "{}", v.id());
            let state_res = match r.state_res {
                StateResolutionVersion::V1 => StateResAlgorithm::V1,
                StateResolutionVersion::V2(rules) if rules.consider_conflicted_state_subgraph => {
                    StateResAlgorithm::V2_1
                }
                _ => StateResAlgorithm::V2,
            };
            assert_eq!(v.state_res(), state_res, "{}", v.id());
            let red = &r.redaction;
            let redaction = match (
                red.keep_origin_membership_prev_state,
                red.keep_room_member_join_authorised_via_users_server,
                red.keep_room_join_rules_allow,
                red.keep_room_aliases_aliases,
            ) {
                (false, _, _, _) => RedactionAlgorithm::V11,
                (true, true, _, _) => RedactionAlgorithm::V9,
                (true, false, true, _) => RedactionAlgorithm::V8,
                (true, false, false, false) => RedactionAlgorithm::V6,
                (true, false, false, true) => RedactionAlgorithm::V1,
            };
            assert_eq!(v.redaction(), redaction, "{}", v.id());
        }
    }
}
