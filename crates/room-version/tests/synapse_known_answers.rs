//! Known answers from Synapse for room versions 1 to 11: event ids, content and reference
//! hashes, redacted forms, signatures and the verdict on genuine and forged events.
//!
//! The answers were computed by Synapse's own code (`fixtures/capture_synapse.py`, which states
//! how to re-run it) and stored in `fixtures/synapse_events.json`; this test needs no Synapse.

use std::collections::BTreeMap;

use myelin_room_version::canonical::{
    content_hash, redact, reference_hash_base64, value_to_object,
};
use myelin_room_version::pdu::{EventSigner, Pdu, add_signature, build_pdu};
use myelin_room_version::signing::{KeyPair, PublicKey};
use myelin_room_version::verify::{ServerKey, ServerKeys, Verified, verify_pdu};
use myelin_room_version::version::RoomVersion;
use serde_json::Value;

fn fixtures() -> Value {
    let text = include_str!("fixtures/synapse_events.json");
    serde_json::from_str(text).expect("fixture is JSON")
}

fn versions() -> Vec<(&'static RoomVersion, Value)> {
    let all = fixtures();
    let list = all["versions"].as_array().expect("versions").clone();
    assert_eq!(list.len(), 11, "one entry per room version 1 to 11");
    list.into_iter()
        .map(|v| {
            let id = v["room_version"].as_str().expect("room_version").to_owned();
            (RoomVersion::get(&id).expect("known version"), v)
        })
        .collect()
}

fn server_keys(case: &Value) -> ServerKeys {
    let mut out = ServerKeys::new();
    for (server, keys) in case["server_keys"].as_object().expect("server_keys") {
        let mut per = BTreeMap::new();
        for (key_id, k) in keys.as_object().expect("keys") {
            per.insert(
                key_id.clone(),
                ServerKey {
                    key: PublicKey::from_base64(k["key"].as_str().expect("key")).expect("key"),
                    valid_until_ts: k["valid_until_ts"].as_u64().expect("ts"),
                },
            );
        }
        out.insert(server.clone(), per);
    }
    out
}

fn without_unsigned(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("unsigned");
    }
    v
}

/// Every captured event, genuine or forged: same id, content hash, reference hash and redacted
/// form as Synapse.
#[test]
fn ids_hashes_and_redacted_forms_match_synapse() {
    let mut checked = 0;
    for (version, fixture) in versions() {
        for case in fixture["cases"].as_array().expect("cases") {
            let name = format!("v{} {}", version.id(), case["name"].as_str().unwrap_or("?"));
            let json = value_to_object(case["pdu"].clone()).expect("canonical");
            let pdu = Pdu::from_canonical(json.clone(), version)
                .unwrap_or_else(|e| panic!("{name}: format check refused it: {e}"));
            assert_eq!(pdu.event_id(), case["event_id"].as_str().unwrap(), "{name}");
            assert_eq!(
                content_hash(&json),
                case["content_hash"].as_str().unwrap(),
                "{name}"
            );
            assert_eq!(
                reference_hash_base64(&json, version).unwrap(),
                case["reference_hash"].as_str().unwrap(),
                "{name}"
            );
            let ours = serde_json::to_value(redact(&json, version).unwrap()).unwrap();
            assert_eq!(
                without_unsigned(ours),
                without_unsigned(case["redacted"].clone()),
                "{name}: redacted form"
            );
            checked += 1;
        }
    }
    assert!(checked >= 11 * 17, "only {checked} cases");
}

/// Synapse's receive-side verdict on each event (genuine, co-signed, signed by too few
/// servers, tampered, forged, signed with an expired key) is ours too.
#[test]
fn signature_and_hash_verdicts_match_synapse() {
    let mut verdicts: BTreeMap<String, usize> = BTreeMap::new();
    for (version, fixture) in versions() {
        for case in fixture["cases"].as_array().expect("cases") {
            let name = format!("v{} {}", version.id(), case["name"].as_str().unwrap_or("?"));
            let json = value_to_object(case["pdu"].clone()).expect("canonical");
            let pdu = Pdu::from_canonical(json, version).expect("format");
            let ours = match verify_pdu(&pdu, version, &server_keys(case)) {
                Ok(Verified::All) => "accept",
                Ok(Verified::SignaturesOnly) => "redact",
                Err(_) => "drop",
            };
            let expected = case["verdict"].as_str().unwrap();
            assert_eq!(
                ours, expected,
                "{name}: Synapse said {expected} ({})",
                case["synapse_reason"]
            );
            *verdicts.entry(expected.to_owned()).or_default() += 1;
        }
    }
    // The fixtures exercise all three outcomes.
    assert!(
        verdicts.get("accept").copied().unwrap_or(0) > 11 * 5,
        "{verdicts:?}"
    );
    assert!(
        verdicts.get("redact").copied().unwrap_or(0) >= 11,
        "{verdicts:?}"
    );
    assert!(
        verdicts.get("drop").copied().unwrap_or(0) >= 11 * 5,
        "{verdicts:?}"
    );
}

