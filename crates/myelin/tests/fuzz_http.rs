//! Fuzzing the client API where it parses what clients make up (property tests over HTTP, on
//! both databases): filters (stored with `POST /filter`, inline in `/sync` and `/messages`)
//! and the tokens of `/sync`, `/messages`, `/hierarchy`, `/publicRooms` and `/search`.
//!
//! Each answer is a success or the spec's 4xx errcode, never a 5xx. An accepted filter is
//! stored as a fixed point: fetched and stored again, it comes back the same, and `/sync` runs
//! with it. A token the server issued is accepted back (the positive control).

use myelin_testkit::{TestServer, TestUser, enc, test_backends};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Cases per property and backend: together a few seconds per backend.
const CASES: u32 = 256;

/// The errcodes a malformed client value may get.
const CLIENT_ERRORS: &[&str] = &["M_BAD_JSON", "M_NOT_JSON", "M_INVALID_PARAM", "M_TOO_LARGE"];

/// Real filters, and ones that once were interesting: the seeds of the mutations.
fn seed_filters() -> Vec<Value> {
    vec![
        json!({}),
        json!({"room": {"timeline": {"limit": 5, "types": ["m.room.message"]}}}),
        json!({"room": {"state": {"lazy_load_members": true}, "include_leave": true,
                        "rooms": ["!r:localhost"], "not_rooms": []}}),
        json!({"event_fields": ["content.body", "type"], "event_format": "client",
               "presence": {"not_types": ["*"]}, "account_data": {"limit": 0}}),
        json!({"room": {"timeline": {"limit": 9007199254740991u64, "senders": ["@a:localhost"],
                                     "not_senders": ["@b:localhost"], "contains_url": true}}}),
        json!({"room": {"timeline": {"limit": -1}}}),
        json!({"room": {"timeline": {"limit": 1.5}}}),
        json!({"room": {"rooms": ["not a room id"]}}),
        json!({"room": {"timeline": {"senders": [5]}}}),
        json!({"event_format": "federation"}),
        json!({"event_format": "other"}),
    ]
}

const FILTER_KEYS: &[&str] = &[
    "room",
    "timeline",
    "state",
    "ephemeral",
    "account_data",
    "presence",
    "limit",
    "types",
    "not_types",
    "senders",
    "not_senders",
    "rooms",
    "not_rooms",
    "include_leave",
    "lazy_load_members",
    "include_redundant_members",
    "contains_url",
    "event_fields",
    "event_format",
    "unread_thread_notifications",
];

fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        (0i64..20).prop_map(|i| json!(i)),
        any::<u64>().prop_map(|i| json!(i)),
        (-1e20f64..1e20).prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
        "[@!$*][a-z.*]{0,6}(:localhost)?".prop_map(Value::String),
        Just(json!("m.room.*")),
    ];
    leaf.prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(prop::sample::select(FILTER_KEYS), inner, 0..5).prop_map(
                |m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            ),
        ]
    })
}

/// A filter: a seed with values replaced at random keys, or something made up.
fn arb_filter() -> impl Strategy<Value = Value> {
    prop_oneof![
        arb_value(),
        (
            prop::sample::select(seed_filters()),
            prop::collection::vec(
                (
                    prop::sample::select(FILTER_KEYS),
                    any::<Index>(),
                    arb_value()
                ),
                1..4
            )
        )
            .prop_map(|(mut filter, edits)| {
                for (key, at, value) in edits {
                    set_somewhere(&mut filter, key, at, value);
                }
                filter
            }),
    ]
}

/// Sets `key` to `new` in one of the objects of the tree (chosen by `at`).
fn set_somewhere(value: &mut Value, key: &str, at: Index, new: Value) {
    let mut count = 0;
    count_objects(value, &mut count);
    if count > 0 {
        insert_at(value, at.index(count), &mut 0, key, new);
    }
}

fn count_objects(value: &Value, count: &mut usize) {
    if let Value::Object(map) = value {
        *count += 1;
        for child in map.values() {
            count_objects(child, count);
        }
    }
}

fn insert_at(value: &mut Value, target: usize, seen: &mut usize, key: &str, new: Value) -> bool {
    if let Value::Object(map) = value {
        if *seen == target {
            map.insert(key.to_owned(), new);
            return true;
        }
        *seen += 1;
        for child in map.values_mut() {
            if insert_at(child, target, seen, key, new.clone()) {
                return true;
            }
        }
    }
    false
}

