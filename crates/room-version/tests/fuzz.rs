//! Fuzzing on stable Rust: property tests that feed arbitrary and mutated input to canonical
//! JSON, the PDU parser of every room version, and the identifier grammars. Each property says
//! what must hold besides "no panic": accepted input round-trips to the same bytes, refused input
//! gets the error its kind of fault deserves.
//!
//! Seeds: `tests/corpus/` holds inputs worth keeping (edge cases and anything a run once found).
//! Every file there is replayed as is, and is also a starting point for the byte mutations.
//! `fuzz.proptest-regressions` keeps the seeds of cases proptest shrank to.

mod common;

use std::path::PathBuf;

use common::{Actor, Room, actor};
use myelin_room_version::account_key::{AccountKey, KeyFormUserId};
use myelin_room_version::canonical::{
    JsonError, parse_object, to_canonical_string, value_to_object,
};
use myelin_room_version::pdu::{Pdu, check_format};
use myelin_room_version::version::RoomVersion;
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Value, json};

/// The largest integer canonical JSON allows, either sign.
const MAX_SAFE: i64 = (1 << 53) - 1;

// ---------------------------------------------------------------------------------------------
// Corpus and seeds

fn corpus_dir(kind: &str) -> PathBuf {
    manifest_dir().join("tests/corpus").join(kind)
}

/// Every file of one corpus directory, by name.
fn corpus(kind: &str) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(corpus_dir(kind))
        .unwrap_or_else(|e| panic!("corpus directory {kind}: {e}"))
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus directory {kind} is empty");
    files
}

/// Well-formed events of one room version: a small room's create, join, power levels, join
/// rules, and a message citing them.
fn valid_events(version: &'static RoomVersion) -> Vec<String> {
    let creator: Actor = actor(version, 1, "a.example");
    // Creators have implicit power from v12 on, and must not be listed there.
    let power = if version.privileges_creators() {
        json!({})
    } else {
        json!({"users": {creator.id.clone(): 100}})
    };
    let room = Room::new(version, &creator, json!({}), power, "public");
    let message = room.make(
        &creator,
        json!({"type": "m.room.message", "content": {"msgtype": "m.text", "body": "hi"}}),
    );
    let mut events: Vec<String> = room.events.values().map(Pdu::canonical_json).collect();
    events.sort();
    events.push(message.canonical_json());
    events
}

/// Seeds for the PDU mutations, per room version (index into `RoomVersion::all()`).
fn pdu_seeds() -> &'static [Vec<Vec<u8>>] {
    static SEEDS: std::sync::OnceLock<Vec<Vec<Vec<u8>>>> = std::sync::OnceLock::new();
    SEEDS.get_or_init(|| {
        let stored: Vec<Vec<u8>> = corpus("pdu").into_iter().map(|(_, b)| b).collect();
        RoomVersion::all()
            .iter()
            .map(|version| {
                let mut seeds: Vec<Vec<u8>> = valid_events(version)
                    .into_iter()
                    .map(String::into_bytes)
                    .collect();
                seeds.extend(stored.iter().cloned());
                seeds
            })
            .collect()
    })
}

fn canonical_seeds() -> &'static [Vec<u8>] {
    static SEEDS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    SEEDS.get_or_init(|| {
        let mut seeds: Vec<Vec<u8>> = corpus("canonical").into_iter().map(|(_, b)| b).collect();
        // Real events of one version too: nested objects, hashes, signatures.
        let v12 = RoomVersion::all()
            .iter()
            .position(|v| v.id() == "12")
            .unwrap();
        seeds.extend(pdu_seeds()[v12].iter().cloned());
        seeds
    })
}

