//! Asking other servers who their account keys are (`/query/accounts`, MSC4243.md §2.3) against
//! a misbehaving peer: a tiny HTTPS server on loopback (`evil.test`, certificate from the test
//! CA) that answers as it is told: honestly, for another domain, signed by the wrong key, with
//! `M_UNKNOWN`, with a forged erasure, leaving keys out, or failing. On both backends: only an
//! honest answer verifies, a signed erasure for the domain erases and a forged one does not,
//! keys are asked in batches of at most 2048, a key asked about and not due again is not asked
//! again, and a failing domain leaves its keys unverified; an erasure log erases only what is
//! validly signed; the asking is counted in `/metrics` (requests by outcome, bytes each way as
//! the peer saw them, keys asked, verified and left unverified).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{Json, Router, extract::State, http::StatusCode, routing::post};
use myelin_room_version::{
    KeyPair, KeyVerification,
    account_key::KeyFormUserId,
    canonical::to_canonical_string,
    query_accounts::{signed_account_answer, signed_erasure},
};
use myelin_store::DatabaseKind;
use myelin_testkit::{TestServer, federation::TestCa, test_backends};
use serde_json::{Map, Value, json};

const EVIL: &str = "evil.test";

/// How the peer answers for each key it is asked about.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Honest,
    OtherDomain,
    WrongKey,
    Unknown,
    ForgedErasure,
    Erased,
    Omit,
    Fail,
}

#[derive(Default)]
struct PeerState {
    mode: Option<Mode>,
    /// The key pairs of the peer's users, by bare key.
    users: Vec<KeyPair>,
    /// The number of keys in each request it was sent.
    requests: Vec<usize>,
    /// Its erasure log: (user index, whether the erasure is validly signed), all at position 7.
    erasures: Vec<(usize, bool)>,
    /// The bytes of each request body it was sent, and of each answer body it sent.
    request_bytes: Vec<usize>,
    response_bytes: Vec<usize>,
}

async fn query_accounts(
    State(state): State<Arc<Mutex<PeerState>>>,
    body: axum::body::Bytes,
) -> (StatusCode, Json<Value>) {
    let (status, answer) = answer_query(&state, &body);
    // `Json` writes the value as `serde_json::to_vec` does.
    state
        .lock()
        .unwrap()
        .response_bytes
        .push(serde_json::to_vec(&answer).unwrap().len());
    (status, Json(answer))
}

fn answer_query(state: &Mutex<PeerState>, body: &[u8]) -> (StatusCode, Value) {
    let mut state = state.lock().unwrap();
    state.request_bytes.push(body.len());
    let body: Value = serde_json::from_slice(body).unwrap();
    let asked: Vec<String> = body["account_keys"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| k.as_str().map(str::to_owned))
        .collect();
    state.requests.push(asked.len());
    let mode = state.mode.unwrap_or(Mode::Honest);
    if mode == Mode::Fail {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"errcode": "M_UNKNOWN", "error": "down"}),
        );
    }
    let liar = KeyPair::from_seed(&[200; 32]);
    let mut answers = Map::new();
    if body.get("erasure").is_some() {
        // The erasure log, listed unrequested (a valid one signed by the key, a forged one by
        // another).
        for (index, valid) in &state.erasures {
            let pair = &state.users[*index];
            let signer = if *valid { pair } else { &liar };
            let erasure = signed_erasure(signer, EVIL);
            answers.insert(
                pair.account_key().as_str().to_owned(),
                serde_json::from_str(&to_canonical_string(&erasure)).unwrap(),
            );
        }
        return (
            StatusCode::OK,
            json!({"account_keys": answers, "erasure": {"id": 7, "has_more": false}}),
        );
    }
    for key in asked {
        let Some(pair) = state
            .users
            .iter()
            .find(|pair| pair.account_key().as_str() == key)
        else {
            answers.insert(key, json!({"errcode": "M_UNKNOWN"}));
            continue;
        };
        let answer = match mode {
            Mode::Honest => Some(signed_account_answer(pair, "mallory", EVIL)),
            Mode::OtherDomain => Some(signed_account_answer(pair, "mallory", "other.test")),
            Mode::WrongKey => Some(signed_account_answer(&liar, "mallory", EVIL)),
            Mode::ForgedErasure => Some(signed_erasure(&liar, EVIL)),
            Mode::Erased => Some(signed_erasure(pair, EVIL)),
            Mode::Unknown => {
                answers.insert(key, json!({"errcode": "M_UNKNOWN"}));
                continue;
            }
            Mode::Omit | Mode::Fail => None,
        };
        if let Some(answer) = answer {
            answers.insert(
                key,
                serde_json::from_str(&to_canonical_string(&answer)).unwrap(),
            );
        }
    }
    (StatusCode::OK, json!({"account_keys": answers}))
}

