//! The previous implementation, ruma's `state_res::resolve` behind the same interface, kept for
//! the differential tests below: on random forks both must resolve to the same state.

use std::collections::HashSet;

use ruma::OwnedEventId;
use ruma::events::StateEventType;
use ruma::state_res::utils::event_id_set::EventIdSet;

use super::{StateMap, StateResError, conflicted_state_subgraph};
use crate::pdu::Pdu;
use crate::version::RoomVersion;

/// ruma's resolution of the same input.
pub(crate) fn resolve_with_ruma<'a>(
    version: &RoomVersion,
    state_maps: &[StateMap],
    auth_chains: &[HashSet<String>],
    fetch_event: impl Fn(&str) -> Option<&'a Pdu>,
) -> Result<StateMap, StateResError> {
    let rules = version.rules();
    let state_res_rules = rules
        .state_res
        .v2_rules()
        .ok_or_else(|| StateResError("room version has no v2 state resolution".into()))?;
    let to_id = |s: &str| {
        OwnedEventId::try_from(s).map_err(|e| StateResError(format!("bad event id {s}: {e}")))
    };
    let mut ruma_maps = Vec::with_capacity(state_maps.len());
    for map in state_maps {
        let mut out = ruma::state_res::StateMap::with_capacity(map.len());
        for ((t, k), id) in map {
            out.insert((StateEventType::from(t.as_str()), k.clone()), to_id(id)?);
        }
        ruma_maps.push(out);
    }
    let mut ruma_chains = Vec::with_capacity(auth_chains.len());
    for chain in auth_chains {
        let mut set = EventIdSet::with_capacity(chain.len());
        for id in chain {
            set.insert(to_id(id)?);
        }
        ruma_chains.push(set);
    }
    let resolved = ruma::state_res::resolve(
        &rules.authorization,
        state_res_rules,
        &ruma_maps,
        ruma_chains,
        |id: &ruma::EventId| fetch_event(id.as_str()),
        |conflicted: &ruma::state_res::StateMap<Vec<OwnedEventId>>| {
            let ids = conflicted.values().flatten().map(|id| id.as_str());
            let subgraph = conflicted_state_subgraph(ids, &fetch_event);
            let mut set = EventIdSet::new();
            for id in subgraph {
                set.insert(OwnedEventId::try_from(id.as_str()).ok()?);
            }
            Some(set)
        },
    )
    .map_err(|e| StateResError(e.to_string()))?;
    Ok(resolved
        .into_iter()
        .map(|((t, k), id)| ((t.to_string(), k), id.to_string()))
        .collect())
}

/// Random rooms forked at random: both implementations must agree on every resolution.
#[cfg(test)]
mod differential {
    use std::collections::{HashMap, HashSet};

    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::resolve_with_ruma;
    use crate::auth::{auth_chain, check_against_state, select_auth_events};
    use crate::canonical::value_to_object;
    use crate::pdu::Pdu;
    use crate::state_res::{StateMap, resolve_state};
    use crate::version::{EventFormat, RoomVersion};

    /// One random state event: (kind, sender, target, parameter, fork, timestamp step, force).
    type Op = (u8, u8, u8, u8, u8, u8, bool);

    struct Room {
        version: &'static RoomVersion,
        events: Vec<Pdu>,
        by_id: HashMap<String, usize>,
        hidden: HashSet<String>,
    }

    impl Room {
        fn fetch(&self, id: &str) -> Option<&Pdu> {
            if self.hidden.contains(id) {
                return None;
            }
            self.by_id.get(id).map(|&i| &self.events[i])
        }

        fn user(i: u8) -> String {
            // Two servers, so that server names differ between senders.
            format!("@u{i}:s{}.example", i % 2)
        }

        fn room_id(&self) -> &'static str {
            if self.version.event_format() == EventFormat::V12 {
                "!create"
            } else {
                "!room:s0.example"
            }
        }