/// Identifiers: one per line of the files in `corpus/ids`.
fn id_seeds() -> &'static [String] {
    static SEEDS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    SEEDS.get_or_init(|| {
        corpus("ids")
            .into_iter()
            .flat_map(|(_, bytes)| {
                String::from_utf8(bytes)
                    .unwrap()
                    .lines()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .chain((1..4).flat_map(|n| {
                let user = common::key_user(n, "a.example");
                [
                    user.clone(),
                    format!("{user}:8448"),
                    user.replace(':', "::"),
                ]
            }))
            .collect()
    })
}

// ---------------------------------------------------------------------------------------------
// Mutations

/// Fragments that make JSON parsers work: structure, edge numbers, escapes, identifiers.
const DICTIONARY: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "\\",
    "null",
    "true",
    "0",
    "-0",
    "1.5",
    "1e400",
    "9007199254740991",
    "9007199254740992",
    "-9007199254740992",
    "18446744073709551616",
    "\\u0000",
    "\\ud800",
    "\\udc00\\ud800",
    "\u{feff}",
    "\u{10ffff}",
    "\"$abc:a.example\"",
    "\"@a:a.example\"",
    "\"!r:a.example\"",
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    "{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":",
    "\"state_key\":\"\",",
    "\"redacts\":\"$x\",",
    "\"depth\":-1,",
    "\"type\":\"m.room.create\",",
];

#[derive(Debug, Clone)]
enum Mutation {
    SetByte(Index, u8),
    Delete(Index, usize),
    Insert(Index, usize),
    Duplicate(Index, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
        (any::<Index>(), 1usize..16).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (any::<Index>(), 0..DICTIONARY.len()).prop_map(|(i, w)| Mutation::Insert(i, w)),
        (any::<Index>(), 1usize..64).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
    ]
}

fn mutate(seed: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for m in mutations {
        let at = |i: &Index, len: usize| if len == 0 { 0 } else { i.index(len + 1) };
        match m {
            Mutation::SetByte(i, b) if !bytes.is_empty() => {
                let k = i.index(bytes.len());
                bytes[k] = *b;
            }
            Mutation::SetByte(..) => bytes.push(0),
            Mutation::Delete(i, n) => {
                let k = at(i, bytes.len()).min(bytes.len());
                let end = (k + n).min(bytes.len());
                bytes.drain(k..end);
            }
            Mutation::Insert(i, w) => {
                let k = at(i, bytes.len()).min(bytes.len());
                bytes.splice(k..k, DICTIONARY[*w].bytes());
            }
            Mutation::Duplicate(i, n) => {
                let k = at(i, bytes.len()).min(bytes.len());
                let end = (k + n).min(bytes.len());
                let slice = bytes[k..end].to_vec();
                bytes.splice(end..end, slice);
            }
        }
    }
    bytes
}

/// Structured mutation: replace, delete or add a value somewhere in the JSON tree.
#[derive(Debug, Clone)]
enum Edit {
    Replace(Index, Value),
    Remove(Index),
    Add(Index, String, Value),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<Index>(), arb_json()).prop_map(|(i, v)| Edit::Replace(i, v)),
        any::<Index>().prop_map(Edit::Remove),
        (
            any::<Index>(),
            prop::sample::select(vec![
                "type",
                "state_key",
                "room_id",
                "redacts",
                "event_id",
                "membership",
                "users",
                "sha256",
                "x",
            ])
            .prop_map(str::to_owned),
            arb_json()
        )
            .prop_map(|(i, k, v)| Edit::Add(i, k, v)),
    ]
}