struct Peer {
    addr: SocketAddr,
    state: Arc<Mutex<PeerState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Peer {
    async fn start(ca: &TestCa, users: usize) -> Peer {
        let (cert, key) = ca.issue(EVIL);
        let tls = myelin::tls::server_config(&cert, &key).unwrap();
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let listener = myelin::tls::TlsListener::new(tcp, tls).unwrap();
        let state = Arc::new(Mutex::new(PeerState {
            users: (0..users)
                .map(|i| {
                    let mut seed = [7u8; 32];
                    seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
                    KeyPair::from_seed(&seed)
                })
                .collect(),
            ..PeerState::default()
        }));
        let app = Router::new()
            .route(
                "/_matrix/federation/unstable/org.matrix.msc4243/query/accounts",
                post(query_accounts),
            )
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Peer { addr, state, task }
    }

    /// The key-form ids of users `range` of the peer.
    fn ids(&self, range: std::ops::Range<usize>) -> Vec<String> {
        let state = self.state.lock().unwrap();
        state.users[range]
            .iter()
            .map(|pair| pair.account_key().user_id(EVIL))
            .collect()
    }

    fn set_mode(&self, mode: Mode) {
        self.state.lock().unwrap().mode = Some(mode);
    }

    fn take_requests(&self) -> Vec<usize> {
        std::mem::take(&mut self.state.lock().unwrap().requests)
    }
}

async fn start_myelin(kind: DatabaseKind, ca: &TestCa, peer: &Peer) -> TestServer {
    TestServer::start_with(kind, |config| {
        config.server_name = "hs.test".try_into().unwrap();
        config.federation.trusted_ca_files = vec![ca.cert_path()];
        config.federation.allow_private_addresses = true;
        config
            .federation
            .destination_overrides
            .insert(EVIL.to_owned(), peer.addr.to_string());
        config.federation.backoff_min_secs = 1;
    })
    .await
}

fn state_of(server: &TestServer, id: &str) -> KeyVerification {
    server
        .services()
        .account_keys
        .lookup(&KeyFormUserId::parse(id).unwrap())
}

#[tokio::test]
async fn only_an_honest_answer_for_the_domain_verifies_a_key() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let peer = Peer::start(&ca, 9).await;
        let server = start_myelin(kind, &ca, &peer).await;
        let verifier = &server.services().account_verifier;
        // One key per lie: each stays unverified, and what was said is recorded.
        let lies = [
            (Mode::OtherDomain, "wrong_domain"),
            (Mode::WrongKey, "bad_signature"),
            (Mode::Unknown, "unknown"),
            (Mode::ForgedErasure, "bad_signature"),
            (Mode::Omit, "missing"),
            (Mode::Fail, "unreachable"),
        ];
        for (i, (mode, outcome)) in lies.iter().enumerate() {
            peer.set_mode(*mode);
            let ids = peer.ids(i..i + 1);
            let asked = verifier.verify(&ids).await.unwrap();
            assert_eq!(asked.unverified, 1, "{kind:?} {mode:?}");
            assert_eq!(
                state_of(&server, &ids[0]),
                KeyVerification::Unverified,
                "{kind:?} {mode:?}"
            );
            let row = server
                .store()
                .account_keys_by_user_ids(&ids)
                .await
                .unwrap()
                .pop()
                .unwrap();
            assert_eq!(
                row.last_outcome.as_deref(),
                Some(*outcome),
                "{kind:?} {mode:?}"
            );
            assert!(row.next_attempt_ts.is_some(), "{kind:?} {mode:?}");
        }
        // Asked about and not due again: no request, whatever the peer would now say.
        peer.set_mode(Mode::Honest);
        peer.take_requests();
        let asked = verifier.verify(&peer.ids(0..6)).await.unwrap();
        assert_eq!(asked.requests, 0, "{kind:?}");
        assert!(peer.take_requests().is_empty(), "{kind:?}");
        // The failure put the domain in backoff: a new key is not asked about before the
        // window ends (the per-domain backoff every federation request goes through).
        let during_backoff = peer.ids(8..9);
        verifier.verify(&during_backoff).await.unwrap();
        assert!(peer.take_requests().is_empty(), "{kind:?}");
        assert_eq!(
            state_of(&server, &during_backoff[0]),
            KeyVerification::Unverified,
            "{kind:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;

        // Honest: verified under the name; a validly signed erasure for the domain: erased.
        let honest = peer.ids(6..7);
        verifier.verify(&honest).await.unwrap();
        assert_eq!(
            state_of(&server, &honest[0]),
            KeyVerification::Verified {
                account_name: "mallory".to_owned()
            },
            "{kind:?}"
        );
        peer.set_mode(Mode::Erased);
        let erased = peer.ids(7..8);
        verifier.verify(&erased).await.unwrap();
        assert_eq!(
            state_of(&server, &erased[0]),
            KeyVerification::Erased,
            "{kind:?}"
        );
        // A verified key is not asked about again.
        peer.take_requests();
        verifier.verify(&honest).await.unwrap();
        assert!(peer.take_requests().is_empty(), "{kind:?}");
        server.stop().await;
    }
}

