//! Durability: the real `myelin` binary is killed with SIGKILL at a random moment while several
//! clients send messages with transaction ids, then restarted on the same data directory and
//! database. Twenty rounds, on each backend. After every restart each acknowledged event is
//! there (`/event`), and each txn id sent again (acknowledged or cut off by the kill) returns
//! the event id it had, if it had one; at the end the room's history (`/messages`) holds every
//! acknowledged event exactly once and nothing else.
//!
//! The seed of the kill moments is printed; `MYELIN_DURABILITY_SEED=<n>` replays a run.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use myelin_store::{DatabaseKind, test_support::TestDatabase};
use myelin_testkit::{process::ServerProcess, test_backends};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_myelin");
const ROUNDS: usize = 20;
const CLIENTS: usize = 3;
const ROOM_MESSAGES: &str = "m.room.message";

/// A small deterministic generator (xorshift64*), so that a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low)
    }
}

/// The binary in `dir`, on SQLite there unless `database_url`.
async fn start_server(dir: &Path, database_url: Option<&str>) -> ServerProcess {
    let env: Vec<(&str, &str)> = database_url
        .map(|url| ("MYELIN_DATABASE__URL", url))
        .into_iter()
        .collect();
    ServerProcess::start(BIN, dir, &env).await
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    body: Option<Value>,
) -> reqwest::Result<(u16, Value)> {
    let mut request = http.request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    Ok((status, body))
}

struct User {
    user_id: String,
    token: String,
}

async fn register(http: &reqwest::Client, base: &str, localpart: &str) -> User {
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
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    User {
        user_id: body["user_id"].as_str().unwrap().to_owned(),
        token: body["access_token"].as_str().unwrap().to_owned(),
    }
}

fn send_url(base: &str, room: &str, txn: &str) -> String {
    format!(
        "{base}/rooms/{}/send/{ROOM_MESSAGES}/{txn}",
        myelin_testkit::enc(room)
    )
}

/// What the clients know: per txn id, the event id the server acknowledged (None: sent, and
/// the answer was cut off by the kill).
type Sent = Arc<Mutex<BTreeMap<String, (usize, Option<String>)>>>;

/// One client sending until the server goes away.
async fn send_until_killed(
    base: String,
    room: String,
    user: usize,
    token: String,
    round: usize,
    sent: Sent,
) {
    let http = reqwest::Client::new();
    for n in 0.. {
        let txn = format!("u{user}-r{round}-n{n}");
        sent.lock().unwrap().insert(txn.clone(), (user, None));
        let reply = call(
            &http,
            reqwest::Method::PUT,
            send_url(&base, &room, &txn),
            Some(&token),
            Some(json!({"msgtype": "m.text", "body": txn})),
        )
        .await;
        match reply {
            Ok((200, body)) => {
                let id = body["event_id"].as_str().unwrap().to_owned();
                sent.lock().unwrap().insert(txn, (user, Some(id)));
            }
            // The kill cut the exchange short: the send may or may not have happened.
            Ok(_) | Err(_) => return,
        }
    }
}

/// Every message body in the room, oldest first (paginating backwards from now).
async fn room_bodies(
    http: &reqwest::Client,
    base: &str,
    room: &str,
    token: &str,
) -> Vec<(String, String)> {
    let mut bodies = Vec::new();
    let mut from: Option<String> = None;
    loop {
        let mut url = format!(
            "{base}/rooms/{}/messages?dir=b&limit=500",
            myelin_testkit::enc(room)
        );
        if let Some(from) = &from {
            url.push_str(&format!("&from={from}"));
        }
        let (status, body) = call(http, reqwest::Method::GET, url, Some(token), None)
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
        for event in body["chunk"].as_array().unwrap() {
            if event["type"] == ROOM_MESSAGES {
                bodies.push((
                    event["content"]["body"].as_str().unwrap().to_owned(),
                    event["event_id"].as_str().unwrap().to_owned(),
                ));
            }
        }
        match body["end"].as_str() {
            Some(end) if !body["chunk"].as_array().unwrap().is_empty() => {
                from = Some(end.to_owned());
            }
            _ => break,
        }
    }
    bodies.reverse();
    bodies
}

