//! State resolution fixtures: ruma's JSON fixtures (v2 scenarios on room 10, MSC4297 problems A
//! and B on 11 vs 12), the classic v2 scenarios built on an in-memory DAG, and all of them rerun
//! with key-form user ids in account-key rooms.

mod common;

use std::collections::{BTreeSet, HashMap, HashSet};

use common::{key_user, v};
use myelin_room_version::auth::{auth_chain, auth_types_for_event};
use myelin_room_version::canonical::value_to_object;
use myelin_room_version::pdu::Pdu;
use myelin_room_version::state_res::{StateMap, conflicted_state_subgraph, resolve_state};
use myelin_room_version::version::{EventFormat, RoomVersion};
use serde_json::{Value, json};

const NAMES: [&str; 6] = ["alice", "bob", "charlie", "ella", "eve", "zara"];

/// Name-form ids, or key-form ids (same domain) when `key_form` is set.
fn user(name: &str, key_form: bool) -> String {
    if key_form {
        let seed = NAMES.iter().position(|n| *n == name).unwrap() as u8 + 100;
        key_user(seed, "example.com")
    } else {
        format!("@{name}:example.com")
    }
}

fn rewrite_users(text: &str, key_form: bool) -> String {
    let mut out = text.to_owned();
    for name in NAMES {
        out = out.replace(&format!("@{name}:example.com"), &user(name, key_form));
    }
    out
}

fn load_pdus(files: &[&str], version: &RoomVersion, key_form: bool) -> Vec<Pdu> {
    let dir = manifest_dir().join("tests/fixtures/state_res");
    let mut out = Vec::new();
    for file in files {
        let text = rewrite_users(&std::fs::read_to_string(dir.join(file)).unwrap(), key_form);
        let events: Vec<Value> = serde_json::from_str(&text).unwrap();
        for mut event in events {
            let id = event["event_id"].as_str().unwrap().to_owned();
            event.as_object_mut().unwrap().remove("event_id");
            out.push(Pdu::from_stored(&id, value_to_object(event).unwrap(), version).unwrap());
        }
    }
    out
}

fn state_key_of(pdu: &Pdu) -> (String, String) {
    (
        pdu.event_type().to_owned(),
        pdu.state_key().unwrap().to_owned(),
    )
}

/// Resolve all PDUs at once, each as its own fork (like ruma's "atomic" snapshot runs).
fn resolve_atomically(version: &RoomVersion, pdus: &[Pdu]) -> BTreeSet<String> {
    let by_id: HashMap<&str, &Pdu> = pdus.iter().map(|p| (p.event_id(), p)).collect();
    let fetch = |id: &str| by_id.get(id).copied();
    let maps: Vec<StateMap> = pdus
        .iter()
        .map(|p| HashMap::from([(state_key_of(p), p.event_id().to_owned())]))
        .collect();
    let chains: Vec<HashSet<String>> = pdus
        .iter()
        .map(|p| auth_chain([p.event_id()], fetch))
        .collect();
    let resolved = resolve_state(version, &maps, &chains, fetch, None).unwrap();
    resolved.values().cloned().collect()
}