        /// Add an event built against `state`; apply it to `state` if it passes the auth rules
        /// against that state (or if `force`).
        #[allow(clippy::too_many_arguments)]
        fn add(
            &mut self,
            state: &mut StateMap,
            sender: &str,
            kind: &str,
            state_key: &str,
            content: Value,
            ts: u64,
            force: bool,
        ) {
            let raw = serde_json::value::to_raw_value(&content).unwrap();
            let auth = select_auth_events(self.version, kind, sender, Some(state_key), &raw, state)
                .unwrap_or_default();
            let id = format!("$e{}", self.events.len());
            // Some events have the create event as their only prev event (a special case of
            // the join rules).
            let prev: Vec<&str> = if ts.is_multiple_of(4) {
                vec!["$create"]
            } else {
                vec![]
            };
            let mut event = json!({"type": kind, "sender": sender, "state_key": state_key,
                "content": content, "origin_server_ts": ts, "depth": self.events.len(),
                "prev_events": prev, "auth_events": auth});
            if kind != "m.room.create" || self.version.event_format() != EventFormat::V12 {
                event["room_id"] = json!(self.room_id());
            }
            let id = if kind == "m.room.create" {
                "$create".to_owned()
            } else {
                id
            };
            let pdu = Pdu::from_stored(&id, value_to_object(event).unwrap(), self.version).unwrap();
            let allowed = check_against_state(self.version, &pdu, |t, k| {
                state
                    .get(&(t.to_owned(), k.to_owned()))
                    .and_then(|id| self.by_id.get(id))
                    .map(|&i| &self.events[i])
            })
            .is_ok();
            if allowed || force || kind == "m.room.create" {
                state.insert((kind.to_owned(), state_key.to_owned()), id.clone());
            }
            self.by_id.insert(id, self.events.len());
            self.events.push(pdu);
        }
    }

    fn build(version: &'static RoomVersion, forks: usize, ops: &[Op]) -> (Room, Vec<StateMap>) {
        let mut room = Room {
            version,
            events: Vec::new(),
            by_id: HashMap::new(),
            hidden: HashSet::new(),
        };
        let v12 = version.event_format() == EventFormat::V12;
        let creator = Room::user(0);
        let mut base = StateMap::new();
        let mut create = json!({"room_version": version.id()});
        if version.id() == "10" {
            create["creator"] = json!(creator);
        }
        room.add(&mut base, &creator, "m.room.create", "", create, 1, false);
        let join = json!({"membership": "join"});
        room.add(
            &mut base,
            &creator,
            "m.room.member",
            &creator,
            join.clone(),
            2,
            false,
        );
        let mut users = serde_json::Map::new();
        if !v12 {
            users.insert(creator.clone(), json!(100));
        }
        users.insert(Room::user(1), json!(50));
        room.add(
            &mut base,
            &creator,
            "m.room.power_levels",
            "",
            json!({"users": users, "kick": 50, "ban": 50, "invite": 0}),
            3,
            false,
        );
        room.add(
            &mut base,
            &creator,
            "m.room.join_rules",
            "",
            json!({"join_rule": "public"}),
            4,
            false,
        );
        for i in 1..=3 {
            let u = Room::user(i);
            room.add(&mut base, &u, "m.room.member", &u, join.clone(), 5, false);
        }
        let mut states = vec![base; forks];
        let mut ts = 10;
        for &(kind, sender, target, param, fork, step, force) in ops {
            ts += u64::from(step % 3);
            let sender = Room::user(sender % 6);
            let target = Room::user(target % 6);
            let state = &mut states[usize::from(fork) % forks];
            let level = [0, 25, 50, 100][usize::from(param % 4)];
            match kind % 8 {
                0 => {
                    let mut users = serde_json::Map::new();
                    if !v12 {
                        users.insert(creator.clone(), json!(100));
                    }
                    users.insert(target.clone(), json!(level));
                    let state_default = [0, 50][usize::from(param % 2)];
                    let content = json!({"users": users, "kick": 50, "ban": 50, "invite": 0,
                        "state_default": state_default});
                    room.add(
                        state,
                        &sender,
                        "m.room.power_levels",
                        "",
                        content,
                        ts,
                        force,
                    );
                }
                1 => {
                    let rule = ["public", "invite", "knock"][usize::from(param % 3)];
                    let content = json!({"join_rule": rule});
                    room.add(state, &sender, "m.room.join_rules", "", content, ts, force);
                }
                2 => {
                    let content = json!({"membership": "join", "displayname": format!("{param}")});
                    room.add(state, &target, "m.room.member", &target, content, ts, force);
                }
                3 => {
                    let content = json!({"membership": "leave"});
                    room.add(state, &target, "m.room.member", &target, content, ts, force);
                }
                4..=6 => {
                    let membership = ["leave", "ban", "invite"][usize::from(kind % 8 - 4)];
                    let content = json!({"membership": membership});
                    room.add(state, &sender, "m.room.member", &target, content, ts, force);
                }
                _ => {
                    let content = json!({"topic": format!("t{param}")});
                    room.add(state, &sender, "m.room.topic", "", content, ts, force);
                }
            }
        }
        (room, states)
    }

    /// What to do to one event after the room is built.
    #[derive(Debug, Clone, Copy)]
    enum Spoil {
        /// Hide it from `fetch_event`.
        Hide(usize),
        /// Mark it rejected (as if it had failed the checks on receipt).
        Reject(usize),
    }

    fn compare(version_id: &str, forks: usize, ops: &[Op], spoil: Option<Spoil>) {
        let version = RoomVersion::get(version_id).unwrap();
        let (mut room, states) = build(version, forks, ops);
        match spoil {
            Some(Spoil::Hide(h)) => {
                let id = room.events[h % room.events.len()].event_id().to_owned();
                room.hidden.insert(id);
            }
            Some(Spoil::Reject(r)) => {
                let len = room.events.len();
                room.events[r % len].set_rejected(true);
            }
            None => {}
        }
        let chains: Vec<HashSet<String>> = states
            .iter()
            .map(|s| auth_chain(s.values().map(String::as_str), |id| room.fetch(id)))
            .collect();
        let ours = resolve_state(version, &states, &chains, |id| room.fetch(id), None);
        let theirs = resolve_with_ruma(version, &states, &chains, |id| room.fetch(id));
        match (&ours, &theirs) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "room {version_id}, forks {states:#?}"),
            (Err(_), Err(_)) => {}
            _ => panic!("room {version_id}: ours {ours:?}, ruma {theirs:?}"),
        }
    }

    #[test]
    fn odd_inputs_resolve_as_ruma_does_without_panicking() {
        let version = RoomVersion::get("12").unwrap();
        let (mut room, states) = build(version, 2, &[(2, 4, 4, 0, 0, 1, false)]);
        // A message event (no state key) in one fork's state.
        let message = json!({"type": "m.room.message", "sender": Room::user(1),
            "content": {"body": "hi"}, "origin_server_ts": 50, "depth": 50,
            "prev_events": [], "auth_events": [], "room_id": "!create"});
        let message =
            Pdu::from_stored("$message", value_to_object(message).unwrap(), version).unwrap();
        room.by_id.insert("$message".into(), room.events.len());
        room.events.push(message);
        let mut with_message = states.clone();
        with_message[0].insert(("m.room.message".into(), String::new()), "$message".into());
        // Ids nobody knows, conflicted and unconflicted, and ids that are not event ids.
        let mut unknown = states.clone();
        for (i, fork) in unknown.iter_mut().enumerate() {
            fork.insert(
                ("m.room.topic".into(), String::new()),
                format!("$nobody{i}"),
            );
            fork.insert(("m.room.name".into(), String::new()), "$nobody".into());
            fork.insert(("x".into(), String::new()), format!("not an id {i}"));
        }
        let cases: Vec<Vec<StateMap>> = vec![
            vec![],
            vec![states[0].clone()],
            states.clone(),
            with_message,
            unknown,
        ];
        for forks in cases {
            let chains: Vec<HashSet<String>> = forks
                .iter()
                .map(|s| auth_chain(s.values().map(String::as_str), |id| room.fetch(id)))
                .collect();
            let ours = resolve_state(version, &forks, &chains, |id| room.fetch(id), None);
            let theirs = resolve_with_ruma(version, &forks, &chains, |id| room.fetch(id));
            match (&ours, &theirs) {
                (Ok(a), Ok(b)) => assert_eq!(a, b),
                (Err(_), Err(_)) => {}
                // ruma refuses ids that are not event ids before resolving; ours treats them
                // as events it cannot fetch: the conflicted ones drop out, the unconflicted
                // unknown id stays.
                (Ok(a), Err(e)) if e.0.contains("bad event id") => {
                    assert!(!a.contains_key(&("x".to_owned(), String::new())));
                    assert_eq!(
                        a.get(&("m.room.name".to_owned(), String::new())),
                        Some(&"$nobody".to_owned())
                    );
                }
                _ => panic!("ours {ours:?}, ruma {theirs:?}"),
            }
        }
    }

    /// The allocation-free auth-events selection agrees with ruma's wherever it answers.
    fn compare_auth_types(version_id: &str, ops: &[Op]) {
        let version = RoomVersion::get(version_id).unwrap();
        let (room, _) = build(version, 2, ops);
        let rules = &version.rules().authorization;
        for pdu in &room.events {
            let Some(state_key) = pdu.state_key() else {
                continue;
            };
            let Some((keys, len)) = crate::state_res::simple_auth_types(pdu, state_key, rules)
            else {
                continue;
            };
            let ours: HashSet<(String, String)> = keys[..len]
                .iter()
                .map(|(t, k)| ((*t).to_owned(), (*k).to_owned()))
                .collect();
            let theirs: HashSet<(String, String)> = ruma::state_res::auth_types_for_event(
                pdu.kind(),
                pdu.typed_sender(),
                Some(state_key),
                pdu.content(),
                rules,
            )
            .unwrap()
            .into_iter()
            .map(|(t, k)| (t.to_string(), k))
            .collect();
            assert_eq!(ours, theirs, "{}", pdu.event_id());
            assert_eq!(ours.len(), len);
        }
    }

    #[test]
    fn member_content_scan_reads_plain_contents() {
        use crate::state_res::{MemberContent, scan_member_content};
        let read = |text: &str, membership, special| {
            assert_eq!(
                scan_member_content(text),
                Some(MemberContent {
                    membership,
                    special
                }),
                "{text}"
            );
        };
        read(
            r#"{"displayname":"a","membership":"join"}"#,
            Some("join"),
            false,
        );
        read(r#"{}"#, None, false);
        read(
            r#"{"a":{"membership":"ban"},"b":[1,"}",{"c":null}],"membership":"leave"}"#,
            Some("leave"),
            false,
        );
        read(
            r#"{"join_authorised_via_users_server":"@a:b","membership":"join"}"#,
            Some("join"),
            true,
        );
        read(
            r#"{"displayname":"q\"}","membership":"ban"}"#,
            Some("ban"),
            false,
        );
        for refused in [
            r#"{"membership":5}"#,
            r#"{"membership":"jo\u0069n"}"#,
            r#"{"membership":"join""#,
            r#"{"membership":"join"}x"#,
            r#"{ "membership":"join"}"#,
            r#"[]"#,
            "",
        ] {
            assert_eq!(scan_member_content(refused), None, "{refused}");
        }
    }

    #[test]
    fn simple_auth_types_defers_to_ruma_for_the_rest() {
        let version = RoomVersion::get("12").unwrap();
        let rules = &version.rules().authorization;
        for content in [
            json!({"membership": "invite", "third_party_invite": {"signed": {"token": "t"}}}),
            json!({"membership": "join", "join_authorised_via_users_server": "@a:b.example"}),
            json!({"membership": 5}),
            json!({}),
        ] {
            let event = json!({"type": "m.room.member", "sender": "@a:b.example",
                "state_key": "@a:b.example", "content": content, "origin_server_ts": 1,
                "depth": 1, "prev_events": [], "auth_events": [], "room_id": "!create"});
            let pdu = Pdu::from_stored("$x", value_to_object(event).unwrap(), version).unwrap();
            assert!(crate::state_res::simple_auth_types(&pdu, "@a:b.example", rules).is_none());
        }
    }

    /// JSON values with the shapes member contents have, and some they should not.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-1000i64..1000).prop_map(|n| json!(n)),
            prop::sample::select(vec![
                "join", "leave", "ban", "invite", "knock", "", "a\"b", "c\\d", "é✓", "x}y", "[",
                "\u{1}"
            ])
            .prop_map(|s| json!(s)),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(key(), inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn key() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "membership",
            "third_party_invite",
            "join_authorised_via_users_server",
            "displayname",
            "avatar_url",
            "a\"b",
            "z",
            "membership\\",
            "é",
        ])
        .prop_map(str::to_owned)
    }

    fn op() -> impl Strategy<Value = Op> {
        (
            any::<u8>(),
            any::<u8>(),
            any::<u8>(),
            any::<u8>(),
            any::<u8>(),
            any::<u8>(),
            proptest::bool::weighted(0.15),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn agrees_with_ruma(
            version in prop::sample::select(vec!["10", "11", "12"]),
            forks in 2usize..4,
            ops in prop::collection::vec(op(), 1..40),
        ) {
            compare(version, forks, &ops, None);
        }

        #[test]
        fn member_content_scan_agrees_with_the_parsed_object(
            content in prop::collection::btree_map(key(), json_value(), 0..6),
        ) {
            let object = value_to_object(Value::Object(content.into_iter().collect())).unwrap();
            let text = crate::canonical::to_canonical_string(&object);
            let membership = match object.get("membership") {
                None => Some(None),
                Some(ruma::CanonicalJsonValue::String(s)) => Some(Some(s.as_str())),
                Some(_) => None,
            };
            let special = object.contains_key("third_party_invite")
                || object.contains_key("join_authorised_via_users_server");
            match crate::state_res::scan_member_content(&text) {
                Some(scanned) => {
                    prop_assert_eq!(Some(scanned.membership), membership);
                    prop_assert_eq!(scanned.special, special);
                }
                // Only escapes (in keys or in `membership`) or a non-string `membership` send
                // callers to the parsed object.
                None => prop_assert!(
                    text.contains('\\') || membership.is_none(),
                    "{}", text
                ),
            }
        }

        #[test]
        fn auth_types_agree_with_ruma(
            version in prop::sample::select(vec!["10", "11", "12"]),
            ops in prop::collection::vec(op(), 1..40),
        ) {
            compare_auth_types(version, &ops);
        }

        #[test]
        fn agrees_with_ruma_when_an_event_is_missing(
            version in prop::sample::select(vec!["10", "11", "12"]),
            forks in 2usize..4,
            ops in prop::collection::vec(op(), 1..30),
            hide in any::<usize>(),
        ) {
            compare(version, forks, &ops, Some(Spoil::Hide(hide)));
        }

        #[test]
        fn agrees_with_ruma_when_an_event_is_rejected(
            version in prop::sample::select(vec!["10", "11", "12"]),
            forks in 2usize..4,
            ops in prop::collection::vec(op(), 1..30),
            reject in any::<usize>(),
        ) {
            compare(version, forks, &ops, Some(Spoil::Reject(reject)));
        }
    }
}