/// Every path (object keys and array indices) into a JSON value, the root included.
fn paths(value: &Value, prefix: &mut Vec<PathStep>, out: &mut Vec<Vec<PathStep>>) {
    out.push(prefix.clone());
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                prefix.push(PathStep::Key(k.clone()));
                paths(v, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                prefix.push(PathStep::Item(i));
                paths(v, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

#[derive(Debug, Clone)]
enum PathStep {
    Key(String),
    Item(usize),
}

fn at_path<'a>(value: &'a mut Value, path: &[PathStep]) -> &'a mut Value {
    path.iter().fold(value, |v, step| match step {
        PathStep::Key(k) => &mut v[k.as_str()],
        PathStep::Item(i) => &mut v[*i],
    })
}

fn apply_edit(value: &mut Value, edit: &Edit) {
    let mut all = Vec::new();
    paths(value, &mut Vec::new(), &mut all);
    match edit {
        Edit::Replace(i, new) => *at_path(value, &all[i.index(all.len())]) = new.clone(),
        Edit::Remove(i) => {
            let path = &all[i.index(all.len())];
            if let Some((last, parent)) = path.split_last() {
                match (at_path(value, parent), last) {
                    (Value::Object(map), PathStep::Key(k)) => {
                        map.remove(k);
                    }
                    (Value::Array(items), PathStep::Item(n)) => {
                        items.remove(*n);
                    }
                    _ => {}
                }
            }
        }
        Edit::Add(i, key, new) => {
            if let Value::Object(map) = at_path(value, &all[i.index(all.len())]) {
                map.insert(key.clone(), new.clone());
            }
        }
    }
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        (-MAX_SAFE..=MAX_SAFE).prop_map(|i| json!(i)),
        any::<u64>().prop_map(|i| json!(i)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
        "[$@!#][a-zA-Z0-9:._=-]{0,50}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_$@.]{0,8}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

// ---------------------------------------------------------------------------------------------
// The properties, as functions the proptests and the corpus replay share

/// Whether a JSON value is canonical JSON: integers only, within ±(2^53−1).
fn is_canonical(value: &Value) -> bool {
    match value {
        Value::Number(n) => n
            .as_i64()
            .is_some_and(|i| (-MAX_SAFE..=MAX_SAFE).contains(&i)),
        Value::Array(items) => items.iter().all(is_canonical),
        Value::Object(map) => map.values().all(is_canonical),
        _ => true,
    }
}

/// Canonical JSON parsing: accepted input re-serialises to a fixed point that parses back to the
/// same object; refused input gets the error for its fault (not JSON, not an object, not
/// canonical), and is refused exactly when it is not a canonical JSON object.
fn check_canonical_bytes(bytes: &[u8]) -> Result<(), TestCaseError> {
    let plain = serde_json::from_slice::<Value>(bytes);
    match parse_object(bytes) {
        Ok(object) => {
            prop_assert!(matches!(&plain, Ok(v) if v.is_object() && is_canonical(v)));
            let text = to_canonical_string(&object);
            let again = parse_object(text.as_bytes())
                .map_err(|e| TestCaseError::fail(format!("own output refused: {e}")))?;
            prop_assert_eq!(&again, &object);
            prop_assert_eq!(to_canonical_string(&again), text.clone());
            // Canonical: no insignificant whitespace, keys sorted at every level.
            let reparsed: Value = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(serde_json::to_string(&sorted(&reparsed)).unwrap(), text);
        }
        Err(error) => match plain {
            Err(_) => prop_assert!(matches!(error, JsonError::NotJson(_)), "{error:?}"),
            Ok(Value::Object(_)) => {
                prop_assert!(!is_canonical(plain.as_ref().unwrap()));
                prop_assert!(matches!(error, JsonError::NotCanonical(_)), "{error:?}");
            }
            Ok(_) => prop_assert_eq!(error, JsonError::NotAnObject),
        },
    }
    Ok(())
}

/// A JSON value with every object's keys in sorted order (serde_json's map keeps insertion
/// order only with `preserve_order`; sort explicitly either way).
fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.clone(), sorted(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// The PDU parser of one room version: an accepted PDU re-serialises to the canonical form of
/// its input, parses again to the same id, passes the format checks on its own, loads from
/// storage as the same event, and can be redacted and cited. A refused one gets `M_NOT_JSON`
/// exactly when the bytes are not JSON.
fn check_pdu_bytes(bytes: &[u8], version: &RoomVersion) -> Result<(), TestCaseError> {
    match Pdu::from_federation(bytes, version) {
        Ok(pdu) => {
            let text = pdu.canonical_json();
            prop_assert_eq!(
                &text,
                &to_canonical_string(&parse_object(bytes).unwrap()),
                "not re-serialised identically"
            );
            let again = Pdu::from_federation(text.as_bytes(), version)
                .map_err(|e| TestCaseError::fail(format!("own output refused: {e}")))?;
            prop_assert_eq!(again.event_id(), pdu.event_id());
            prop_assert_eq!(again.canonical_json(), text.clone());
            prop_assert!(check_format(pdu.json(), version).is_ok());
            let stored = Pdu::from_stored(pdu.event_id(), pdu.json().clone(), version)
                .map_err(|e| TestCaseError::fail(format!("stored form refused: {e}")))?;
            prop_assert_eq!(stored.canonical_json(), text);
            prop_assert_eq!(stored.event_type(), pdu.event_type());
            prop_assert_eq!(stored.sender(), pdu.sender());
            prop_assert_eq!(stored.state_key(), pdu.state_key());
            prop_assert_eq!(stored.redacts(), pdu.redacts());
            prop_assert!(pdu.event_id().starts_with('$'));
            // Every identifier in an accepted PDU is within the spec's 255 bytes.
            let ids = [pdu.event_id(), pdu.sender()]
                .into_iter()
                .chain(pdu.room_id())
                .chain(pdu.redacts())
                .chain(pdu.prev_events())
                .chain(pdu.auth_events());
            for id in ids {
                prop_assert!(id.len() <= 255, "{} bytes: {}", id.len(), id);
            }
            prop_assert!(ruma::UserId::parse(pdu.sender()).is_ok());
            if version.uses_account_keys() {
                prop_assert!(KeyFormUserId::parse(pdu.sender()).is_ok());
            }
            // Redaction keeps what a redacted event needs, so the result loads again.
            if let Ok(redacted) = pdu.redacted(version) {
                prop_assert_eq!(redacted.event_id(), pdu.event_id());
                prop_assert!(
                    Pdu::from_stored(redacted.event_id(), redacted.json().clone(), version).is_ok()
                );
            }
            prop_assert!(pdu.reference(version).is_ok());
            let _ = pdu.client_event(serde_json::Map::new());
        }
        Err(error) => {
            let is_json = serde_json::from_slice::<Value>(bytes).is_ok();
            prop_assert_eq!(
                error.errcode() == "M_NOT_JSON",
                !is_json,
                "{:?} for {}",
                error,
                String::from_utf8_lossy(bytes)
            );
            // What the federation path refuses may still be handed to the storage path (a
            // corrupt row): that is an error or a view, never a panic.
            if let Ok(object) = parse_object(bytes) {
                let _ = Pdu::from_stored("$x", object.clone(), version);
                let _ = check_format(&object, version);
            }
        }
    }
    Ok(())
}

/// The identifier grammars: whatever ruma accepts is the string it was given, sized and shaped
/// as the spec says; the strict key-form grammar accepts only user ids that are also valid as
/// plain user ids, and round-trips.
fn check_id(s: &str) -> Result<(), TestCaseError> {
    if let Ok(id) = ruma::UserId::parse(s) {
        prop_assert_eq!(id.as_str(), s);
        prop_assert!(s.starts_with('@') && s.len() <= 255);
        prop_assert!(ruma::ServerName::parse(id.server_name().as_str()).is_ok());
    }
    // ruma does not bound event ids by length; the PDU checks do (see `check_pdu_bytes`).
    if let Ok(id) = ruma::OwnedEventId::try_from(s) {
        prop_assert_eq!(id.as_str(), s);
        prop_assert!(s.starts_with('$'));
    }
    if let Ok(id) = ruma::OwnedRoomId::try_from(s) {
        prop_assert_eq!(id.as_str(), s);
        prop_assert!(s.starts_with('!') && s.len() <= 255);
    }
    match KeyFormUserId::parse(s) {
        Ok(parsed) => {
            prop_assert_eq!(parsed.to_string(), s);
            prop_assert!(ruma::UserId::parse(s).is_ok(), "key form but not a user id");
            prop_assert_eq!(AccountKey::from_user_id(s).ok(), Some(parsed.key.clone()));
            prop_assert_eq!(
                AccountKey::parse(parsed.key.as_str()).ok(),
                Some(parsed.key)
            );
        }
        Err(_) => {
            // Not key form: `from_user_id` (no server-name check) may only accept it when the
            // server name or the length is what failed.
            if let Ok(key) = AccountKey::from_user_id(s) {
                let domain_ok = s
                    .split_once(':')
                    .is_some_and(|(_, d)| ruma::ServerName::parse(d).is_ok());
                prop_assert!(!domain_ok || s.len() > 255, "{key} accepted one way only");
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Corpus replay

#[test]
fn corpus_canonical_json_replays() {
    for (name, bytes) in corpus("canonical") {
        check_canonical_bytes(&bytes).unwrap_or_else(|e| panic!("canonical/{name}: {e}"));
    }
}

#[test]
fn corpus_pdus_replay_in_every_version() {
    for (name, bytes) in corpus("pdu") {
        for version in RoomVersion::all() {
            check_pdu_bytes(&bytes, version)
                .unwrap_or_else(|e| panic!("pdu/{name} in {}: {e}", version.id()));
        }
    }
}

#[test]
fn corpus_ids_replay() {
    for id in id_seeds() {
        check_id(id).unwrap_or_else(|e| panic!("id {id:?}: {e}"));
    }
}

#[test]
fn valid_events_of_every_version_are_accepted() {
    for (i, version) in RoomVersion::all().iter().enumerate() {
        for seed in pdu_seeds()[i].iter().take(5) {
            let pdu = Pdu::from_federation(seed, version).unwrap_or_else(|e| {
                panic!("{}: {e}: {}", version.id(), String::from_utf8_lossy(seed))
            });
            check_pdu_bytes(seed, version).unwrap();
            assert!(pdu.event_id().starts_with('$'));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Properties

// Case counts: together about ten seconds on one core in a debug build.
proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    /// Arbitrary bytes as canonical JSON.
    #[test]
    fn canonical_json_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        check_canonical_bytes(&bytes)?;
    }

    /// Mutated seeds (corpus and real events) as canonical JSON.
    #[test]
    fn canonical_json_mutated(seed in any::<Index>(), mutations in prop::collection::vec(mutation(), 1..6)) {
        let seeds = canonical_seeds();
        let bytes = mutate(&seeds[seed.index(seeds.len())], &mutations);
        check_canonical_bytes(&bytes)?;
    }

    /// Arbitrary JSON values: accepted exactly when canonical, and the canonical string of an
    /// accepted object parses as JSON to the same value.
    #[test]
    fn canonical_json_values(map in prop::collection::btree_map("[a-z\u{e9}\u{1f600}]{0,4}", arb_json(), 0..6)) {
        let value = Value::Object(map.into_iter().collect());
        match value_to_object(value.clone()) {
            Ok(object) => {
                prop_assert!(is_canonical(&value));
                let text = to_canonical_string(&object);
                prop_assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), value);
            }
            Err(error) => {
                prop_assert!(!is_canonical(&value));
                prop_assert!(matches!(error, JsonError::NotCanonical(_)), "{error:?}");
            }
        }
    }

    /// Byte-mutated valid PDUs, in every room version.
    #[test]
    fn pdu_parser_byte_mutations(
        version in any::<Index>(),
        seed in any::<Index>(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let all = RoomVersion::all();
        let v = version.index(all.len());
        let seeds = &pdu_seeds()[v];
        let bytes = mutate(&seeds[seed.index(seeds.len())], &mutations);
        check_pdu_bytes(&bytes, all[v])?;
    }

    /// Structurally mutated valid PDUs (a value replaced, removed or added anywhere in the
    /// tree), in every room version.
    #[test]
    fn pdu_parser_tree_edits(
        version in any::<Index>(),
        seed in any::<Index>(),
        edits in prop::collection::vec(edit(), 1..4),
    ) {
        let all = RoomVersion::all();
        let v = version.index(all.len());
        let seeds = &pdu_seeds()[v];
        let mut value: Value = serde_json::from_slice(&seeds[seed.index(seeds.len())]).unwrap();
        for e in &edits {
            apply_edit(&mut value, e);
        }
        check_pdu_bytes(value.to_string().as_bytes(), all[v])?;
    }

    /// Arbitrary strings and mutated real identifiers through every identifier grammar.
    #[test]
    fn identifier_grammars(
        arbitrary in ".{0,64}",
        shaped in "[$@!#][a-zA-Z0-9._=/+-]{0,50}(:[a-z0-9.:\\[\\]-]{0,30})?",
        seed in any::<Index>(),
        mutations in prop::collection::vec(mutation(), 1..3),
    ) {
        check_id(&arbitrary)?;
        check_id(&shaped)?;
        let seeds = id_seeds();
        let mutated = mutate(seeds[seed.index(seeds.len())].as_bytes(), &mutations);
        check_id(&String::from_utf8_lossy(&mutated))?;
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