/// A token: one the server printed, mutated, or made up.
fn arb_token(issued: Vec<String>) -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,24}",
        "(s|h|n|p|recent_s|rank_)[0-9_+-]{0,30}",
        (
            prop::sample::select(issued),
            any::<Index>(),
            prop_oneof![Just('0'), Just('_'), Just('-'), Just('9'), any::<char>()],
            any::<bool>()
        )
            .prop_map(|(t, at, c, insert)| {
                let mut chars: Vec<char> = t.chars().collect();
                let i = at.index(chars.len() + 1);
                if insert || i == chars.len() {
                    chars.insert(i, c);
                } else {
                    chars[i] = c;
                }
                chars.into_iter().collect()
            }),
    ]
}

fn client_error_or_ok(what: &str, reply: &(StatusCode, Value)) -> Result<(), TestCaseError> {
    let (status, body) = reply;
    if status.is_success() {
        return Ok(());
    }
    prop_assert!(
        status.is_client_error() && status != &StatusCode::TOO_MANY_REQUESTS,
        "{what}: {status} {body}"
    );
    let errcode = body["errcode"].as_str().unwrap_or_default();
    prop_assert!(CLIENT_ERRORS.contains(&errcode), "{what}: {status} {body}");
    Ok(())
}

struct Fixture {
    server: TestServer,
    user: TestUser,
    room: String,
    space: String,
}

async fn fixture(kind: myelin_store::DatabaseKind) -> Fixture {
    let server = TestServer::start(kind).await;
    let user = server.register("fuzzer").await;
    let room = server
        .create_room(
            &user,
            json!({"preset": "public_chat", "visibility": "public"}),
        )
        .await;
    server
        .create_room(
            &user,
            json!({"preset": "public_chat", "visibility": "public"}),
        )
        .await;
    let space = server
        .create_room(&user, json!({"creation_content": {"type": "m.space"}}))
        .await;
    // A child, so that a hierarchy page of one room has a next page.
    let (status, body) = server
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.space.child/{}",
                enc(&space),
                enc(&room)
            ),
            &user.access_token,
            json!({"via": ["localhost"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for n in 0..3 {
        let (status, body) = server
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/send/m.room.message/t{n}",
                    enc(&room)
                ),
                &user.access_token,
                json!({"msgtype": "m.text", "body": format!("hello {n}")}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    Fixture {
        server,
        user,
        room,
        space,
    }
}

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    })
}