#[tokio::test]
async fn keys_are_asked_about_in_batches_of_at_most_2048() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let peer = Peer::start(&ca, 2049).await;
        let server = start_myelin(kind, &ca, &peer).await;
        peer.set_mode(Mode::Honest);
        let ids = peer.ids(0..2049);
        let asked = server
            .services()
            .account_verifier
            .verify(&ids)
            .await
            .unwrap();
        assert_eq!(asked.requests, 2, "{kind:?}");
        assert_eq!(asked.settled, 2049, "{kind:?}");
        let mut sizes = peer.take_requests();
        sizes.sort();
        assert_eq!(sizes, vec![1, 2048], "{kind:?}");
        server.stop().await;
    }
}

/// The erasure log (MSC4243.md §2.4): a validly signed erasure of a key this server verified
/// erases it; a forged one in the same log is ignored and the key stays verified; the position
/// read up to is kept, so the server is not due again.
#[tokio::test]
async fn an_erasure_log_erases_only_validly_signed_keys() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let peer = Peer::start(&ca, 2).await;
        let server = start_myelin(kind, &ca, &peer).await;
        let verifier = &server.services().account_verifier;
        peer.set_mode(Mode::Honest);
        let ids = peer.ids(0..2);
        assert_eq!(verifier.verify(&ids).await.unwrap().settled, 2, "{kind:?}");
        peer.state.lock().unwrap().erasures = vec![(0, false), (1, true)];
        assert_eq!(verifier.poll_due_erasures().await.unwrap(), 1, "{kind:?}");
        assert_eq!(
            state_of(&server, &ids[0]),
            KeyVerification::Verified {
                account_name: "mallory".to_owned()
            },
            "{kind:?}: a forged erasure is ignored"
        );
        assert_eq!(
            state_of(&server, &ids[1]),
            KeyVerification::Erased,
            "{kind:?}"
        );
        // Polled just now: not due again.
        peer.take_requests();
        assert_eq!(verifier.poll_due_erasures().await.unwrap(), 0, "{kind:?}");
        assert!(peer.take_requests().is_empty(), "{kind:?}");
        server.stop().await;
    }
}