/// Synapse's verdicts differ between versions exactly where our version table says a rule
/// changes: who must sign (the event id's server in rooms 1–2, the authorising server from 8)
/// and whether key validity is enforced (from 5).
#[test]
fn synapse_verdicts_differ_where_the_version_table_says() {
    let verdict = |version: &Value, case: &str| -> String {
        version["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == case)
            .unwrap_or_else(|| panic!("no case {case}"))["verdict"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    for (version, fixture) in versions() {
        let n: u32 = version.id().parse().unwrap();
        let needs_cosign = version.event_ids_in_pdu() || version.auth_rules().restricted_joins;
        assert_eq!(needs_cosign, n <= 2 || n >= 8, "v{n}");
        assert_eq!(
            verdict(&fixture, "remote_join_signed_by_sender_only"),
            if needs_cosign { "drop" } else { "accept" },
            "v{n}"
        );
        // Rooms 5+: key validity periods are enforced.
        assert_eq!(
            verdict(&fixture, "key_expired_before_event"),
            if version.enforce_key_validity() {
                "drop"
            } else {
                "accept"
            },
            "v{n}"
        );
    }
}

fn seed_key(server: &str) -> KeyPair {
    // The capture script's seeds: the server name repeated, cut to 32 bytes.
    let bytes: Vec<u8> = server.bytes().cycle().take(32).collect();
    KeyPair::from_seed(&bytes.try_into().expect("32 bytes"))
}

/// Building the genuine events ourselves from their unsigned fields, with the same keys, gives
/// Synapse's hashes and signatures byte for byte; in rooms 1 and 2 the `[id, hashes]` pairs
/// citing earlier events are what [`Pdu::reference`] produces.
#[test]
fn building_the_events_reproduces_synapses_hashes_signatures_and_references() {
    for (version, fixture) in versions() {
        let mut by_id: BTreeMap<String, Pdu> = BTreeMap::new();
        for event in fixture["events"].as_array().expect("events") {
            let id = event["id"].as_str().unwrap();
            let theirs = value_to_object(event["json"].clone()).unwrap();
            let sender = event["json"]["sender"].as_str().unwrap();
            let (_, domain) = sender.split_once(':').unwrap();
            let key = seed_key(domain);
            let signer = EventSigner::Server {
                server_name: domain,
                key_id: "ed25519:a1",
                key: &key,
            };
            let mut ours = build_pdu(theirs.clone(), version, signer)
                .unwrap_or_else(|e| panic!("v{} {id}: {e}", version.id()));
            let their_sigs = event["json"]["signatures"].as_object().unwrap();
            for cosigner in their_sigs.keys().filter(|s| *s != domain) {
                let key = seed_key(cosigner);
                let signer = EventSigner::Server {
                    server_name: cosigner,
                    key_id: "ed25519:a1",
                    key: &key,
                };
                add_signature(&mut ours, version, signer).unwrap();
            }
            assert_eq!(ours.event_id(), id, "v{}", version.id());
            assert_eq!(
                serde_json::to_value(ours.json()).unwrap(),
                event["json"],
                "v{} {id}: hashes and signatures",
                version.id()
            );
            if version.event_ids_in_pdu() {
                for field in ["prev_events", "auth_events"] {
                    for cited in event["json"][field].as_array().unwrap() {
                        let cited_id = cited[0].as_str().unwrap();
                        let reference = by_id[cited_id].reference(version).unwrap();
                        assert_eq!(&serde_json::to_value(reference).unwrap(), cited);
                    }
                }
            }
            by_id.insert(id.to_owned(), ours);
        }
        assert!(by_id.len() >= 9, "v{}", version.id());
    }
}
