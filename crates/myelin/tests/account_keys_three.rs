//! Account-key rooms (MSC4243, `org.matrix.12.4243`) across three servers, on both databases:
//! two Myelin servers (A holds the room, B has users in it) and a deliberately misbehaving peer E
//! (`myelin_testkit::rogue`: its own server key, account keys it mints, users claiming other
//! domains, lies, silence and forged erasures in `/query/accounts`). The cases of
//! `../shared/MSC4243.md` §6 from 13 on that involve more than one server (13, 14, 15, 17, 18,
//! 22, 26), kicks and bans across servers with names on both sides, every PDU read back over
//! federation carrying only account-key signatures, and concurrent membership and power-level
//! changes after which A, B and E agree on the room's state and A's and B's clients on its
//! timeline.

use std::collections::{HashMap, HashSet};

use myelin_federation::FederationError;
use myelin_room_version::{KeyFormUserId, KeyPair, KeyVerification, Pdu, RoomVersion};
use myelin_store::{DatabaseKind, EventStatus};
use myelin_testkit::{
    TestServer, TestUser, enc,
    federation::{TestCa, start_federation},
    projection::{assert_projected, bare_key, events_in, key_id},
    rogue::{Answer, Rogue},
    rooms::eventually,
    test_backends,
};
use serde_json::{Value, json};

const AK: &str = "org.matrix.12.4243";
const A: &str = "hs-a.test";
const B: &str = "hs-b.test";
const E: &str = "evil.test";

fn lookup(server: &TestServer, id: &str) -> KeyVerification {
    server
        .services()
        .account_keys
        .lookup(&KeyFormUserId::parse(id).unwrap())
}

async fn get_ok(server: &TestServer, user: &TestUser, path: &str) -> Value {
    let (status, body) = server.get(path, &user.access_token).await;
    assert_eq!(status, 200, "{} {path}: {body}", server.name());
    body
}

async fn post_ok(server: &TestServer, user: &TestUser, path: &str, body: Value) -> Value {
    let (status, reply) = server.post(path, &user.access_token, body).await;
    assert_eq!(status, 200, "{} {path}: {reply}", server.name());
    reply
}

async fn send_text(server: &TestServer, user: &TestUser, room: &str, body: &str) -> String {
    let (status, reply) = server
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
                enc(room),
                enc(body)
            ),
            &user.access_token,
            json!({"msgtype": "m.text", "body": body}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    reply["event_id"].as_str().unwrap().to_owned()
}

/// What `reader`'s client reads of the room on `server`: `/messages`, `/sync`, `/state`,
/// `/members` and `/joined_members`, in one JSON value.
async fn client_view(server: &TestServer, reader: &TestUser, room: &str) -> Value {
    let r = enc(room);
    let mut view = serde_json::Map::new();
    for (name, path) in [
        (
            "messages",
            format!("/_matrix/client/v3/rooms/{r}/messages?dir=b&limit=200"),
        ),
        ("sync", "/_matrix/client/v3/sync?timeout=0".to_owned()),
        ("state", format!("/_matrix/client/v3/rooms/{r}/state")),
        ("members", format!("/_matrix/client/v3/rooms/{r}/members")),
        (
            "joined_members",
            format!("/_matrix/client/v3/rooms/{r}/joined_members"),
        ),
    ] {
        let body = get_ok(server, reader, &path).await;
        // Of a sync, the rooms (presence and the like are not room events).
        let body = if name == "sync" {
            body["rooms"].clone()
        } else {
            body
        };
        view.insert(name.to_owned(), body);
    }
    Value::Object(view)
}

/// Whether `reader` on `server` shows `user_id` (an account-name id) joined.
async fn shows_joined(server: &TestServer, reader: &TestUser, room: &str, user_id: &str) -> bool {
    let members = get_ok(
        server,
        reader,
        &format!("/_matrix/client/v3/rooms/{}/joined_members", enc(room)),
    )
    .await;
    members["joined"].get(user_id).is_some()
}

/// `user_id`'s membership as `reader`'s client reads it on `server`.
async fn membership(
    server: &TestServer,
    reader: &TestUser,
    room: &str,
    user_id: &str,
) -> Option<String> {
    myelin_testkit::rooms::membership(server, reader, room, user_id).await
}

/// The room's current state on `server` as its store holds it: (type, state key) → event id.
async fn stored_state(server: &TestServer, room: &str) -> HashMap<(String, String), String> {
    let store = server.store();
    let room_nid = store.room(room).await.unwrap().unwrap().room_nid;
    store
        .current_state(room_nid, None)
        .await
        .unwrap()
        .into_iter()
        .map(|row| {
            (
                (row.event_type, row.state_key.unwrap_or_default()),
                row.event_id,
            )
        })
        .collect()
}

async fn stored_status(server: &TestServer, event_id: &str) -> Option<EventStatus> {
    server
        .store()
        .event(event_id)
        .await
        .unwrap()
        .map(|row| row.status)
}