/// The value of the sample `name` (with its labels, if any) in the server's `/metrics`.
async fn metric(server: &TestServer, name: &str) -> Option<u64> {
    let text = server
        .http
        .get(server.client_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map(|value| value.trim().parse().unwrap())
}

/// The asking is counted where it is sent and shown by `/metrics`: two requests for 2049 keys
/// (ok), their body bytes each way exactly as the peer read and wrote them, 2049 keys asked and
/// verified, none left unverified; then a failing domain: one request counted as an error, its
/// key asked and left unverified.
#[tokio::test]
async fn the_asking_is_counted_in_metrics() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let peer = Peer::start(&ca, 2050).await;
        let server = start_myelin(kind, &ca, &peer).await;
        let verifier = &server.services().account_verifier;
        let before = verifier.totals();
        assert_eq!(before, Default::default(), "{kind:?}: nothing asked yet");
        peer.set_mode(Mode::Honest);
        let asked = verifier.verify(&peer.ids(0..2049)).await.unwrap();
        let totals = verifier.totals();
        let (sent, answered) = {
            let state = peer.state.lock().unwrap();
            (
                state.request_bytes.iter().sum::<usize>() as u64,
                state.response_bytes.iter().sum::<usize>() as u64,
            )
        };
        assert!(
            sent > 2049 * 43 && answered > sent,
            "{kind:?}: {sent} / {answered}"
        );
        assert_eq!(
            totals,
            myelin_service::account_verification::QueryTotals {
                requests_ok: 2,
                request_bytes: sent,
                response_bytes: answered,
                keys_asked: 2049,
                keys_verified: 2049,
                ..Default::default()
            },
            "{kind:?}"
        );
        assert_eq!(
            (asked.request_bytes, asked.response_bytes),
            (sent, answered),
            "{kind:?}: the round reports what it sent and read"
        );
        let queries = r#"myelin_account_queries_total{outcome="ok"}"#;
        assert_eq!(metric(&server, queries).await, Some(2), "{kind:?}");
        assert_eq!(
            metric(&server, "myelin_account_query_request_bytes_total").await,
            Some(sent),
            "{kind:?}"
        );
        assert_eq!(
            metric(&server, "myelin_account_query_response_bytes_total").await,
            Some(answered),
            "{kind:?}"
        );
        assert_eq!(
            metric(&server, "myelin_account_keys_asked_total").await,
            Some(2049),
            "{kind:?}"
        );
        assert_eq!(
            metric(&server, "myelin_account_keys_verified_total").await,
            Some(2049),
            "{kind:?}"
        );
        assert_eq!(
            metric(&server, "myelin_account_keys_unverified").await,
            Some(0),
            "{kind:?}"
        );
        // A second scrape does not count anything twice.
        assert_eq!(metric(&server, queries).await, Some(2), "{kind:?}");

        peer.set_mode(Mode::Fail);
        verifier.verify(&peer.ids(2049..2050)).await.unwrap();
        let failed = verifier.totals();
        assert_eq!(failed.requests_ok, 2, "{kind:?}");
        assert_eq!(failed.requests_error, 1, "{kind:?}");
        assert_eq!(failed.keys_asked, 2050, "{kind:?}");
        assert_eq!(failed.keys_verified, 2049, "{kind:?}");
        let errors = r#"myelin_account_queries_total{outcome="error"}"#;
        assert_eq!(metric(&server, errors).await, Some(1), "{kind:?}");
        assert_eq!(
            metric(&server, "myelin_account_keys_unverified").await,
            Some(1),
            "{kind:?}"
        );
        server.stop().await;
    }
}

/// A flood of forged members (MSC4243.md §2.8 item 43, case 36): once their claimed domain has
/// disowned keys, the keys that further events name wait for the end of the window (the
/// per-domain backoff's first, 1 s here) and go in one request, not one per transaction.
#[tokio::test]
async fn keys_named_after_a_disowning_answer_wait_for_one_request_per_window() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let peer = Peer::start(&ca, 40).await;
        let server = start_myelin(kind, &ca, &peer).await;
        peer.set_mode(Mode::Unknown);
        let verifier = server.services().account_verifier.clone();
        let ids = peer.ids(0..40);
        // The first transaction's key is asked about at once, and disowned.
        let asked = verifier.verify_later(ids[0..1].to_vec()).await.unwrap();
        assert_eq!(asked.requests, 1, "{kind:?}");
        assert_eq!(peer.take_requests(), vec![1], "{kind:?}");
        // Thirteen more transactions within the window: nothing is asked yet.
        for chunk in ids[1..40].chunks(3) {
            let asked = verifier.verify_later(chunk.to_vec()).await.unwrap();
            assert_eq!(asked.requests, 0, "{kind:?}");
        }
        assert!(peer.take_requests().is_empty(), "{kind:?}");
        // When the window ends, one request about all 39.
        let mut sizes = Vec::new();
        for _ in 0..100 {
            sizes.extend(peer.take_requests());
            if !sizes.is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(sizes, vec![39], "{kind:?}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(peer.take_requests().is_empty(), "{kind:?}");
        for id in &ids {
            assert_eq!(
                state_of(&server, id),
                KeyVerification::Unverified,
                "{kind:?}"
            );
        }
        server.stop().await;
    }
}
