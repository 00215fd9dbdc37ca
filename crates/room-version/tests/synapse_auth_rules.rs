//! The authorisation rules that differ between room versions 1 to 11, against Synapse's own
//! verdicts (`synapse.event_auth.check_state_dependent_auth_rules`), captured by
//! `fixtures/capture_synapse_auth.py` into `fixtures/synapse_auth.json`. Our rules run on ruma's
//! implementation, so this compares two independent implementations; the test needs no Synapse.

use std::collections::HashMap;

use myelin_room_version::auth::check_against_state;
use myelin_room_version::canonical::value_to_object;
use myelin_room_version::pdu::Pdu;
use myelin_room_version::version::RoomVersion;
use serde_json::Value;

fn pdu(json: &Value, version: &RoomVersion) -> Pdu {
    Pdu::from_canonical(value_to_object(json.clone()).unwrap(), version)
        .unwrap_or_else(|e| panic!("v{}: {e}: {json}", version.id()))
}

#[test]
fn auth_verdicts_match_synapse_in_every_version() {
    let fixture: Value = serde_json::from_str(include_str!("fixtures/synapse_auth.json")).unwrap();
    let versions = fixture["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 11);
    // case name → verdict per version, to see which rules changed where.
    let mut by_case: HashMap<String, Vec<bool>> = HashMap::new();
    for fixture in versions {
        let version = RoomVersion::get(fixture["room_version"].as_str().unwrap()).unwrap();
        let events: HashMap<String, Pdu> = fixture["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let p = pdu(e, version);
                (p.event_id().to_owned(), p)
            })
            .collect();
        let states: HashMap<String, HashMap<(String, String), String>> = fixture["states"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(name, list)| {
                let map = list
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| {
                        let s = |i: usize| e[i].as_str().unwrap().to_owned();
                        ((s(0), s(1)), s(2))
                    })
                    .collect();
                (name.clone(), map)
            })
            .collect();
        for case in fixture["cases"].as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let state = &states[case["state"].as_str().unwrap()];
            let event = pdu(&case["pdu"], version);
            let ours = check_against_state(version, &event, |t, k| {
                state
                    .get(&(t.to_owned(), k.to_owned()))
                    .and_then(|id| events.get(id))
            });
            let allowed = case["verdict"] == "allow";
            assert_eq!(
                ours.is_ok(),
                allowed,
                "v{} {name}: Synapse said {} ({}), we said {ours:?}",
                version.id(),
                case["verdict"],
                case["synapse_reason"]
            );
            by_case.entry(name.to_owned()).or_default().push(allowed);
        }
    }
    // The fixture really covers rules that change between versions (redactions, aliases,
    // notifications, string power levels, knock, restricted, knock_restricted) and ones that
    // do not.
    let changing = by_case
        .values()
        .filter(|v| v.iter().any(|a| *a) && v.iter().any(|a| !*a))
        .count();
    assert!(
        changing >= 7,
        "only {changing} cases change between versions"
    );
    assert!(by_case.len() >= 15);
}