fn ids(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn check_batches(files: &[&str], expected: &[&str]) {
    for (version, key_form) in [("10", false), ("10", true)] {
        let pdus = load_pdus(files, v(version), key_form);
        assert_eq!(
            resolve_atomically(v(version), &pdus),
            ids(expected),
            "{files:?} key_form={key_form}"
        );
    }
}

#[test]
fn fixture_ban_vs_power_levels() {
    check_batches(
        &[
            "bootstrap-public-chat.json",
            "ban-vs-power-levels-alice.json",
            "ban-vs-power-levels-bob.json",
        ],
        &[
            "$00-m-room-create",
            "$00-m-room-guest_access",
            "$00-m-room-history_visibility",
            "$00-m-room-join_rules",
            "$00-m-room-member-join-alice",
            "$00-m-room-member-ban-bob",
            "$01-m-room-power_levels",
        ],
    );
}

#[test]
fn fixture_topic_vs_power_levels() {
    check_batches(
        &[
            "bootstrap-public-chat.json",
            "topic-vs-power-levels-alice.json",
            "topic-vs-power-levels-bob.json",
        ],
        &[
            "$00-m-room-create",
            "$00-m-room-guest_access",
            "$00-m-room-history_visibility",
            "$00-m-room-join_rules",
            "$00-m-room-member-join-alice",
            "$00-m-room-member-join-bob",
            "$02-m-room-power_levels-alice",
            "$00-m-room-topic-alice",
        ],
    );
}

#[test]
fn fixture_topic_vs_ban() {
    check_batches(
        &[
            "bootstrap-public-chat.json",
            "topic-vs-ban-common.json",
            "topic-vs-ban-alice.json",
            "topic-vs-ban-bob.json",
        ],
        &[
            "$00-m-room-create",
            "$00-m-room-guest_access",
            "$00-m-room-history_visibility",
            "$00-m-room-join_rules",
            "$00-m-room-member-join-alice",
            "$00-m-room-member-ban-bob",
            "$01-m-room-power_levels",
            "$00-m-room-topic",
        ],
    );
}

#[test]
fn fixture_join_rules_vs_join() {
    check_batches(
        &[
            "bootstrap-public-chat.json",
            "join-rules-vs-join-common.json",
            "join-rules-vs-join-alice.json",
            "join-rules-vs-join-ella.json",
        ],
        &[
            "$00-m-room-create",
            "$00-m-room-guest_access",
            "$00-m-room-history_visibility",
            "$01-m-room-join_rules",
            "$00-m-room-member-join-alice",
            "$00-m-room-member-join-bob",
            "$02-m-room-power_levels",
        ],
    );
}

#[test]
fn fixture_power_levels_admin_vs_mod_and_concurrent_joins() {
    check_batches(
        &[
            "bootstrap-public-chat.json",
            "power-levels-admin-vs-mod-alice.json",
            "power-levels-admin-vs-mod-bob.json",
        ],
        &[
            "$00-m-room-create",
            "$00-m-room-guest_access",
            "$00-m-room-history_visibility",
            "$00-m-room-join_rules",
            "$00-m-room-member-join-alice",
            "$00-m-room-member-join-bob",
            "$02-m-room-power_levels-alice",
        ],
    );
    check_batches(
        &[
            "bootstrap-public-chat.json",
            "concurrent-joins-charlie.json",
            "concurrent-joins-ella.json",
        ],
        &[
            "$00-m-room-create",
            "$00-m-room-guest_access",
            "$00-m-room-history_visibility",
            "$00-m-room-join_rules",
            "$00-m-room-member-join-alice",
            "$00-m-room-member-join-bob",
            "$00-m-room-member-join-charlie",
            "$00-m-room-member-join-ella",
            "$01-m-room-power_levels",
        ],
    );
    check_batches(
        &[
            "bootstrap-private-chat.json",
            "origin-server-ts-tiebreak.json",
        ],
        &[
            "$00-m-room-create",
            "$00-m-room-guest_access",
            "$00-m-room-history_visibility",
            "$01-m-room-join_rules",
            "$00-m-room-member-join-alice",
            "$00-m-room-power_levels",
        ],
    );
}

/// Resolve two given forks (MSC4297 fixtures).
fn resolve_forks(
    version: &RoomVersion,
    dir: &str,
    pdus_file: &str,
    forks: [&str; 2],
    key_form: bool,
) -> BTreeSet<String> {
    let pdus = load_pdus(&[&format!("{dir}/{pdus_file}")], version, key_form);
    let by_id: HashMap<&str, &Pdu> = pdus.iter().map(|p| (p.event_id(), p)).collect();
    let fetch = |id: &str| by_id.get(id).copied();
    let base = manifest_dir().join("tests/fixtures/state_res").join(dir);
    let mut maps = Vec::new();
    let mut chains = Vec::new();
    for fork in forks {
        let list: Vec<String> =
            serde_json::from_str(&std::fs::read_to_string(base.join(fork)).unwrap()).unwrap();
        let map: StateMap = list
            .iter()
            .map(|id| (state_key_of(by_id[id.as_str()]), id.clone()))
            .collect();
        let mut chain = HashSet::new();
        for id in &list {
            chain.extend(auth_chain([id.as_str()], fetch));
        }
        maps.push(map);
        chains.push(chain);
    }
    resolve_state(version, &maps, &chains, fetch, None)
        .unwrap()
        .values()
        .cloned()
        .collect()
}

#[test]
fn msc4297_problem_a() {
    let forks = ["state-bob.json", "state-charlie.json"];
    // v2 (room 11) starts from the unconflicted state and loses the join rules.
    for key_form in [false, true] {
        assert_eq!(
            resolve_forks(
                v("11"),
                "MSC4297-problem-A",
                "pdus-v11.json",
                forks,
                key_form
            ),
            ids(&[
                "$00-m-room-create",
                "$01-m-room-member-leave-alice",
                "$01-m-room-member-change-display-name-bob",
                "$01-m-room-member-change-display-name-charlie",
                "$00-m-room-power_levels"
            ])
        );
    }
    // v2.1 starts from the empty state and keeps them; same with key-form ids in 4243 rooms
    // (MSC4243.md §6 case 12).
    for (version, key_form) in [("12", false), ("org.matrix.12.4243", true)] {
        assert_eq!(
            resolve_forks(
                v(version),
                "MSC4297-problem-A",
                "pdus-v12.json",
                forks,
                key_form
            ),
            ids(&[
                "$00-m-room-create",
                "$01-m-room-join_rules",
                "$01-m-room-member-leave-alice",
                "$01-m-room-member-change-display-name-bob",
                "$01-m-room-member-change-display-name-charlie",
                "$00-m-room-power_levels"
            ])
        );
    }
}

#[test]
fn msc4297_problem_b() {
    let forks = ["state-eve.json", "state-zara.json"];
    let common = [
        "$00-m-room-create",
        "$00-m-room-join_rules",
        "$00-m-room-member-join-alice",
        "$00-m-room-member-join-bob",
        "$00-m-room-member-join-charlie",
        "$01-m-room-member-change-display-name-eve",
        "$00-m-room-member-join-zara",
    ];
    for key_form in [false, true] {
        let mut expected = common.to_vec();
        expected.push("$00-m-room-power_levels");
        assert_eq!(
            resolve_forks(
                v("11"),
                "MSC4297-problem-B",
                "pdus-v11.json",
                forks,
                key_form
            ),
            ids(&expected)
        );
    }
    for (version, key_form) in [("12", false), ("org.matrix.12.4243", true)] {
        let mut expected = common.to_vec();
        expected.push("$02-m-room-power_levels");
        assert_eq!(
            resolve_forks(
                v(version),
                "MSC4297-problem-B",
                "pdus-v12.json",
                forks,
                key_form
            ),
            ids(&expected)
        );
    }
}

#[test]
fn conflicted_subgraph_is_paths_between_conflicted_events() {
    // A chain c1 <- x <- c2 (auth edges point back) plus an unrelated y <- c1.
    let version = v("12");
    let mk = |id: &str, auth: &[&str]| {
        Pdu::from_stored(
            id,
            value_to_object(
                json!({"type": "t", "state_key": "", "sender": "@a:x", "room_id": "!r",
                                   "content": {}, "origin_server_ts": 1, "prev_events": [],
                                   "auth_events": auth}),
            )
            .unwrap(),
            version,
        )
        .unwrap()
    };
    let events = [
        mk("$y", &[]),
        mk("$c1", &["$y"]),
        mk("$x", &["$c1"]),
        mk("$c2", &["$x"]),
        mk("$z", &["$c2"]),
    ];
    let by_id: HashMap<&str, &Pdu> = events.iter().map(|p| (p.event_id(), p)).collect();
    let sub = conflicted_state_subgraph(["$c1", "$c2"], |id| by_id.get(id).copied());
    assert_eq!(
        sub,
        HashSet::from(["$c1".to_owned(), "$x".to_owned(), "$c2".to_owned()])
    );
}

// ---- The classic v2 scenarios, on an in-memory DAG ----

struct Scenario {
    version: &'static RoomVersion,
    key_form: bool,
    events: Vec<Pdu>,
    by_id: HashMap<String, usize>,
    state_after: HashMap<String, StateMap>,
    ts: u64,
}

impl Scenario {
    fn new(version: &'static RoomVersion, key_form: bool) -> Self {
        let mut s = Scenario {
            version,
            key_form,
            events: Vec::new(),
            by_id: HashMap::new(),
            state_after: HashMap::new(),
            ts: 0,
        };
        let alice = s.u("alice");
        let mut create = json!({"room_version": version.id()});
        if version.id() == "10" {
            create["creator"] = json!(alice);
        }
        s.add("CREATE", "alice", "m.room.create", Some(""), create, &[]);
        s.add(
            "IMA",
            "alice",
            "m.room.member",
            Some(&alice),
            json!({"membership": "join"}),
            &["CREATE"],
        );
        let pl = if version.event_format() == EventFormat::V12 {
            json!({})
        } else {
            json!({"users": {alice.clone(): 100}})
        };
        s.add(
            "IPOWER",
            "alice",
            "m.room.power_levels",
            Some(""),
            pl,
            &["IMA"],
        );
        s.add(
            "IJR",
            "alice",
            "m.room.join_rules",
            Some(""),
            json!({"join_rule": "public"}),
            &["IPOWER"],
        );
        for (id, who, prev) in [
            ("IMB", "bob", "IJR"),
            ("IMC", "charlie", "IMB"),
            ("IMZ", "zara", "IMC"),
        ] {
            let uid = s.u(who);
            s.add(
                id,
                who,
                "m.room.member",
                Some(&uid),
                json!({"membership": "join"}),
                &[prev],
            );
        }
        s.add("START", "zara", "m.room.message", None, json!({}), &["IMZ"]);
        s
    }

    fn u(&self, name: &str) -> String {
        user(name, self.key_form)
    }

    fn room_id(&self) -> String {
        if self.version.event_format() == EventFormat::V12 {
            "!CREATE".into()
        } else {
            "!room:example.com".into()
        }
    }

    fn fetch(&self, id: &str) -> Option<&Pdu> {
        self.by_id.get(id).map(|i| &self.events[*i])
    }

    /// The state before an event with these prev events: the single parent's state, or the
    /// resolution of the parents' states.
    fn state_before(&self, prev: &[&str]) -> StateMap {
        let maps: Vec<StateMap> = prev
            .iter()
            .map(|p| self.state_after[&format!("${p}")].clone())
            .collect();
        if maps.len() <= 1 {
            return maps.into_iter().next().unwrap_or_default();
        }
        let chains: Vec<HashSet<String>> = maps
            .iter()
            .map(|m| auth_chain(m.values().map(String::as_str), |id| self.fetch(id)))
            .collect();
        resolve_state(self.version, &maps, &chains, |id| self.fetch(id), None).unwrap()
    }

    fn add(
        &mut self,
        id: &str,
        sender: &str,
        kind: &str,
        state_key: Option<&str>,
        content: Value,
        prev: &[&str],
    ) {
        let sender = self.u(sender);
        let before = self.state_before(prev);
        let raw = serde_json::value::to_raw_value(&content).unwrap();
        let auth: Vec<String> = auth_types_for_event(self.version, kind, &sender, state_key, &raw)
            .unwrap()
            .iter()
            .filter_map(|k| before.get(k).cloned())
            .collect();
        self.ts += 1;
        let mut event = json!({"type": kind, "sender": sender, "content": content, "origin_server_ts": self.ts,
                               "prev_events": prev.iter().map(|p| format!("${p}")).collect::<Vec<_>>(),
                               "auth_events": auth, "depth": self.ts});
        if kind != "m.room.create" || self.version.event_format() != EventFormat::V12 {
            event["room_id"] = json!(self.room_id());
        }
        if let Some(k) = state_key {
            event["state_key"] = json!(k);
        }
        let event_id = format!("${id}");
        let pdu =
            Pdu::from_stored(&event_id, value_to_object(event).unwrap(), self.version).unwrap();
        let mut after = before;
        if let Some(k) = state_key {
            after.insert((kind.to_owned(), k.to_owned()), event_id.clone());
        }
        self.state_after.insert(event_id.clone(), after);
        self.by_id.insert(event_id, self.events.len());
        self.events.push(pdu);
    }

    /// Resolve at END (whose prev events are `ends`) and check each expected event holds its slot.
    fn check(&self, ends: &[&str], expected: &[&str]) {
        let state = self.state_before(ends);
        for id in expected {
            let pdu = self.fetch(&format!("${id}")).unwrap();
            let slot = state_key_of(pdu);
            assert_eq!(
                state.get(&slot),
                Some(&format!("${id}")),
                "{} key_form={}: slot {slot:?}",
                self.version.id(),
                self.key_form
            );
        }
    }

    fn pl(&self, levels: &[(&str, i64)]) -> Value {
        let users: serde_json::Map<String, Value> = levels
            .iter()
            .filter(|(n, _)| !(self.version.event_format() == EventFormat::V12 && *n == "alice"))
            .map(|(n, l)| (self.u(n), json!(l)))
            .collect();
        json!({"users": users})
    }
}

fn every_setting(test: impl Fn(&mut Scenario)) {
    for (version, key_form) in [
        ("10", false),
        ("11", false),
        ("12", false),
        ("10", true),
        ("org.matrix.12.4243", true),
    ] {
        let mut s = Scenario::new(v(version), key_form);
        test(&mut s);
    }
}

#[test]
fn classic_ban_vs_power_level() {
    every_setting(|s| {
        let pa = s.pl(&[("alice", 100), ("bob", 50)]);
        s.add(
            "PA",
            "alice",
            "m.room.power_levels",
            Some(""),
            pa.clone(),
            &["START"],
        );
        let alice = s.u("alice");
        let bob = s.u("bob");
        s.add(
            "MA",
            "alice",
            "m.room.member",
            Some(&alice),
            json!({"membership": "join"}),
            &["PA"],
        );
        s.add(
            "MB",
            "alice",
            "m.room.member",
            Some(&bob),
            json!({"membership": "ban"}),
            &["MA"],
        );
        s.add("PB", "bob", "m.room.power_levels", Some(""), pa, &["PA"]);
        s.check(&["MB", "PB"], &["PA", "MA", "MB"]);
    });
}

#[test]
fn classic_topic_basic() {
    every_setting(|s| {
        s.add(
            "T1",
            "alice",
            "m.room.topic",
            Some(""),
            json!({"topic": "1"}),
            &["START"],
        );
        let pa1 = s.pl(&[("alice", 100), ("bob", 50)]);
        s.add(
            "PA1",
            "alice",
            "m.room.power_levels",
            Some(""),
            pa1.clone(),
            &["T1"],
        );
        s.add(
            "T2",
            "alice",
            "m.room.topic",
            Some(""),
            json!({"topic": "2"}),
            &["PA1"],
        );
        let pa2 = s.pl(&[("alice", 100), ("bob", 0)]);
        s.add(
            "PA2",
            "alice",
            "m.room.power_levels",
            Some(""),
            pa2,
            &["T2"],
        );
        s.add("PB", "bob", "m.room.power_levels", Some(""), pa1, &["PA1"]);
        s.add(
            "T3",
            "bob",
            "m.room.topic",
            Some(""),
            json!({"topic": "3"}),
            &["PB"],
        );
        s.check(&["PA2", "T3"], &["PA2", "T2"]);
    });
}

#[test]
fn classic_topic_reset() {
    every_setting(|s| {
        s.add(
            "T1",
            "alice",
            "m.room.topic",
            Some(""),
            json!({"topic": "1"}),
            &["START"],
        );
        let pa = s.pl(&[("alice", 100), ("bob", 50)]);
        s.add("PA", "alice", "m.room.power_levels", Some(""), pa, &["T1"]);
        s.add(
            "T2",
            "bob",
            "m.room.topic",
            Some(""),
            json!({"topic": "2"}),
            &["PA"],
        );
        let bob = s.u("bob");
        s.add(
            "MB",
            "alice",
            "m.room.member",
            Some(&bob),
            json!({"membership": "ban"}),
            &["T2"],
        );
        s.check(&["MB", "T1"], &["T1", "MB", "PA"]);
    });
}

#[test]
fn classic_join_rule_evasion() {
    every_setting(|s| {
        s.add(
            "JR",
            "alice",
            "m.room.join_rules",
            Some(""),
            json!({"join_rule": "invite"}),
            &["START"],
        );
        let ella = s.u("ella");
        s.add(
            "ME",
            "ella",
            "m.room.member",
            Some(&ella),
            json!({"membership": "join"}),
            &["START"],
        );
        s.check(&["JR", "ME"], &["JR"]);
        let state = s.state_before(&["JR", "ME"]);
        assert!(
            !state.contains_key(&("m.room.member".to_owned(), ella)),
            "ella's join must not survive"
        );
    });
}

#[test]
fn classic_offtopic_power_level() {
    every_setting(|s| {
        let pa = s.pl(&[("alice", 100), ("bob", 50)]);
        s.add(
            "PA",
            "alice",
            "m.room.power_levels",
            Some(""),
            pa,
            &["START"],
        );
        let pb = s.pl(&[("alice", 100), ("bob", 50), ("charlie", 50)]);
        s.add("PB", "bob", "m.room.power_levels", Some(""), pb, &["PA"]);
        let pc = s.pl(&[("alice", 100), ("bob", 50), ("charlie", 0)]);
        s.add(
            "PC",
            "charlie",
            "m.room.power_levels",
            Some(""),
            pc,
            &["PB"],
        );
        s.check(&["PC", "PA"], &["PC"]);
    });
}

#[test]
fn classic_topic_setting() {
    every_setting(|s| {
        s.add(
            "T1",
            "alice",
            "m.room.topic",
            Some(""),
            json!({"topic": "1"}),
            &["START"],
        );
        let pa1 = s.pl(&[("alice", 100), ("bob", 50)]);
        s.add(
            "PA1",
            "alice",
            "m.room.power_levels",
            Some(""),
            pa1.clone(),
            &["T1"],
        );
        s.add(
            "T2",
            "alice",
            "m.room.topic",
            Some(""),
            json!({"topic": "2"}),
            &["PA1"],
        );
        let pa2 = s.pl(&[("alice", 100), ("bob", 0)]);
        s.add(
            "PA2",
            "alice",
            "m.room.power_levels",
            Some(""),
            pa2,
            &["T2"],
        );
        s.add("PB", "bob", "m.room.power_levels", Some(""), pa1, &["PA1"]);
        s.add(
            "T3",
            "bob",
            "m.room.topic",
            Some(""),
            json!({"topic": "3"}),
            &["PB"],
        );
        s.add(
            "MZ1",
            "zara",
            "m.room.message",
            None,
            json!({}),
            &["PA2", "T3"],
        );
        s.add(
            "T4",
            "alice",
            "m.room.topic",
            Some(""),
            json!({"topic": "4"}),
            &["MZ1"],
        );
        s.check(&["T4"], &["T4", "PA2"]);
    });
}

mod subgraph_properties {
    use std::collections::{HashMap, HashSet};

    use super::common::v;
    use myelin_room_version::canonical::value_to_object;
    use myelin_room_version::pdu::Pdu;
    use myelin_room_version::state_res::conflicted_state_subgraph;
    use proptest::prelude::*;
    use serde_json::json;

    proptest! {
        /// The walk agrees with the definition, computed by brute force on random DAGs.
        #[test]
        fn matches_brute_force(
            n in 2usize..40,
            raw_edges in proptest::collection::vec((0usize..40, 0usize..40), 0..120),
            raw_conflicted in proptest::collection::vec(0usize..40, 1..8),
        ) {
            // Edges only from higher to lower index keep the graph acyclic.
            let mut auth: Vec<Vec<usize>> = vec![Vec::new(); n];
            for (a, b) in raw_edges {
                let (a, b) = (a % n, b % n);
                if a > b && !auth[a].contains(&b) {
                    auth[a].push(b);
                }
            }
            let id = |i: usize| format!("$e{i}");
            let events: Vec<Pdu> = (0..n)
                .map(|i| {
                    let json = json!({"type": "t", "state_key": "", "sender": "@a:x", "room_id": "!r",
                        "content": {}, "origin_server_ts": 1, "prev_events": [],
                        "auth_events": auth[i].iter().map(|j| id(*j)).collect::<Vec<_>>()});
                    Pdu::from_stored(&id(i), value_to_object(json).unwrap(), v("12")).unwrap()
                })
                .collect();
            let by_id: HashMap<&str, &Pdu> = events.iter().map(|p| (p.event_id(), p)).collect();
            let conflicted: HashSet<usize> = raw_conflicted.into_iter().map(|c| c % n).collect();
            // reach[i][j]: j reachable from i in one or more steps.
            let mut reach = vec![vec![false; n]; n];
            for i in 0..n {
                let mut stack = auth[i].clone();
                while let Some(j) = stack.pop() {
                    if !reach[i][j] {
                        reach[i][j] = true;
                        stack.extend(auth[j].iter().copied());
                    }
                }
            }
            let expected: HashSet<String> = (0..n)
                .filter(|&x| {
                    conflicted.contains(&x)
                        || (conflicted.iter().any(|&c| reach[c][x])
                            && conflicted.iter().any(|&c| reach[x][c]))
                })
                .map(id)
                .collect();
            let ids: Vec<String> = conflicted.iter().map(|c| id(*c)).collect();
            let got = conflicted_state_subgraph(ids.iter().map(String::as_str), |e| by_id.get(e).copied());
            prop_assert_eq!(got, expected);
        }
    }
}

/// The crate's directory, read when the test runs (cargo sets it): a build directory shared by
/// several checkouts (CI's fresh clones) can hand this test a binary compiled in another one,
/// whose compile-time path may be gone.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}