fn refused_with(result: Result<Value, FederationError>) -> u16 {
    match result {
        Err(FederationError::Status { status, .. }) => status,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Two Myelin servers and the rogue E, federating over TLS, with alice of A, bob of B, and
/// alice's public account-key room that bob joined (both sides show both by name).
struct World {
    servers: Vec<TestServer>,
    rogue: Rogue,
    alice: TestUser,
    bob: TestUser,
    room: String,
    _ca: TestCa,
}

impl World {
    async fn start(kind: DatabaseKind, create: Value) -> World {
        let ca = TestCa::new();
        let mut rogue = Rogue::start(&ca, E).await;
        let rogue_addr = rogue.addr().to_string();
        let servers = start_federation(kind, &ca, &[A, B], |_, config| {
            config
                .federation
                .destination_overrides
                .insert(E.to_owned(), rogue_addr.clone());
            config.federation.backoff_min_secs = 1;
        })
        .await;
        rogue.reach(&servers);
        let alice = servers[0].register("alice").await;
        let bob = servers[1].register("bob").await;
        let mut create = create;
        create["room_version"] = json!(AK);
        let room = servers[0].create_room(&alice, create).await;
        World {
            servers,
            rogue,
            alice,
            bob,
            room,
            _ca: ca,
        }
    }

    fn a(&self) -> &TestServer {
        &self.servers[0]
    }

    fn b(&self) -> &TestServer {
        &self.servers[1]
    }

    /// Bob joins through A; waits until both sides show both joined by name.
    async fn bob_joins(&self) {
        post_ok(
            self.b(),
            &self.bob,
            &format!("/_matrix/client/v3/join/{}?via={A}", enc(&self.room)),
            json!({}),
        )
        .await;
        self.both_show_joined(&self.bob.user_id.clone()).await;
        self.both_show_joined(&self.alice.user_id.clone()).await;
    }

    /// Waits until alice's client on A and bob's on B show `user_id` joined.
    async fn both_show_joined(&self, user_id: &str) {
        for (server, reader) in [(self.a(), &self.alice), (self.b(), &self.bob)] {
            eventually(
                &format!("{} to show {user_id} joined", server.name()),
                || shows_joined(server, reader, &self.room, user_id),
            )
            .await;
        }
    }

    /// E's own user `label` joins through A (E becomes a server of the room), answered for
    /// honestly; waits until both sides show it by name. Its key pair.
    async fn rogue_user_joins(&self, label: &str) -> KeyPair {
        let key = self.rogue.mint(label);
        self.rogue
            .join(A, &self.room, &key, E)
            .await
            .unwrap_or_else(|e| panic!("{label} joins through A: {e}"));
        self.both_show_joined(&format!("@{label}:{E}")).await;
        key
    }

    /// Alice says `text` and waits until bob's client on B shows it: B has everything A had.
    async fn alice_says_and_b_has_it(&self, text: &str) -> String {
        let id = send_text(self.a(), &self.alice, &self.room, text).await;
        eventually(&format!("B to show {text:?}"), || async {
            myelin_testkit::rooms::bodies(self.b(), &self.bob, &self.room)
                .await
                .iter()
                .any(|b| b == text)
        })
        .await;
        id
    }

    async fn stop(self) {
        for server in self.servers {
            server.stop().await;
        }
    }
}

/// Cases 13, 14 and 15 of MSC4243.md §6, with E a stooge server in A's room (its own user
/// joined honestly):
/// - 14: neither A nor B (both resident) gives E a `make_join` for a user of another domain
///   (A's or B's), nor takes its `send_join` of one: 403, nothing stored.
/// - 13: E sends A, in its own transaction, the join and a message of `@K:hs-b.test` (K a key E
///   minted), signed by K: auth passes (A stores both as part of the room, the forged member is
///   in the room's state on A, and on B once B fetched them through A); A asks B, B disowns
///   the key (`M_UNKNOWN`), so it stays unverified; B never treats it as its own; no client on
///   A or B sees anything of K.
/// - 15: bob's account key leaked to E; `@Kbob:evil.test` joins through E as a member distinct
///   from `@Kbob:hs-b.test` (both in the room's state); E vouches for it with bob's key's valid
///   signature, but A keeps the key verified for B only, so the copy stays unverified and its
///   message reaches no client, while bob's own go on showing by name.
#[tokio::test]
async fn a_stooge_server_cannot_speak_for_another_domain() {
    for kind in test_backends() {
        let w = World::start(kind, json!({"preset": "public_chat"})).await;
        w.bob_joins().await;
        let (a, b, rogue, room) = (w.a(), w.b(), &w.rogue, w.room.clone());
        let mallory = w.rogue_user_joins("mallory").await;

        // [14] make_join for another domain's user from origin E: 403 from both residents.
        let k = KeyPair::from_seed(&[13; 32]);
        let k_bare = k.account_key().as_str().to_owned();
        for (resident, victim) in [(A, B), (B, A), (A, A), (B, B)] {
            let forged = k.account_key().user_id(victim);
            let status = refused_with(rogue.make_join(resident, &room, &forged).await);
            assert_eq!(
                status, 403,
                "{kind:?}: make_join at {resident} for {forged}"
            );
        }
        // Nor send_join of such a join, signed by the key.
        let k_b = k.account_key().user_id(B);
        for resident in [A, B] {
            let view = if resident == A { a } else { b };
            let join = rogue
                .build_on(
                    view,
                    &room,
                    &k,
                    B,
                    "m.room.member",
                    Some(&k_b),
                    json!({"membership": "join"}),
                )
                .await;
            match rogue.send_join(resident, &join).await {
                Err(FederationError::Status { status, .. }) => {
                    assert_eq!(status, 403, "{kind:?}: send_join at {resident}")
                }
                other => panic!("{kind:?}: send_join at {resident}: {other:?}"),
            }
            assert_eq!(stored_status(view, join.event_id()).await, None, "{kind:?}");
        }

        // [13] Through the stooge's own transaction: auth passes.
        let join = rogue
            .build_on(
                a,
                &room,
                &k,
                B,
                "m.room.member",
                Some(&k_b),
                json!({"membership": "join"}),
            )
            .await;
        let answer = rogue.send(A, "forged-join", &[&join]).await.unwrap();
        assert_eq!(
            answer.get(join.event_id()),
            Some(&None),
            "{kind:?}: {answer:?}"
        );
        let said = rogue
            .build_on(
                a,
                &room,
                &k,
                B,
                "m.room.message",
                None,
                json!({"msgtype": "m.text", "body": "forged words"}),
            )
            .await;
        let answer = rogue.send(A, "forged-message", &[&said]).await.unwrap();
        assert_eq!(
            answer.get(said.event_id()),
            Some(&None),
            "{kind:?}: {answer:?}"
        );
        for id in [join.event_id(), said.event_id()] {
            assert_eq!(
                stored_status(a, id).await,
                Some(EventStatus::Normal),
                "{kind:?}"
            );
        }
        assert_eq!(
            stored_state(a, &room)
                .await
                .get(&("m.room.member".to_owned(), k_b.clone())),
            Some(&join.event_id().to_owned()),
            "{kind:?}"
        );
        // A asks B; B disowns the key.
        eventually("A to hear B disown the forged key", || async {
            a.store()
                .account_keys_by_user_ids(std::slice::from_ref(&k_b))
                .await
                .unwrap()
                .first()
                .is_some_and(|row| row.last_outcome.as_deref() == Some("unknown"))
        })
        .await;
        assert_eq!(lookup(a, &k_b), KeyVerification::Unverified, "{kind:?}");
        // B receives the forged events through A (alice speaks on top of them).
        w.alice_says_and_b_has_it("after the forgery").await;
        eventually("B to hold the forged message", || async {
            stored_status(b, said.event_id()).await == Some(EventStatus::Normal)
        })
        .await;
        assert_eq!(
            stored_state(b, &room)
                .await
                .get(&("m.room.member".to_owned(), k_b.clone())),
            Some(&join.event_id().to_owned()),
            "{kind:?}"
        );
        // A key claiming B's own domain that B never made is no account of B's.
        assert_eq!(lookup(b, &k_b), KeyVerification::Unverified, "{kind:?}");
        assert!(
            b.services()
                .account_keys
                .known_local_user_id(&k_bare)
                .is_none(),
            "{kind:?}"
        );

        // [15] Bob's key, leaked to E, joins as E's: a distinct member, never verified.
        let bob_key_form = key_id(b, &w.bob);
        let bob_bare = bare_key(&bob_key_form);
        let leaked = b.services().account_keys.signing_key("bob").await.unwrap();
        assert_eq!(leaked.account_key().as_str(), bob_bare);
        rogue.adopt(&leaked, "bob");
        let reused = leaked.account_key().user_id(E);
        let reused_join = rogue.join(A, &room, &leaked, E).await.unwrap();
        let reused_said = rogue
            .build_on(
                a,
                &room,
                &leaked,
                E,
                "m.room.message",
                None,
                json!({"msgtype": "m.text", "body": "bob twice"}),
            )
            .await;
        let answer = rogue
            .send(A, "reused-message", &[&reused_said])
            .await
            .unwrap();
        assert_eq!(answer.get(reused_said.event_id()), Some(&None), "{kind:?}");
        let state = stored_state(a, &room).await;
        assert_eq!(
            state.get(&("m.room.member".to_owned(), reused.clone())),
            Some(&reused_join.event_id().to_owned()),
            "{kind:?}"
        );
        assert!(
            state.contains_key(&("m.room.member".to_owned(), bob_key_form.clone())),
            "{kind:?}"
        );
        eventually("A to ask E about the reused key", || async {
            rogue.was_asked(A, &bob_bare)
        })
        .await;
        // E's answer verifies as a signature; A keeps the key B's, records the claim as
        // refused and does not ask again before its retry time.
        eventually("A to record the claim for E as refused", || async {
            a.store()
                .account_keys_by_user_ids(std::slice::from_ref(&reused))
                .await
                .unwrap()
                .first()
                .is_some_and(|row| {
                    row.last_outcome.as_deref() == Some("verified_elsewhere")
                        && row.next_attempt_ts.is_some()
                })
        })
        .await;
        assert_eq!(lookup(a, &reused), KeyVerification::Unverified, "{kind:?}");
        let asked = a
            .services()
            .account_verifier
            .verify(std::slice::from_ref(&reused))
            .await
            .unwrap();
        assert_eq!(
            asked.requests, 0,
            "{kind:?}: asked again about the refused claim"
        );
        assert_eq!(
            lookup(a, &bob_key_form),
            KeyVerification::Verified {
                account_name: "bob".to_owned()
            },
            "{kind:?}"
        );
        send_text(b, &w.bob, &room, "the real bob").await;
        w.alice_says_and_b_has_it("after the copy").await;
        eventually("A to show the real bob's message", || async {
            myelin_testkit::rooms::bodies(a, &w.alice, &room)
                .await
                .iter()
                .any(|body| body == "the real bob")
        })
        .await;
        eventually("B to hold the copy's message", || async {
            stored_status(b, reused_said.event_id()).await == Some(EventStatus::Normal)
        })
        .await;
        assert_eq!(lookup(b, &reused), KeyVerification::Unverified, "{kind:?}");

        // No client on A or B sees K or the copy; everyone else by name.
        let names = [
            (bare_key(&key_id(a, &w.alice)), w.alice.user_id.clone()),
            (bob_bare.clone(), w.bob.user_id.clone()),
            (
                mallory.account_key().as_str().to_owned(),
                format!("@mallory:{E}"),
            ),
        ];
        for (server, reader) in [(a, &w.alice), (b, &w.bob)] {
            let view = client_view(server, reader, &room).await;
            let text = view.to_string();
            for hidden in [
                "forged words",
                "bob twice",
                k_bare.as_str(),
                reused.as_str(),
            ] {
                assert!(
                    !text.contains(hidden),
                    "{kind:?} {}: {hidden} shown: {text}",
                    server.name()
                );
            }
            assert!(text.contains("the real bob"), "{kind:?}: {text}");
            let joined: HashSet<&String> = view["joined_members"]["joined"]
                .as_object()
                .unwrap()
                .keys()
                .collect();
            let expected: HashSet<String> = [
                w.alice.user_id.clone(),
                w.bob.user_id.clone(),
                format!("@mallory:{E}"),
            ]
            .into();
            assert_eq!(
                joined,
                expected.iter().collect(),
                "{kind:?} {}",
                server.name()
            );
            assert_projected(&format!("{kind:?} {}", server.name()), &view, &names);
        }
        w.stop().await;
    }
}

/// Cases 17, 18 and 22 with E as the liar: E's users whose answers are signed by another key,
/// not signed, left out, `M_UNKNOWN`, or (E silent) not given at all stay unverified on A and B
/// (the retry bookkeeping by what was said) and their messages reach no client; E's unrequested
/// and erasure-log entries about bob's key (B's domain), a forged `M_ERASED` and a name, change
/// nothing: bob stays verified as bob on A and his messages show; a genuine erasure of E's own
/// user in the same log erases that user.
#[tokio::test]
async fn lies_silence_and_forged_erasures_from_a_third_server_change_nothing() {
    for kind in test_backends() {
        let w = World::start(kind, json!({"preset": "public_chat"})).await;
        w.bob_joins().await;
        let (a, b, rogue, room) = (w.a(), w.b(), &w.rogue, w.room.clone());
        let mallory = w.rogue_user_joins("mallory").await;
        let bob_key_form = key_id(b, &w.bob);
        let bob_bare = bare_key(&bob_key_form);
        let liar = KeyPair::from_seed(&[66; 32]);

        // Forged statements about bob's key in every answer E gives from now on.
        rogue.add_unrequested(
            &bob_bare,
            Answer::Erased {
                domain: B.to_owned(),
                signer: liar.clone(),
            },
        );
        // Lies per key: [17] signed by another key, no signatures; [18] left out, M_UNKNOWN.
        let cases = [
            (
                "signed_by_another",
                "bad_signature",
                Some(Answer::Name {
                    account_name: "signed_by_another".to_owned(),
                    domain: E.to_owned(),
                    signer: liar.clone(),
                }),
            ),
            (
                "unsigned",
                "bad_signature",
                Some(Answer::Unsigned {
                    account_name: "unsigned".to_owned(),
                    domain: E.to_owned(),
                }),
            ),
            (
                "claimed_for_b",
                "wrong_domain",
                Some(Answer::Name {
                    account_name: "claimed_for_b".to_owned(),
                    domain: B.to_owned(),
                    signer: KeyPair::from_seed(&[0; 32]),
                }),
            ),
            ("left_out", "missing", Some(Answer::Omit)),
            ("disowned", "unknown", Some(Answer::Unknown)),
        ];
        let mut ids = Vec::new();
        for (label, _, answer) in &cases {
            let key = rogue.mint(label);
            // The claim for B's domain is signed by the key itself: only its domain lies.
            let answer = match answer {
                Some(Answer::Name {
                    account_name,
                    domain,
                    ..
                }) if domain == B => Some(Answer::Name {
                    account_name: account_name.clone(),
                    domain: domain.clone(),
                    signer: key.clone(),
                }),
                other => other.clone(),
            };
            if let Some(answer) = answer {
                rogue.answer(&key, answer);
            }
            rogue.join(A, &room, &key, E).await.unwrap();
            let said = rogue
                .build_on(
                    a,
                    &room,
                    &key,
                    E,
                    "m.room.message",
                    None,
                    json!({"msgtype": "m.text", "body": format!("lie {label}")}),
                )
                .await;
            let answer = rogue
                .send(A, &format!("say-{label}"), &[&said])
                .await
                .unwrap();
            assert_eq!(answer.get(said.event_id()), Some(&None), "{kind:?}");
            ids.push((key.account_key().user_id(E), *label));
        }
        // Each stays unverified on A (and on B, which asks E too), with what was said.
        let outcomes: HashMap<&str, &str> = cases
            .iter()
            .map(|(label, outcome, _)| (*label, *outcome))
            .collect();
        for (server, name) in [(a, A), (b, B)] {
            for (id, label) in &ids {
                eventually(
                    &format!("{name} to record E's answer for {label}"),
                    || async {
                        server
                            .store()
                            .account_keys_by_user_ids(std::slice::from_ref(id))
                            .await
                            .unwrap()
                            .first()
                            .is_some_and(|row| row.last_outcome.as_deref() == Some(outcomes[label]))
                    },
                )
                .await;
                assert_eq!(lookup(server, id), KeyVerification::Unverified, "{kind:?}");
            }
        }
        // [18] A key left out is retried sooner than a disowned one.
        let row_of = |id: &String| {
            let id = id.clone();
            async move {
                a.store()
                    .account_keys_by_user_ids(&[id])
                    .await
                    .unwrap()
                    .pop()
                    .unwrap()
            }
        };
        let left_out = row_of(&ids[3].0).await;
        let disowned = row_of(&ids[4].0).await;
        assert!(
            left_out.next_attempt_ts.unwrap() < disowned.next_attempt_ts.unwrap(),
            "{kind:?}: {left_out:?} {disowned:?}"
        );

        // [22] E's erasure log: a forged erasure of bob's key (for B's domain and for E's), and
        // a genuine one of its own mallory.
        for domain in [B, E] {
            rogue.add_to_erasure_log(
                &bob_bare,
                Answer::Erased {
                    domain: domain.to_owned(),
                    signer: liar.clone(),
                },
            );
        }
        rogue.add_to_erasure_log(
            mallory.account_key().as_str(),
            Answer::Erased {
                domain: E.to_owned(),
                signer: mallory.clone(),
            },
        );
        let erased = a
            .services()
            .account_verifier
            .poll_erasures(E, 0)
            .await
            .unwrap();
        assert_eq!(erased, 1, "{kind:?}");
        assert_eq!(
            lookup(a, &mallory.account_key().user_id(E)),
            KeyVerification::Erased,
            "{kind:?}"
        );
        assert_eq!(
            lookup(a, &bob_key_form),
            KeyVerification::Verified {
                account_name: "bob".to_owned()
            },
            "{kind:?}"
        );
        // B reads the same log: its own bob stays its own, E's mallory is erased there too.
        let erased = b
            .services()
            .account_verifier
            .poll_erasures(E, 0)
            .await
            .unwrap();
        assert_eq!(erased, 1, "{kind:?}");
        assert_eq!(
            lookup(b, &bob_key_form),
            KeyVerification::Local {
                account_name: "bob".to_owned()
            },
            "{kind:?}"
        );
        let bob_row = b
            .store()
            .account_keys_by_user_ids(std::slice::from_ref(&bob_key_form))
            .await
            .unwrap()
            .pop()
            .unwrap();
        assert!(bob_row.private_key_enc.is_some(), "{kind:?}");
        assert_eq!(bob_row.account_name.as_deref(), Some("bob"), "{kind:?}");

        // [17] E silent: a new user of E whose every query fails.
        rogue.fail_queries(true);
        let quiet = rogue.mint("quiet");
        rogue.join(A, &room, &quiet, E).await.unwrap();
        let quiet_id = quiet.account_key().user_id(E);
        let said = rogue
            .build_on(
                a,
                &room,
                &quiet,
                E,
                "m.room.message",
                None,
                json!({"msgtype": "m.text", "body": "lie quiet"}),
            )
            .await;
        rogue.send(A, "say-quiet", &[&said]).await.unwrap();
        eventually("A to find E unreachable for quiet", || async {
            a.store()
                .account_keys_by_user_ids(std::slice::from_ref(&quiet_id))
                .await
                .unwrap()
                .first()
                .is_some_and(|row| row.last_outcome.as_deref() == Some("unreachable"))
        })
        .await;
        assert_eq!(
            lookup(a, &quiet_id),
            KeyVerification::Unverified,
            "{kind:?}"
        );

        // Bob is still bob on both sides; nothing E lied about shows.
        send_text(b, &w.bob, &room, "still bob").await;
        w.alice_says_and_b_has_it("after the lies").await;
        eventually("A to show bob's message", || async {
            myelin_testkit::rooms::bodies(a, &w.alice, &room)
                .await
                .iter()
                .any(|body| body == "still bob")
        })
        .await;
        for (server, reader) in [(a, &w.alice), (b, &w.bob)] {
            let view = client_view(server, reader, &room).await;
            let text = view.to_string();
            assert!(!text.contains("lie "), "{kind:?} {}: {text}", server.name());
            assert!(text.contains("still bob"), "{kind:?}: {text}");
            assert!(
                view["joined_members"]["joined"]
                    .get(&w.bob.user_id)
                    .is_some(),
                "{kind:?}: {view}"
            );
        }
        // Mallory, validly erased, is hidden on both.
        for (server, reader) in [(a, &w.alice), (b, &w.bob)] {
            let text = client_view(server, reader, &room).await.to_string();
            assert!(
                !text.contains(&format!("@mallory:{E}")),
                "{kind:?} {}: {text}",
                server.name()
            );
        }
        w.stop().await;
    }
}

/// The signatures a PDU carries, by entity.
fn signers(pdu: &Value) -> Vec<String> {
    let mut out: Vec<String> = pdu["signatures"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    out.sort();
    out
}

/// Reads `event_id` back from `server` over federation (E's signed `/event`) and checks it
/// carries only account-key signatures: its sender's, and for an invite or a restricted join
/// the co-signer's; no server key; and that it verifies with those keys alone.
async fn assert_account_signed(rogue: &Rogue, server: &str, event_id: &str) -> Value {
    let pdu = rogue
        .get_event(server, event_id)
        .await
        .unwrap_or_else(|e| panic!("{event_id} from {server}: {e}"));
    let sender = KeyFormUserId::parse(pdu["sender"].as_str().unwrap())
        .unwrap_or_else(|e| panic!("sender not key form ({e}): {pdu}"));
    let mut allowed = vec![sender.key.as_str().to_owned()];
    if pdu["type"] == "m.room.member"
        && let Some(target) = pdu["state_key"].as_str()
        && let Ok(target) = KeyFormUserId::parse(target)
    {
        allowed.push(target.key.as_str().to_owned());
    }
    for entity in signers(&pdu) {
        assert!(
            allowed.contains(&entity),
            "{server} {event_id}: signed by {entity}: {pdu}"
        );
        let by = pdu["signatures"][&entity].as_object().unwrap();
        assert_eq!(by.keys().collect::<Vec<_>>(), ["ed25519:1"], "{pdu}");
    }
    assert!(
        signers(&pdu).contains(&sender.key.as_str().to_owned()),
        "{server} serves {event_id} without its sender's signature: {pdu}"
    );
    for name in [A, B, E] {
        assert!(pdu["signatures"].get(name).is_none(), "{pdu}");
    }
    let version = RoomVersion::get(AK).unwrap();
    let parsed = Pdu::from_federation(pdu.to_string().as_bytes(), version).unwrap();
    myelin_room_version::verify::verify_pdu(&parsed, version, &Default::default())
        .unwrap_or_else(|e| panic!("{server} {event_id}: {e}: {pdu}"));
    pdu
}

/// The room's events as A stores them, oldest first: (event id, type).
async fn stored_events(server: &TestServer, room: &str) -> Vec<(String, Value)> {
    let store = server.store();
    let room_nid = store.room(room).await.unwrap().unwrap().room_nid;
    store
        .room_events(room_nid, i64::MIN, i64::MAX, false, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|row| (row.event_id, serde_json::from_str(&row.json).unwrap()))
        .collect()
}

/// Case 26 with a third server, then kicks and bans across servers: alice (A) invites bob (B)
/// by name; B rewrites the invite to bob's key and co-signs; A signs and sends it; E, a third
/// server of the room, receives the co-signed invite and it verifies with the account keys
/// alone; clients on A and B show `@bob:hs-b.test` invited by `@alice:hs-a.test`. Bob joins,
/// chats, is kicked, joins again, is banned and refused: both sides show every step by name,
/// with `sender_account` on every event; carol of B, never a member, is banned by name
/// (pre-emptively, through `/ban`) and her join refused; every event of the room, read back from A and from B
/// over federation by E, carries only its sender's account-key signature (and the invitee's
/// co-signature on the invite); E checked every PDU it was sent.
#[tokio::test]
async fn an_invite_co_signed_across_servers_is_taken_by_a_third_and_kicks_and_bans_show_names() {
    for kind in test_backends() {
        let w = World::start(kind, json!({"preset": "public_chat"})).await;
        let (a, b, rogue, room) = (w.a(), w.b(), &w.rogue, w.room.clone());
        let r = enc(&room);
        // E is a server of the room before the invite.
        let mallory = rogue.mint("mallory");
        rogue.join(A, &room, &mallory, E).await.unwrap();
        eventually("A to show mallory", || {
            shows_joined(a, &w.alice, &room, "@mallory:evil.test")
        })
        .await;
        let bob_key_form = key_id(b, &w.bob);
        let alice_key_form = key_id(a, &w.alice);

        // [26] The invite v2 rewrite.
        post_ok(
            a,
            &w.alice,
            &format!("/_matrix/client/v3/rooms/{r}/invite"),
            json!({"user_id": w.bob.user_id}),
        )
        .await;
        let invite = eventually_received(rogue, |pdu| {
            pdu["type"] == "m.room.member" && pdu["content"]["membership"] == "invite"
        })
        .await;
        assert_eq!(invite.origin, A, "{kind:?}");
        assert_eq!(invite.verified, Ok(()), "{kind:?}: {:?}", invite.json);
        assert_eq!(invite.json["state_key"], json!(bob_key_form), "{kind:?}");
        let mut wanted = vec![bare_key(&alice_key_form), bare_key(&bob_key_form)];
        wanted.sort();
        assert_eq!(signers(&invite.json), wanted, "{kind:?}: {:?}", invite.json);
        assert_eq!(
            membership(a, &w.alice, &room, &w.bob.user_id)
                .await
                .as_deref(),
            Some("invite"),
            "{kind:?}"
        );
        eventually("B to show bob his invite by name", || async {
            let sync = get_ok(b, &w.bob, "/_matrix/client/v3/sync?timeout=0").await;
            sync["rooms"]["invite"][&room]["invite_state"]["events"]
                .as_array()
                .is_some_and(|events| {
                    events.iter().any(|e| {
                        e["type"] == "m.room.member"
                            && e["state_key"] == json!(w.bob.user_id)
                            && e["sender"] == json!(w.alice.user_id)
                    })
                })
        })
        .await;

        // Bob joins and chats; then kick, rejoin, ban, refused.
        post_ok(
            b,
            &w.bob,
            &format!("/_matrix/client/v3/join/{r}?via={A}"),
            json!({}),
        )
        .await;
        w.both_show_joined(&w.bob.user_id.clone()).await;
        send_text(b, &w.bob, &room, "hello from b").await;
        w.alice_says_and_b_has_it("welcome bob").await;
        for (action, expected) in [("kick", "leave"), ("ban", "ban")] {
            if action == "ban" {
                post_ok(
                    b,
                    &w.bob,
                    &format!("/_matrix/client/v3/join/{r}?via={A}"),
                    json!({}),
                )
                .await;
                w.both_show_joined(&w.bob.user_id.clone()).await;
            }
            post_ok(
                a,
                &w.alice,
                &format!("/_matrix/client/v3/rooms/{r}/{action}"),
                json!({"user_id": w.bob.user_id, "reason": action}),
            )
            .await;
            for (server, reader) in [(a, &w.alice), (b, &w.bob)] {
                eventually(
                    &format!("{} to show bob {expected}", server.name()),
                    || async {
                        membership(server, reader, &room, &w.bob.user_id)
                            .await
                            .as_deref()
                            == Some(expected)
                    },
                )
                .await;
            }
        }
        let (status, body) = b
            .post(
                &format!("/_matrix/client/v3/join/{r}?via={A}"),
                &w.bob.access_token,
                json!({}),
            )
            .await;
        assert_eq!(status, 403, "{kind:?}: a banned user's join: {body}");

        // A pre-emptive ban of carol of B, never a member, by name (`/ban` at B): the ban
        // carries her key, reaches E, verifies there, and both sides show it by name.
        let carol = b.register("carol").await;
        let carol_key_form = key_id(b, &carol);
        post_ok(
            a,
            &w.alice,
            &format!("/_matrix/client/v3/rooms/{r}/ban"),
            json!({"user_id": carol.user_id, "reason": "pre-emptive"}),
        )
        .await;
        let carol_ban = eventually_received(rogue, |pdu| {
            pdu["type"] == "m.room.member"
                && pdu["state_key"] == json!(carol_key_form)
                && pdu["content"]["membership"] == "ban"
        })
        .await;
        assert_eq!(carol_ban.verified, Ok(()), "{kind:?}: {:?}", carol_ban.json);
        assert_eq!(carol_ban.json["sender"], json!(alice_key_form), "{kind:?}");
        eventually("A to show carol banned by name", || async {
            membership(a, &w.alice, &room, &carol.user_id)
                .await
                .as_deref()
                == Some("ban")
        })
        .await;
        let (status, body) = b
            .post(
                &format!("/_matrix/client/v3/join/{r}?via={A}"),
                &carol.access_token,
                json!({}),
            )
            .await;
        assert_eq!(status, 403, "{kind:?}: a pre-emptively banned join: {body}");

        // Both sides by name, sender_account on every event, no key anywhere else.
        let names = [
            (bare_key(&alice_key_form), w.alice.user_id.clone()),
            (bare_key(&bob_key_form), w.bob.user_id.clone()),
            (
                mallory.account_key().as_str().to_owned(),
                format!("@mallory:{E}"),
            ),
            (bare_key(&carol_key_form), carol.user_id.clone()),
        ];
        let a_view = client_view(a, &w.alice, &room).await;
        assert_projected(&format!("{kind:?} A"), &a_view, &names);
        let a_members: Vec<Value> = a_view["messages"]["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "m.room.member" && e["state_key"] == json!(w.bob.user_id))
            .map(|e| json!([e["sender"], e["content"]["membership"]]))
            .collect();
        // Newest first: ban, join, kick, join, invite.
        assert_eq!(
            a_members,
            vec![
                json!([w.alice.user_id, "ban"]),
                json!([w.bob.user_id, "join"]),
                json!([w.alice.user_id, "leave"]),
                json!([w.bob.user_id, "join"]),
                json!([w.alice.user_id, "invite"]),
            ],
            "{kind:?}"
        );
        // Bob, banned, reads what his server shows him: the ban, by name.
        let filter = enc(r#"{"room":{"include_leave":true}}"#);
        let synced = get_ok(
            b,
            &w.bob,
            &format!("/_matrix/client/v3/sync?timeout=0&filter={filter}"),
        )
        .await;
        assert_projected(&format!("{kind:?} B sync"), &synced["rooms"], &names);
        let mut left = Vec::new();
        events_in(&synced["rooms"]["leave"][&room], &mut left);
        assert!(
            left.iter().any(|e| e["type"] == "m.room.member"
                && e["state_key"] == json!(w.bob.user_id)
                && e["content"]["membership"] == "ban"
                && e["sender"] == json!(w.alice.user_id)),
            "{kind:?}: {synced}"
        );

        // Every event, read back over federation from A and from B, is account-key signed.
        let events = stored_events(a, &room).await;
        assert!(events.len() >= 12, "{kind:?}: {} events", events.len());
        let b_has: HashSet<String> = stored_events(b, &room)
            .await
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        for (id, _) in &events {
            assert_account_signed(rogue, A, id).await;
            if b_has.contains(id) {
                let from_b = assert_account_signed(rogue, B, id).await;
                let from_a = rogue.get_event(A, id).await.unwrap();
                assert_eq!(from_a["signatures"], from_b["signatures"], "{kind:?} {id}");
            }
        }
        // Every PDU E was sent verifies with account keys alone.
        let received = rogue.received();
        assert!(received.len() >= 7, "{kind:?}: {}", received.len());
        for pdu in &received {
            assert_eq!(pdu.verified, Ok(()), "{kind:?}: {:?}", pdu.json);
        }
        w.stop().await;
    }
}

/// Waits until E has been sent a PDU matching `matches`; returns it.
async fn eventually_received(
    rogue: &Rogue,
    matches: impl Fn(&Value) -> bool,
) -> myelin_testkit::rogue::Received {
    eventually("E to receive the PDU", || async {
        rogue.received().iter().any(|r| matches(&r.json))
    })
    .await;
    rogue
        .received()
        .into_iter()
        .find(|r| matches(&r.json))
        .unwrap()
}

/// Whether `server` holds every event `other` has in the room's timeline.
async fn holds_all_of(server: &TestServer, other: &TestServer, room: &str) -> bool {
    for (id, _) in stored_events(other, room).await {
        if server.store().event(&id).await.unwrap().is_none() {
            return false;
        }
    }
    true
}

/// The room's forward extremities on `server`, sorted.
async fn head(server: &TestServer, room: &str) -> Vec<String> {
    let store = server.store();
    let nid = store.room(room).await.unwrap().unwrap().room_nid;
    let mut ids = store
        .send_context(nid, &[], None)
        .await
        .unwrap()
        .head
        .prev_event_ids;
    ids.sort();
    ids
}

/// Whether `x` is an ancestor of `y` in the DAG `prevs` (event id → prev event ids).
fn is_ancestor(prevs: &HashMap<String, Vec<String>>, x: &str, y: &str) -> bool {
    let mut stack = vec![y.to_owned()];
    let mut seen = HashSet::new();
    while let Some(id) = stack.pop() {
        for prev in prevs.get(&id).into_iter().flatten() {
            if prev == x {
                return true;
            }
            if seen.insert(prev.clone()) {
                stack.push(prev.clone());
            }
        }
    }
    false
}

/// The event ids of the room's timeline as `reader`'s client reads it on `server`, oldest first.
async fn timeline(server: &TestServer, reader: &TestUser, room: &str) -> Vec<String> {
    let page = get_ok(
        server,
        reader,
        &format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=500",
            enc(room)
        ),
    )
    .await;
    let mut ids: Vec<String> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect();
    ids.reverse();
    ids
}

/// Concurrent membership and power-level changes from A and B (and E joining a user at the
/// same time): A's admin kicks dave (B) while dave leaves on B, carol (A) leaves while bob (B)
/// raises erin's level and alice raises carol's, frank (B) joins through B. Once both servers
/// hold the same forward extremities: A's and B's stored current state are the same, E reads
/// the same state from A and from B over federation (`/state_ids` at the last event), and it
/// is that current state; alice's client on A and bob's on B show the same timeline (the same
/// event ids, ordered alike wherever the DAG orders them), every event by name.
#[tokio::test]
async fn concurrent_membership_changes_converge_on_all_three_servers() {
    for kind in test_backends() {
        let w = World::start(kind, json!({"preset": "public_chat"})).await;
        w.bob_joins().await;
        let (a, b, rogue, room) = (w.a(), w.b(), &w.rogue, w.room.clone());
        let r = enc(&room);
        let carol = a.register("carol").await;
        let erin = a.register("erin").await;
        let dave = b.register("dave").await;
        let frank = b.register("frank").await;
        for user in [&carol, &erin] {
            post_ok(a, user, &format!("/_matrix/client/v3/join/{r}"), json!({})).await;
        }
        post_ok(
            b,
            &dave,
            &format!("/_matrix/client/v3/join/{r}?via={A}"),
            json!({}),
        )
        .await;
        let mallory = w.rogue_user_joins("mallory").await;
        for user in [&carol, &erin, &dave] {
            w.both_show_joined(&user.user_id).await;
        }
        // E's ghost will join on the head as it is now, whatever happens before it is sent:
        // at least one fork in the DAG, whatever the timing of the rest.
        let ghost = rogue.mint("ghost");
        let ghost_template = rogue
            .make_join(A, &room, &ghost.account_key().user_id(E))
            .await
            .unwrap();
        let ghost_join = myelin_testkit::rogue::sign_template(ghost_template, &ghost);
        // Bob may change power levels too.
        let pl_path = format!("/_matrix/client/v3/rooms/{r}/state/m.room.power_levels/");
        let mut levels = get_ok(a, &w.alice, &pl_path).await;
        levels["users"][&w.bob.user_id] = json!(100);
        let (status, body) = a.put(&pl_path, &w.alice.access_token, levels.clone()).await;
        assert_eq!(status, 200, "{body}");
        eventually("B to show bob's power", || async {
            let (status, pl) = b.get(&pl_path, &w.bob.access_token).await;
            status == 200 && pl["users"][&w.bob.user_id] == 100
        })
        .await;

        // All at once.
        let mut alice_levels = levels.clone();
        alice_levels["users"][&carol.user_id] = json!(50);
        let mut bob_levels = levels.clone();
        bob_levels["users"][&erin.user_id] = json!(60);
        let kick_path = format!("/_matrix/client/v3/rooms/{r}/kick");
        let leave_path = format!("/_matrix/client/v3/rooms/{r}/leave");
        let join_path = format!("/_matrix/client/v3/join/{r}?via={A}");
        let send_path = format!("/_matrix/client/v3/rooms/{r}/send/m.room.message/c1");
        let kick = a.post(
            &kick_path,
            &w.alice.access_token,
            json!({"user_id": dave.user_id}),
        );
        let dave_leaves = b.post(&leave_path, &dave.access_token, json!({}));
        let carol_leaves = a.post(&leave_path, &carol.access_token, json!({}));
        let alice_pl = a.put(&pl_path, &w.alice.access_token, alice_levels);
        let bob_pl = b.put(&pl_path, &w.bob.access_token, bob_levels);
        let frank_joins = b.post(&join_path, &frank.access_token, json!({}));
        let ghost_joins = rogue.send_join(A, &ghost_join);
        let bob_says = b.put(
            &send_path,
            &w.bob.access_token,
            json!({"msgtype": "m.text", "body": "during"}),
        );
        let (kick, dave_leaves, carol_leaves, alice_pl, bob_pl, frank_joins, ghost_joins, said) = tokio::join!(
            kick,
            dave_leaves,
            carol_leaves,
            alice_pl,
            bob_pl,
            frank_joins,
            ghost_joins,
            bob_says
        );
        // Each server accepted its own users' changes (the kick may find dave gone).
        for (what, reply) in [
            ("dave leaves", &dave_leaves),
            ("carol leaves", &carol_leaves),
            ("alice's levels", &alice_pl),
            ("bob's levels", &bob_pl),
            ("frank joins", &frank_joins),
            ("bob says", &said),
        ] {
            assert_eq!(reply.0, 200, "{kind:?} {what}: {}", reply.1);
        }
        assert!(
            kick.0 == 200 || kick.0 == 403,
            "{kind:?}: kick {} {}",
            kick.0,
            kick.1
        );
        ghost_joins.unwrap();

        // Both servers settle on the same forward extremities, then alice speaks on them.
        // Each server comes to hold every event of the other; then B and A each speak on
        // everything they hold, and both end on the same single extremity.
        eventually("A and B to hold each other's events", || async {
            holds_all_of(a, b, &room).await && holds_all_of(b, a, &room).await
        })
        .await;
        let b_last = send_text(b, &w.bob, &room, "settled on b").await;
        eventually("A to hold B's last word", || async {
            stored_status(a, &b_last).await == Some(EventStatus::Normal)
        })
        .await;
        let last = w.alice_says_and_b_has_it("settled").await;
        eventually("A and B to end on the same extremity", || async {
            head(a, &room).await == vec![last.clone()] && head(b, &room).await == vec![last.clone()]
        })
        .await;

        // The changes forked the DAG (the ghost's join at least) and the forks were merged.
        let forks = stored_events(a, &room)
            .await
            .iter()
            .filter(|(_, pdu)| pdu["prev_events"].as_array().is_some_and(|p| p.len() > 1))
            .count();
        assert!(forks >= 1, "{kind:?}: no fork was merged");
        // All servers agree on the room's state.
        let a_state = stored_state(a, &room).await;
        let b_state = stored_state(b, &room).await;
        assert_eq!(a_state, b_state, "{kind:?}");
        let current: HashSet<String> = a_state.values().cloned().collect();
        for server in [A, B] {
            let (ids, _) = rogue.state_ids(server, &room, &last).await.unwrap();
            let ids: HashSet<String> = ids.into_iter().collect();
            assert_eq!(ids, current, "{kind:?}: E's view through {server}");
        }
        let (s_a, s_b) = (
            rogue.state(A, &room, &last).await.unwrap(),
            rogue.state(B, &room, &last).await.unwrap(),
        );
        let ids_of = |pdus: &[Value]| -> HashSet<String> {
            pdus.iter()
                .map(|p| {
                    Pdu::from_federation(p.to_string().as_bytes(), RoomVersion::get(AK).unwrap())
                        .unwrap()
                        .event_id()
                        .to_owned()
                })
                .collect()
        };
        assert_eq!(ids_of(&s_a), current, "{kind:?}");
        assert_eq!(ids_of(&s_b), current, "{kind:?}");
        // The outcome itself: dave and carol out, frank and ghost in, one set of levels.
        for (user, expected) in [
            (dave.user_id.clone(), "leave"),
            (carol.user_id.clone(), "leave"),
            (frank.user_id.clone(), "join"),
            (format!("@ghost:{E}"), "join"),
        ] {
            for (server, reader) in [(a, &w.alice), (b, &w.bob)] {
                eventually(
                    &format!("{} to show {user} {expected}", server.name()),
                    || async {
                        membership(server, reader, &room, &user).await.as_deref() == Some(expected)
                    },
                )
                .await;
            }
        }
        let pl_a = get_ok(a, &w.alice, &pl_path).await;
        let pl_b = get_ok(b, &w.bob, &pl_path).await;
        assert_eq!(pl_a, pl_b, "{kind:?}");
        // Clients agree on the visible timeline, every event by name.
        let names: Vec<(String, String)> = [
            (a, &w.alice),
            (a, &carol),
            (a, &erin),
            (b, &w.bob),
            (b, &dave),
            (b, &frank),
        ]
        .iter()
        .map(|(server, user)| (bare_key(&key_id(server, user)), user.user_id.clone()))
        .chain([
            (
                mallory.account_key().as_str().to_owned(),
                format!("@mallory:{E}"),
            ),
            (
                ghost.account_key().as_str().to_owned(),
                format!("@ghost:{E}"),
            ),
        ])
        .collect();
        let on_a = timeline(a, &w.alice, &room).await;
        let on_b = timeline(b, &w.bob, &room).await;
        // The same events, but for one a server soft-failed (it came in after that server's
        // own conflicting change, and fails the room's current state there: stored, kept from
        // clients, as the spec says), which the other shows.
        let (set_a, set_b): (HashSet<&String>, HashSet<&String>) =
            (on_a.iter().collect(), on_b.iter().collect());
        for (only, hidden_on, server) in [(&set_a - &set_b, b, B), (&set_b - &set_a, a, A)] {
            for id in only {
                assert_eq!(
                    stored_status(hidden_on, id).await,
                    Some(EventStatus::SoftFailed),
                    "{kind:?}: {id} not shown on {server}"
                );
            }
        }
        assert!(on_a.len() >= 15, "{kind:?}: {}", on_a.len());
        let prevs: HashMap<String, Vec<String>> = stored_events(a, &room)
            .await
            .into_iter()
            .map(|(id, pdu)| {
                let prev = pdu["prev_events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_owned())
                    .collect();
                (id, prev)
            })
            .collect();
        let position: HashMap<&String, usize> =
            on_b.iter().enumerate().map(|(i, id)| (id, i)).collect();
        for (i, x) in on_a.iter().enumerate() {
            for y in &on_a[i + 1..] {
                // x before y on A; if B has them the other way round, the DAG must not order them.
                if let (Some(px), Some(py)) = (position.get(x), position.get(y))
                    && py < px
                {
                    assert!(
                        !is_ancestor(&prevs, x, y) && !is_ancestor(&prevs, y, x),
                        "{kind:?}: {x} and {y} ordered differently"
                    );
                }
                // And both respect the DAG.
                assert!(!is_ancestor(&prevs, y, x), "{kind:?}: {y} shown before {x}");
            }
        }
        for (server, reader) in [(a, &w.alice), (b, &w.bob)] {
            let view = client_view(server, reader, &room).await;
            assert_projected(&format!("{kind:?} {}", server.name()), &view, &names);
        }
        // The events of the concurrent changes too, as both servers serve them: account-key
        // signatures only, the same on A and B.
        for (id, _) in stored_events(a, &room).await {
            let from_a = assert_account_signed(rogue, A, &id).await;
            let from_b = assert_account_signed(rogue, B, &id).await;
            assert_eq!(from_a["signatures"], from_b["signatures"], "{kind:?} {id}");
        }
        w.stop().await;
    }
}