async fn kill_during_sends(kind: DatabaseKind) {
    let seed = std::env::var("MYELIN_DURABILITY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("durability on {kind:?}: MYELIN_DURABILITY_SEED={seed}");
    let mut rng = Rng(seed);
    let started = Instant::now();
    myelin_testkit::install_crypto_provider();

    let db = match kind {
        DatabaseKind::Postgres => Some(TestDatabase::create(DatabaseKind::Postgres).await),
        DatabaseKind::Sqlite => None,
    };
    let url = db.as_ref().map(|db| db.url.as_str());
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();

    let mut server = start_server(dir.path(), url).await;
    let mut users = Vec::new();
    for i in 0..CLIENTS {
        users.push(register(&http, &server.base, &format!("sender{i}")).await);
    }
    let (status, body) = call(
        &http,
        reqwest::Method::POST,
        format!("{}/createRoom", server.base),
        Some(&users[0].token),
        Some(json!({"preset": "public_chat"})),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let room = body["room_id"].as_str().unwrap().to_owned();
    for user in &users[1..] {
        let (status, body) = call(
            &http,
            reqwest::Method::POST,
            format!("{}/join/{}", server.base, myelin_testkit::enc(&room)),
            Some(&user.token),
            Some(json!({})),
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "{} joining: {body}", user.user_id);
    }

    // Every txn id ever sent, with the event id it stands for once known.
    let mut known: BTreeMap<String, (usize, Option<String>)> = BTreeMap::new();
    let mut cut_off_total = 0;
    for round in 0..ROUNDS {
        let sent: Sent = Arc::default();
        let clients: Vec<_> = users
            .iter()
            .enumerate()
            .map(|(i, user)| {
                tokio::spawn(send_until_killed(
                    server.base.clone(),
                    room.clone(),
                    i,
                    user.token.clone(),
                    round,
                    sent.clone(),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(rng.between(30, 400))).await;
        server.kill();
        for client in clients {
            client.await.unwrap();
        }
        server = start_server(dir.path(), url).await;

        let sent = std::mem::take(&mut *sent.lock().unwrap());
        for (txn, (user, acknowledged)) in sent {
            let token = &users[user].token;
            if let Some(id) = &acknowledged {
                let (status, event) = call(
                    &http,
                    reqwest::Method::GET,
                    format!(
                        "{}/rooms/{}/event/{}",
                        server.base,
                        myelin_testkit::enc(&room),
                        myelin_testkit::enc(id)
                    ),
                    Some(token),
                    None,
                )
                .await
                .unwrap();
                assert_eq!(
                    status, 200,
                    "round {round}: acknowledged {txn} ({id}) lost: {event}"
                );
                assert_eq!(event["content"]["body"], json!(txn));
            } else {
                cut_off_total += 1;
            }
            // The same txn id again: the event it was acknowledged as, or (cut off) whatever it
            // became, exactly once.
            let (status, body) = call(
                &http,
                reqwest::Method::PUT,
                send_url(&server.base, &room, &txn),
                Some(token),
                Some(json!({"msgtype": "m.text", "body": txn})),
            )
            .await
            .unwrap();
            assert_eq!(status, 200, "round {round}: retrying {txn}: {body}");
            let id = body["event_id"].as_str().unwrap().to_owned();
            if let Some(acknowledged) = &acknowledged {
                assert_eq!(
                    &id, acknowledged,
                    "round {round}: {txn} retried as a new event"
                );
            }
            known.insert(txn, (user, Some(id)));
        }
    }

    // The history: every txn's event exactly once, under the id it was acknowledged with, and
    // no message nobody sent.
    let bodies = room_bodies(&http, &server.base, &room, &users[0].token).await;
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for (body, id) in &bodies {
        assert!(
            seen.insert(body, id).is_none(),
            "{body} is in the room twice"
        );
    }
    assert_eq!(
        seen.len(),
        known.len(),
        "messages in the room vs txn ids sent"
    );
    for (txn, (_, id)) in &known {
        assert_eq!(seen.get(txn.as_str()).copied(), id.as_deref(), "{txn}");
    }
    server.kill();
    eprintln!(
        "durability on {kind:?}: {ROUNDS} kills, {} messages ({cut_off_total} cut off by a kill) in {:.1} s",
        known.len(),
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_sends_survive_sigkill_sqlite() {
    kill_during_sends(DatabaseKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_sends_survive_sigkill_postgres() {
    if !test_backends().contains(&DatabaseKind::Postgres) {
        return;
    }
    kill_during_sends(DatabaseKind::Postgres).await;
}
