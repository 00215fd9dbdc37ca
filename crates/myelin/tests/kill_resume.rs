//! A journaled operation cut short by a real SIGKILL of the `myelin` binary is finished by the
//! restarted process at once, not after its lease runs out: leases are owned by
//! `<instance>/<boot>`, and a new boot of an instance claims what its earlier boots held.
//!
//! The binary `cargo test` builds has the service's `failpoints` feature (the tests'
//! dev-dependencies turn it on), whose crash points the `FAILPOINTS` environment variable
//! configures: `createRoom` is stopped (hanging) right after the creator's join, the process is
//! SIGKILLed there, and the restart must finish the room. The lease is made an hour long
//! (`operations::lease_secs`), so only the claim at start-up can finish it within the test.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use myelin_store::{DatabaseKind, test_support::TestDatabase};
use myelin_testkit::{enc, process::ServerProcess, test_backends};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_myelin");
/// Far longer than the test waits for anything.
const LEASE_SECS: &str = "3600";
/// How long the test waits for the server to reach a state (an upper bound, not a timing
/// assertion: the lease is an hour).
const WAIT: Duration = Duration::from_secs(30);

/// The binary in `dir` (SQLite there unless `database_url`) with the failpoints `failpoints`.
async fn start_server(dir: &Path, database_url: Option<&str>, failpoints: &str) -> ServerProcess {
    let mut env = vec![("FAILPOINTS", failpoints)];
    if let Some(url) = database_url {
        env.push(("MYELIN_DATABASE__URL", url));
    }
    ServerProcess::start(BIN, dir, &env).await
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = http.request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn register(http: &reqwest::Client, base: &str, localpart: &str) -> (String, String) {
    let (status, body) = call(
        http,
        reqwest::Method::POST,
        format!("{base}/register"),
        None,
        Some(
            json!({"username": localpart, "password": format!("{localpart}-pw"),
                    "auth": {"type": "m.login.dummy"}}),
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    (
        body["user_id"].as_str().unwrap().to_owned(),
        body["access_token"].as_str().unwrap().to_owned(),
    )
}

async fn joined_rooms(http: &reqwest::Client, base: &str, token: &str) -> Vec<String> {
    let (status, body) = call(
        http,
        reqwest::Method::GET,
        format!("{base}/joined_rooms"),
        Some(token),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_value(body["joined_rooms"].clone()).unwrap()
}

/// The room's current state as `(type, state_key) -> content`.
async fn state(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    room: &str,
) -> std::collections::HashMap<(String, String), Value> {
    let (status, body) = call(
        http,
        reqwest::Method::GET,
        format!("{base}/rooms/{}/state", enc(room)),
        Some(token),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body.as_array()
        .unwrap()
        .iter()
        .map(|event| {
            (
                (
                    event["type"].as_str().unwrap().to_owned(),
                    event["state_key"].as_str().unwrap().to_owned(),
                ),
                event["content"].clone(),
            )
        })
        .collect()
}

async fn create_room_killed_mid_build_is_finished_by_the_restart(kind: DatabaseKind) {
    myelin_testkit::install_crypto_provider();
    let db = match kind {
        DatabaseKind::Postgres => Some(TestDatabase::create(DatabaseKind::Postgres).await),
        DatabaseKind::Sqlite => None,
    };
    let url = db.as_ref().map(|db| db.url.as_str());
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let lease = format!("operations::lease_secs=return({LEASE_SECS})");

    let server = start_server(
        dir.path(),
        url,
        &format!("{lease};create_room::after_join=return(hang:@killed_alice:localhost)"),
    )
    .await;
    let (alice, alice_token) = register(&http, &server.base, "killed_alice").await;
    assert_eq!(alice, "@killed_alice:localhost");
    let (bob, bob_token) = register(&http, &server.base, "killed_bob").await;

    // The request hangs after the creator's join; the room is half made.
    let request = tokio::spawn({
        let http = http.clone();
        let url = format!("{}/createRoom", server.base);
        let token = alice_token.clone();
        let bob = bob.clone();
        async move {
            http.post(url)
                .bearer_auth(token)
                .json(&json!({"preset": "public_chat", "name": "Killed mid-build",
                              "topic": "finished by the restart", "invite": [bob]}))
                .send()
                .await
        }
    });
    let deadline = Instant::now() + WAIT;
    let room = loop {
        if let Some(room) = joined_rooms(&http, &server.base, &alice_token).await.pop() {
            break room;
        }
        assert!(
            Instant::now() < deadline,
            "{kind:?}: the creator never joined"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let half = state(&http, &server.base, &alice_token, &room).await;
    assert!(
        !half.contains_key(&("m.room.name".to_owned(), String::new())),
        "{kind:?}: {half:?}"
    );
    assert!(!request.is_finished(), "{kind:?}: the request hangs");

    server.kill();
    assert!(
        request.await.unwrap().is_err(),
        "{kind:?}: the kill cut the request"
    );

    // The restart (the same instance, `main` by default) claims the operation its earlier boot
    // held at once, with the hour-long lease still running, and finishes the room.
    let server = start_server(dir.path(), url, &lease).await;
    let deadline = Instant::now() + WAIT;
    let finished = loop {
        let now = state(&http, &server.base, &alice_token, &room).await;
        let invited = now
            .get(&("m.room.member".to_owned(), bob.clone()))
            .is_some_and(|member| member["membership"] == "invite");
        if invited {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "{kind:?}: the restarted server did not finish the room: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let at = |event_type: &str| finished[&(event_type.to_owned(), String::new())].clone();
    assert_eq!(at("m.room.name")["name"], "Killed mid-build", "{kind:?}");
    assert_eq!(at("m.room.topic")["topic"], "finished by the restart");
    assert_eq!(at("m.room.join_rules")["join_rule"], "public");
    assert!(at("m.room.power_levels").is_object());
    let (status, sync) = call(
        &http,
        reqwest::Method::GET,
        format!("{}/sync", server.base),
        Some(&bob_token),
        None,
    )
    .await;
    assert_eq!(status, 200, "{sync}");
    assert!(
        sync["rooms"]["invite"].get(room.as_str()).is_some(),
        "{kind:?}: the invitee sees the invite: {sync}"
    );
    server.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_room_killed_mid_build_is_finished_at_restart_sqlite() {
    create_room_killed_mid_build_is_finished_by_the_restart(DatabaseKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_room_killed_mid_build_is_finished_at_restart_postgres() {
    if !test_backends().contains(&DatabaseKind::Postgres) {
        return;
    }
    create_room_killed_mid_build_is_finished_by_the_restart(DatabaseKind::Postgres).await;
}
