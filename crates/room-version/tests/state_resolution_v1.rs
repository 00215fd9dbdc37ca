//! State resolution v1 (room version 1) against Synapse's v1 resolver, the one rooms of
//! version 1 actually run on. `fixtures/synapse_state_res_v1.json` holds forked rooms (signed
//! room-v1 events), the states of their forks and Synapse's resolution, captured by
//! `fixtures/capture_synapse_state_res_v1.py`; this test needs no Synapse.

use std::collections::HashMap;

use myelin_room_version::canonical::value_to_object;
use myelin_room_version::pdu::Pdu;
use myelin_room_version::state_res::{StateMap, resolve_state};
use myelin_room_version::version::{RoomVersion, StateResAlgorithm};
use serde_json::Value;

fn state(list: &Value) -> StateMap {
    list.as_array()
        .expect("state")
        .iter()
        .map(|e| {
            (
                (
                    e[0].as_str().unwrap().to_owned(),
                    e[1].as_str().unwrap().to_owned(),
                ),
                e[2].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn resolution_matches_synapse_v1_resolver() {
    let fixture: Value =
        serde_json::from_str(include_str!("fixtures/synapse_state_res_v1.json")).unwrap();
    let version = RoomVersion::get("1").unwrap();
    assert_eq!(version.state_res(), StateResAlgorithm::V1);
    let scenarios = fixture["scenarios"].as_array().unwrap();
    assert!(scenarios.len() >= 6);
    let mut differing_keys = 0;
    for scenario in scenarios {
        let name = scenario["name"].as_str().unwrap();
        let events: HashMap<String, Pdu> = scenario["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let pdu = Pdu::from_canonical(value_to_object(e.clone()).unwrap(), version)
                    .unwrap_or_else(|err| panic!("{name}: {err}"));
                (pdu.event_id().to_owned(), pdu)
            })
            .collect();
        let states: Vec<StateMap> = scenario["states"]
            .as_array()
            .unwrap()
            .iter()
            .map(state)
            .collect();
        let expected = state(&scenario["resolved"]);
        let ours = resolve_state(version, &states, &[], |id| events.get(id), None)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(ours, expected, "{name}");
        // The answer is not simply one fork's state.
        differing_keys += expected
            .iter()
            .filter(|(k, id)| states.iter().any(|s| s.get(*k) != Some(*id)))
            .count();
    }
    assert!(differing_keys >= 6, "{differing_keys}");
}

/// The quirk that most separates v1 from v2, checked on our own answer: a key missing from one
/// fork's state is not a conflict, so dave's join stands although the same resolution made the
/// room invite-only.
#[test]
fn a_key_missing_from_one_fork_is_not_a_conflict() {
    let fixture: Value =
        serde_json::from_str(include_str!("fixtures/synapse_state_res_v1.json")).unwrap();
    let version = RoomVersion::get("1").unwrap();
    let s = fixture["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "join_rules_and_missing_keys")
        .unwrap();
    let events: HashMap<String, Pdu> = s["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let pdu = Pdu::from_canonical(value_to_object(e.clone()).unwrap(), version).unwrap();
            (pdu.event_id().to_owned(), pdu)
        })
        .collect();
    let states: Vec<StateMap> = s["states"].as_array().unwrap().iter().map(state).collect();
    let ours = resolve_state(version, &states, &[], |id| events.get(id), None).unwrap();
    let dave = ("m.room.member".to_owned(), "@dave:third.test".to_owned());
    let rules = ("m.room.join_rules".to_owned(), String::new());
    assert!(!states[0].contains_key(&dave));
    assert_eq!(ours.get(&dave), states[1].get(&dave));
    let join_rule = events[&ours[&rules]].content_object().unwrap()["join_rule"].clone();
    assert_eq!(join_rule.as_str(), Some("invite"));
}