fn run_filters(rt: &tokio::runtime::Runtime, f: &Fixture) {
    let me = enc(&f.user.user_id);
    let token = f.user.access_token.as_str();
    let filter_path = format!("/_matrix/client/v3/user/{me}/filter");
    // Positive control: a real filter is stored, read back and used.
    let (status, body) = rt.block_on(
        f.server
            .post(&filter_path, token, seed_filters()[1].clone()),
    );
    assert_eq!(status, 200, "{body}");

    runner()
        .run(&arb_filter(), |filter| {
            rt.block_on(async {
                let reply = f.server.post(&filter_path, token, filter.clone()).await;
                client_error_or_ok("POST /filter", &reply)?;
                if reply.0.is_success() {
                    let id = reply.1["filter_id"].as_str().unwrap().to_owned();
                    let (status, stored) = f
                        .server
                        .get(&format!("{filter_path}/{}", enc(&id)), token)
                        .await;
                    prop_assert_eq!(status, StatusCode::OK, "{}", stored);
                    // Stored again, it is stored as it is.
                    let (status, again) = f.server.post(&filter_path, token, stored.clone()).await;
                    prop_assert_eq!(status, StatusCode::OK, "{}", again);
                    let again_id = again["filter_id"].as_str().unwrap().to_owned();
                    let (_, stored_again) = f
                        .server
                        .get(&format!("{filter_path}/{}", enc(&again_id)), token)
                        .await;
                    prop_assert_eq!(&stored_again, &stored);
                    let reply = f
                        .server
                        .get(
                            &format!("/_matrix/client/v3/sync?timeout=0&filter={}", enc(&id)),
                            token,
                        )
                        .await;
                    prop_assert_eq!(reply.0, StatusCode::OK, "sync with {}: {}", stored, reply.1);
                }
                let inline = enc(&filter.to_string());
                let reply = f
                    .server
                    .get(
                        &format!("/_matrix/client/v3/sync?timeout=0&filter={inline}"),
                        token,
                    )
                    .await;
                client_error_or_ok("inline /sync filter", &reply)?;
                let reply = f
                    .server
                    .get(
                        &format!(
                            "/_matrix/client/v3/rooms/{}/messages?dir=b&filter={inline}",
                            enc(&f.room)
                        ),
                        token,
                    )
                    .await;
                client_error_or_ok("/messages filter", &reply)?;
                Ok(())
            })
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

fn run_tokens(rt: &tokio::runtime::Runtime, f: &Fixture) {
    let token = f.user.access_token.as_str();
    let room = enc(&f.room);
    // Positive controls: what the server prints, it takes back.
    let issued: Vec<String> = rt.block_on(async {
        let (status, sync) = f
            .server
            .get("/_matrix/client/v3/sync?timeout=0", token)
            .await;
        assert_eq!(status, 200, "{sync}");
        let next = sync["next_batch"].as_str().unwrap().to_owned();
        let (status, page) = f
            .server
            .get(
                &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=1"),
                token,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        let end = page["end"].as_str().unwrap().to_owned();
        let (status, search) = f
            .server
            .post(
                "/_matrix/client/v3/search",
                token,
                json!({"search_categories": {"room_events": {"search_term": "hello",
                       "filter": {"limit": 1}}}}),
            )
            .await;
        assert_eq!(status, 200, "{search}");
        let batch = search["search_categories"]["room_events"]["next_batch"]
            .as_str()
            .unwrap()
            .to_owned();
        let space = enc(&f.space);
        let (status, page) = f
            .server
            .get(
                &format!("/_matrix/client/v1/rooms/{space}/hierarchy?limit=1"),
                token,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        let hierarchy = page["next_batch"]
            .as_str()
            .expect("a next hierarchy page")
            .to_owned();
        let (status, page) = f
            .server
            .get("/_matrix/client/v3/publicRooms?limit=1", token)
            .await;
        assert_eq!(status, 200, "{page}");
        let directory = page["next_batch"]
            .as_str()
            .expect("a next directory page")
            .to_owned();
        for (what, path) in [
            (
                "since",
                format!("/_matrix/client/v3/sync?timeout=0&since={next}"),
            ),
            (
                "from",
                format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&from={end}"),
            ),
            (
                "hierarchy",
                format!(
                    "/_matrix/client/v1/rooms/{space}/hierarchy?limit=1&from={}",
                    enc(&hierarchy)
                ),
            ),
            (
                "publicRooms",
                format!(
                    "/_matrix/client/v3/publicRooms?limit=1&since={}",
                    enc(&directory)
                ),
            ),
        ] {
            let (status, body) = f.server.get(&path, token).await;
            assert_eq!(status, 200, "{what}: {body}");
        }
        let (status, body) = f
            .server
            .post(
                &format!("/_matrix/client/v3/search?next_batch={}", enc(&batch)),
                token,
                json!({"search_categories": {"room_events": {"search_term": "hello",
                       "filter": {"limit": 1}}}}),
            )
            .await;
        assert_eq!(status, 200, "search next_batch: {body}");
        vec![next, end, batch, hierarchy, directory]
    });

    runner()
        .run(&arb_token(issued), |t| {
            rt.block_on(async {
                let q = enc(&t);
                let space = enc(&f.space);
                for (what, path) in [
                    (
                        "/sync since",
                        format!("/_matrix/client/v3/sync?timeout=0&since={q}"),
                    ),
                    (
                        "/messages from",
                        format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&from={q}"),
                    ),
                    (
                        "/messages to",
                        format!("/_matrix/client/v3/rooms/{room}/messages?dir=f&to={q}"),
                    ),
                    (
                        "/hierarchy from",
                        format!("/_matrix/client/v1/rooms/{space}/hierarchy?from={q}"),
                    ),
                    (
                        "/publicRooms since",
                        format!("/_matrix/client/v3/publicRooms?since={q}"),
                    ),
                    (
                        "/relations from",
                        format!("/_matrix/client/v1/rooms/{room}/relations/%24x?from={q}"),
                    ),
                ] {
                    let reply = f.server.get(&path, token).await;
                    // An unknown event in /relations is a 404 whatever the token.
                    if what == "/relations from" && reply.0 == StatusCode::NOT_FOUND {
                        continue;
                    }
                    client_error_or_ok(what, &reply)?;
                }
                let reply = f
                    .server
                    .post(
                        &format!("/_matrix/client/v3/search?next_batch={q}"),
                        token,
                        json!({"search_categories": {"room_events": {"search_term": "hello"}}}),
                    )
                    .await;
                client_error_or_ok("/search next_batch", &reply)?;
                Ok(())
            })
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn filters_and_tokens_get_an_answer_or_a_client_error() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for kind in test_backends() {
        let started = std::time::Instant::now();
        let f = rt.block_on(fixture(kind));
        run_filters(&rt, &f);
        run_tokens(&rt, &f);
        eprintln!("{kind:?}: {:.1} s", started.elapsed().as_secs_f64());
        rt.block_on(f.server.stop());
    }
}
