//! What other servers read of a room, over signed requests between real servers on loopback:
//! `/event`, `/state`, `/state_ids`, `/event_auth`, `/get_missing_events`, `/backfill`. Server
//! A (`hs-a.test`) holds the room; server B (`hs-b.test`) is in it through a join of one of its
//! users, signed with B's own key (the one B's `/key/v2/server` publishes) and handed to A's
//! receive pipeline as A's federation receiver will hand it; server C (`hs-c.test`) is not in
//! it. On both backends.

use std::collections::{BTreeMap, HashMap, HashSet};

use myelin_federation::FederationError;
use myelin_room_version::{
    CanonicalJsonObject, CanonicalJsonValue, RoomVersion,
    pdu::{EventSigner, build_pdu},
};
use myelin_service::{now_millis, rooms::Received};
use myelin_testkit::{
    TestServer, TestUser, enc,
    federation::{TestCa, start_federation},
    test_backends,
};
use ruma::{
    OwnedEventId, OwnedRoomId, OwnedServerName, UInt,
    api::{
        OutgoingRequest,
        federation::{
            authorization::get_event_authorization,
            backfill::get_backfill,
            event::{get_event, get_missing_events, get_room_state, get_room_state_ids},
        },
        path_builder::SinglePath,
    },
};
use serde_json::{Value, json};

/// A, B and C over TLS, and a room of version 10 on A that alice created with `extra` state.
struct World {
    servers: Vec<TestServer>,
    alice: TestUser,
    room_id: String,
    version: &'static RoomVersion,
}

impl World {
    async fn start(kind: myelin_store::DatabaseKind, ca: &TestCa, create: Value) -> World {
        let servers = start_federation(
            kind,
            ca,
            &["hs-a.test", "hs-b.test", "hs-c.test"],
            |_, _| {},
        )
        .await;
        let alice = servers[0].register("alice").await;
        let mut body = json!({"preset": "public_chat", "room_version": "10"});
        if let (Some(body), Some(extra)) = (body.as_object_mut(), create.as_object()) {
            body.extend(extra.clone());
        }
        let room_id = servers[0].create_room(&alice, body).await;
        World {
            servers,
            alice,
            room_id,
            version: RoomVersion::get("10").unwrap(),
        }
    }

    fn a(&self) -> &TestServer {
        &self.servers[0]
    }
    fn b(&self) -> &TestServer {
        &self.servers[1]
    }
    fn c(&self) -> &TestServer {
        &self.servers[2]
    }

    async fn stop(self) {
        for server in self.servers {
            server.stop().await;
        }
    }

    fn room(&self) -> OwnedRoomId {
        OwnedRoomId::try_from(self.room_id.as_str()).unwrap()
    }

    async fn room_nid(&self) -> i64 {
        self.a()
            .store()
            .room(&self.room_id)
            .await
            .unwrap()
            .unwrap()
            .room_nid
    }

    /// The id of the current state event at `(kind, key)` on A.
    async fn state_id(&self, kind: &str, key: &str) -> String {
        self.a()
            .store()
            .current_state(
                self.room_nid().await,
                Some(&[(kind.to_owned(), key.to_owned())]),
            )
            .await
            .unwrap()
            .pop()
            .unwrap_or_else(|| panic!("no {kind} {key} in the room"))
            .event_id
    }

    /// The room's newest event on A and its depth.
    async fn head(&self) -> (String, i64) {
        let head = self
            .a()
            .store()
            .send_context(self.room_nid().await, &[], None)
            .await
            .unwrap()
            .head;
        (head.prev_event_ids[0].clone(), head.max_depth)
    }

    /// An event of `sender` (a user of B) signed with B's key, on top of `prev`.
    #[allow(clippy::too_many_arguments)]
    fn b_event(
        &self,
        sender: &str,
        kind: &str,
        state_key: Option<&str>,
        content: Value,
        prev: &str,
        auth: &[&str],
        depth: i64,
    ) -> myelin_room_version::Pdu {
        let s = |v: &str| CanonicalJsonValue::String(v.to_owned());
        let mut partial = CanonicalJsonObject::new();
        partial.insert("type".to_owned(), s(kind));
        partial.insert("room_id".to_owned(), s(&self.room_id));
        partial.insert("sender".to_owned(), s(sender));
        if let Some(key) = state_key {
            partial.insert("state_key".to_owned(), s(key));
        }
        partial.insert(
            "content".to_owned(),
            CanonicalJsonValue::try_from(content).unwrap(),
        );
        partial.insert(
            "prev_events".to_owned(),
            CanonicalJsonValue::Array(vec![s(prev)]),
        );
        partial.insert(
            "auth_events".to_owned(),
            CanonicalJsonValue::Array(auth.iter().map(|id| s(id)).collect()),
        );
        partial.insert(
            "depth".to_owned(),
            CanonicalJsonValue::Integer(depth.try_into().unwrap()),
        );
        partial.insert(
            "origin_server_ts".to_owned(),
            CanonicalJsonValue::Integer(now_millis().try_into().unwrap()),
        );
        let keys = &self.b().services().server_keys;
        let signer: EventSigner<'_> = keys.event_signer();
        build_pdu(partial, self.version, signer).unwrap()
    }

    /// Hands `pdu` to A's receive pipeline with B's keys, fetched from B as A fetches them.
    async fn a_receives(&self, pdu: &myelin_room_version::Pdu) -> Received {
        let wanted = BTreeMap::from([(server(self.b()), Vec::new())]);
        let keys = self
            .a()
            .services()
            .remote_keys
            .key_map(&wanted, now_millis())
            .await
            .unwrap();
        let json = pdu.canonical_json();
        self.a()
            .services()
            .rooms
            .receive_pdus(&self.room_id, &[json.as_bytes()], &keys)
            .await
            .unwrap()
            .pop()
            .unwrap()
            .outcome
    }

    /// `user` (of B) joins the room on A; returns the join's id.
    async fn b_joins(&self, user: &str) -> String {
        let (prev, depth) = self.head().await;
        let auth = [
            self.state_id("m.room.create", "").await,
            self.state_id("m.room.join_rules", "").await,
            self.state_id("m.room.power_levels", "").await,
        ];
        let auth: Vec<&str> = auth.iter().map(String::as_str).collect();
        let join = self.b_event(
            user,
            "m.room.member",
            Some(user),
            json!({"membership": "join"}),
            &prev,
            &auth,
            depth + 1,
        );
        assert_eq!(self.a_receives(&join).await, Received::Accepted);
        join.event_id().to_owned()
    }

    /// Alice says `body` on A; returns the event id.
    async fn say(&self, body: &str) -> String {
        let (status, reply) = self
            .a()
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
                    enc(&self.room_id),
                    enc(body)
                ),
                &self.alice.access_token,
                json!({"msgtype": "m.text", "body": body}),
            )
            .await;
        assert_eq!(status, 200, "{reply}");
        reply["event_id"].as_str().unwrap().to_owned()
    }

    /// Alice sets a state event on A; returns its id.
    async fn set_state(&self, kind: &str, key: &str, content: Value) -> String {
        let (status, reply) = self
            .a()
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/{kind}/{}",
                    enc(&self.room_id),
                    enc(key)
                ),
                &self.alice.access_token,
                content,
            )
            .await;
        assert_eq!(status, 200, "{reply}");
        reply["event_id"].as_str().unwrap().to_owned()
    }

    /// The event as A stores it.
    async fn stored(&self, event_id: &str) -> myelin_store::EventRow {
        self.a().store().event(event_id).await.unwrap().unwrap()
    }

    /// `request` signed by `from` and sent to A: the answer, or the error's status and body.
    async fn ask<R>(
        &self,
        from: &TestServer,
        request: R,
    ) -> Result<R::IncomingResponse, (u16, Value)>
    where
        R: OutgoingRequest<PathBuilder = SinglePath>,
    {
        match from
            .services()
            .federation
            .send(&server(self.a()), request)
            .await
        {
            Ok(response) => Ok(response),
            Err(FederationError::Status { status, body }) => Err((
                status,
                serde_json::from_str(&body).unwrap_or(Value::String(body)),
            )),
            Err(other) => panic!("federation request failed: {other:?}"),
        }
    }

    /// Each of the six reads, asked by `from` about `event_id`: the status of each.
    async fn all_reads(
        &self,
        from: &TestServer,
        room: &OwnedRoomId,
        event_id: &str,
    ) -> Vec<(&'static str, u16, Value)> {
        let event = OwnedEventId::try_from(event_id).unwrap();
        let outcome = |name: &'static str, result: Result<(), (u16, Value)>| match result {
            Ok(()) => (name, 200, Value::Null),
            Err((status, body)) => (name, status, body),
        };
        vec![
            outcome(
                "event",
                self.ask(from, get_event::v1::Request::new(event.clone()))
                    .await
                    .map(drop),
            ),
            outcome(
                "state",
                self.ask(
                    from,
                    get_room_state::v1::Request::new(event.clone(), room.clone()),
                )
                .await
                .map(drop),
            ),
            outcome(
                "state_ids",
                self.ask(
                    from,
                    get_room_state_ids::v1::Request::new(event.clone(), room.clone()),
                )
                .await
                .map(drop),
            ),
            outcome(
                "event_auth",
                self.ask(
                    from,
                    get_event_authorization::v1::Request::new(room.clone(), event.clone()),
                )
                .await
                .map(drop),
            ),
            outcome(
                "get_missing_events",
                self.ask(
                    from,
                    get_missing_events::v1::Request::new(room.clone(), vec![], vec![event.clone()]),
                )
                .await
                .map(drop),
            ),
            outcome(
                "backfill",
                self.ask(
                    from,
                    get_backfill::v1::Request::new(room.clone(), vec![event], UInt::from(10u32)),
                )
                .await
                .map(drop),
            ),
        ]
    }

    async fn backfill(&self, from: &TestServer, v: &[&str], limit: u32) -> Vec<Value> {
        let v = v
            .iter()
            .map(|id| OwnedEventId::try_from(*id).unwrap())
            .collect();
        let response = self
            .ask(
                from,
                get_backfill::v1::Request::new(self.room(), v, UInt::from(limit)),
            )
            .await
            .expect("backfill");
        assert_eq!(response.origin.as_str(), self.a().name());
        response.pdus.iter().map(parse).collect()
    }

    async fn missing(
        &self,
        earliest: &[&str],
        latest: &[&str],
        limit: u32,
        min_depth: u32,
    ) -> Vec<Value> {
        let ids = |ids: &[&str]| -> Vec<OwnedEventId> {
            ids.iter()
                .map(|id| OwnedEventId::try_from(*id).unwrap())
                .collect()
        };
        let mut request =
            get_missing_events::v1::Request::new(self.room(), ids(earliest), ids(latest));
        request.limit = UInt::from(limit);
        request.min_depth = UInt::from(min_depth);
        let response = self
            .ask(self.b(), request)
            .await
            .expect("get_missing_events");
        response.events.iter().map(parse).collect()
    }

    /// The event ids of PDUs of this room (version 10: the reference hash).
    fn ids(&self, pdus: &[Value]) -> Vec<String> {
        pdus.iter()
            .map(|pdu| {
                let object = myelin_room_version::canonical::value_to_object(pdu.clone()).unwrap();
                myelin_room_version::canonical::event_id(&object, self.version).unwrap()
            })
            .collect()
    }
}

fn server(server: &TestServer) -> OwnedServerName {
    server.config.server_name.clone()
}

fn parse(raw: impl AsRef<serde_json::value::RawValue>) -> Value {
    serde_json::from_str(raw.as_ref().get()).unwrap()
}

fn set(ids: Vec<String>) -> HashSet<String> {
    ids.into_iter().collect()
}

/// The event ids a PDU cites in `auth_events`.
fn auth_events(pdu: &Value) -> Vec<String> {
    pdu["auth_events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_server_in_the_room_reads_events_state_and_auth_chains() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let w = World::start(kind, &ca, json!({})).await;
        let bob_join = w.b_joins("@bob:hs-b.test").await;
        let before_topic = w.say("before the topic").await;
        let topic = w
            .set_state("m.room.topic", "", json!({"topic": "news"}))
            .await;
        let after_topic = w.say("after the topic").await;

        // /event: the one PDU as stored, with A's signature; the transaction names A.
        let response = w
            .ask(
                w.b(),
                get_event::v1::Request::new(OwnedEventId::try_from(before_topic.as_str()).unwrap()),
            )
            .await
            .expect("/event");
        assert_eq!(response.origin.as_str(), "hs-a.test", "{kind:?}");
        let pdu = parse(&response.pdu);
        let stored: Value = serde_json::from_str(&w.stored(&before_topic).await.json).unwrap();
        assert_eq!(pdu, stored, "{kind:?}: served as stored");
        assert!(pdu["signatures"]["hs-a.test"].is_object(), "{pdu}");
        assert!(
            pdu.get("unsigned").is_none(),
            "{kind:?}: no client fields: {pdu}"
        );
        assert_eq!(w.ids(&[pdu]), vec![before_topic.clone()]);

        // /state and /state_ids: the state before the event, which the event itself does not
        // change; the topic is in the state before the next message.
        let state_at = |event: &str| {
            let event = OwnedEventId::try_from(event).unwrap();
            let w = &w;
            async move {
                let full = w
                    .ask(
                        w.b(),
                        get_room_state::v1::Request::new(event.clone(), w.room()),
                    )
                    .await
                    .expect("/state");
                let ids = w
                    .ask(w.b(), get_room_state_ids::v1::Request::new(event, w.room()))
                    .await
                    .expect("/state_ids");
                let pdus: Vec<Value> = full.pdus.iter().map(parse).collect();
                let chain: Vec<Value> = full.auth_chain.iter().map(parse).collect();
                assert_eq!(
                    set(w.ids(&pdus)),
                    set(ids.pdu_ids.iter().map(ToString::to_string).collect()),
                    "/state and /state_ids agree"
                );
                assert_eq!(
                    set(w.ids(&chain)),
                    set(ids.auth_chain_ids.iter().map(ToString::to_string).collect()),
                );
                (pdus, chain)
            }
        };
        let keys = |pdus: &[Value]| -> HashMap<(String, String), String> {
            pdus.iter()
                .zip(w.ids(pdus))
                .map(|(pdu, id)| {
                    let kind = pdu["type"].as_str().unwrap().to_owned();
                    let key = pdu["state_key"].as_str().unwrap().to_owned();
                    ((kind, key), id)
                })
                .collect()
        };
        let topic_key = ("m.room.topic".to_owned(), String::new());
        let at_topic_state = state_at(&topic).await;
        let after_state = state_at(&after_topic).await;
        let at_topic = keys(&at_topic_state.0);
        let after = keys(&after_state.0);
        assert!(
            !at_topic.contains_key(&topic_key),
            "{kind:?}: state before the topic"
        );
        assert_eq!(after.get(&topic_key), Some(&topic), "{kind:?}");
        assert_eq!(
            at_topic.get(&("m.room.member".to_owned(), "@bob:hs-b.test".to_owned())),
            Some(&bob_join)
        );
        // The state before an event is the state after the one before it: A's own record.
        let expected: HashSet<String> = {
            let row = w.stored(&before_topic).await;
            let map = w
                .a()
                .store()
                .state_ids_at_group(row.state_group.unwrap())
                .await
                .unwrap();
            let nids: Vec<i64> = map.event_nids().collect();
            w.a()
                .store()
                .event_ids_by_nids(&nids)
                .await
                .unwrap()
                .into_values()
                .collect()
        };
        assert_eq!(
            set(at_topic.values().cloned().collect()),
            expected,
            "{kind:?}"
        );
        // Each auth chain is complete and holds nothing else: exactly what the state's auth
        // events reach, recursively.
        for (pdus, chain) in [&at_topic_state, &after_state] {
            let chain_ids = set(w.ids(chain));
            let by_id: HashMap<String, &Value> = w
                .ids(pdus)
                .into_iter()
                .zip(pdus)
                .chain(w.ids(chain).into_iter().zip(chain))
                .collect();
            let mut reached = HashSet::new();
            let mut stack: Vec<String> = pdus.iter().flat_map(auth_events).collect();
            while let Some(id) = stack.pop() {
                if reached.insert(id.clone()) {
                    let pdu = by_id
                        .get(&id)
                        .unwrap_or_else(|| panic!("{kind:?}: {id} missing from the auth chain"));
                    stack.extend(auth_events(pdu));
                }
            }
            assert_eq!(chain_ids, reached, "{kind:?}");
        }
        // The room's first event has nothing before it.
        let create = w.state_id("m.room.create", "").await;
        let (empty, empty_chain) = state_at(&create).await;
        assert!(empty.is_empty() && empty_chain.is_empty(), "{kind:?}");

        // /event_auth: the message's whole auth chain, and only it.
        let chain = w
            .ask(
                w.b(),
                get_event_authorization::v1::Request::new(
                    w.room(),
                    OwnedEventId::try_from(after_topic.as_str()).unwrap(),
                ),
            )
            .await
            .expect("/event_auth");
        let chain: Vec<Value> = chain.auth_chain.iter().map(parse).collect();
        let chain_ids = set(w.ids(&chain));
        let by_id: HashMap<String, Value> = w.ids(&chain).into_iter().zip(chain.clone()).collect();
        let message: Value = serde_json::from_str(&w.stored(&after_topic).await.json).unwrap();
        let mut reached = HashSet::new();
        let mut stack = auth_events(&message);
        while let Some(id) = stack.pop() {
            if reached.insert(id.clone()) {
                stack.extend(auth_events(&by_id[&id]));
            }
        }
        assert_eq!(chain_ids, reached, "{kind:?}: complete and nothing more");
        assert!(chain_ids.contains(&create) && !chain_ids.contains(&after_topic));
        assert!(chain_ids.contains(&w.state_id("m.room.power_levels", "").await));

        w.stop().await;
    }
}

#[tokio::test]
async fn missing_events_and_backfill_walk_back_through_prev_events() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let w = World::start(kind, &ca, json!({})).await;
        w.b_joins("@bob:hs-b.test").await;
        let mut m = Vec::new();
        for i in 0..25 {
            m.push(w.say(&format!("m{i}")).await);
        }
        let depth = |pdu: &Value| pdu["depth"].as_i64().unwrap();

        // Between earliest (exclusive) and latest (exclusive), oldest first.
        let between = w.missing(&[&m[3]], &[&m[8]], 10, 0).await;
        assert_eq!(w.ids(&between), m[4..8].to_vec(), "{kind:?}");
        // The limit keeps those nearest the latest event.
        let two = w.missing(&[&m[3]], &[&m[8]], 2, 0).await;
        assert_eq!(w.ids(&two), m[6..8].to_vec(), "{kind:?}");
        // min_depth: nothing shallower.
        let stored_depth = w.stored(&m[6]).await.depth;
        let deep = w
            .missing(&[&m[3]], &[&m[8]], 10, u32::try_from(stored_depth).unwrap())
            .await;
        assert_eq!(w.ids(&deep), m[6..8].to_vec(), "{kind:?}");
        assert!(deep.iter().all(|pdu| depth(pdu) >= stored_depth));
        // A limit past the cap gets the cap (20), from the latest event back.
        let capped = w.missing(&[], &[&m[24]], 500, 0).await;
        assert_eq!(w.ids(&capped), m[4..24].to_vec(), "{kind:?}");

        // /backfill: the given event and those before it, newest first, up to the limit.
        let three = w.backfill(w.b(), &[&m[10]], 3).await;
        assert_eq!(
            w.ids(&three),
            vec![m[10].clone(), m[9].clone(), m[8].clone()],
            "{kind:?}"
        );
        // Everything back to the room's creation, newest first, when the limit allows.
        let all = w.backfill(w.b(), &[&m[24]], 100).await;
        let ids = w.ids(&all);
        assert_eq!(ids.first(), Some(&m[24]), "{kind:?}");
        assert_eq!(ids.last(), Some(&w.state_id("m.room.create", "").await));
        let room_events = w.stored(&m[24]).await.depth; // depths count from 1
        assert_eq!(ids.len() as i64, room_events, "{kind:?}: every event once");
        assert!(
            all.windows(2).all(|p| depth(&p[0]) > depth(&p[1])),
            "newest first"
        );
        // The cap.
        for i in 25..105 {
            m.push(w.say(&format!("m{i}")).await);
        }
        let capped = w.backfill(w.b(), &[&m[104]], 1_000).await;
        assert_eq!(capped.len(), 100, "{kind:?}");
        assert_eq!(
            w.ids(&capped)[..3],
            m[102..105].iter().rev().cloned().collect::<Vec<_>>()[..]
        );

        w.stop().await;
    }
}

#[tokio::test]
async fn servers_not_in_the_room_or_denied_by_its_acl_are_refused_and_unknown_things_are_404() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let w = World::start(kind, &ca, json!({})).await;
        w.b_joins("@bob:hs-b.test").await;
        let message = w.say("hello").await;
        let room = w.room();

        // Positive control: B, in the room, may read each.
        for (name, status, body) in w.all_reads(w.b(), &room, &message).await {
            assert_eq!(status, 200, "{kind:?}: B {name}: {body}");
        }
        // C is not in the room: 403 on each.
        for (name, status, body) in w.all_reads(w.c(), &room, &message).await {
            assert_eq!(
                (status, body["errcode"].as_str()),
                (403, Some("M_FORBIDDEN")),
                "{kind:?}: C {name}: {body}"
            );
        }
        // An unknown room or event: 404.
        let nowhere = OwnedRoomId::try_from("!nowhere:hs-a.test").unwrap();
        for (name, status, body) in w.all_reads(w.b(), &nowhere, &message).await {
            if name == "event" {
                continue; // /event names no room
            }
            assert_eq!(
                (status, body["errcode"].as_str()),
                (404, Some("M_NOT_FOUND")),
                "{kind:?}: {name}: {body}"
            );
        }
        let unknown = "$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        for (name, status, body) in w.all_reads(w.b(), &room, unknown).await {
            match name {
                // Walks from events this server does not have find nothing.
                "get_missing_events" | "backfill" => assert_eq!(status, 200, "{kind:?}: {name}"),
                _ => assert_eq!(
                    (status, body["errcode"].as_str()),
                    (404, Some("M_NOT_FOUND")),
                    "{kind:?}: {name}: {body}"
                ),
            }
        }

        // The room's server ACL denies B: 403 on each, though B is in the room.
        w.set_state(
            "m.room.server_acl",
            "",
            json!({"allow": ["*"], "deny": ["hs-b.test"], "allow_ip_literals": false}),
        )
        .await;
        for (name, status, body) in w.all_reads(w.b(), &room, &message).await {
            assert_eq!(
                (status, body["errcode"].as_str()),
                (403, Some("M_FORBIDDEN")),
                "{kind:?}: B denied {name}: {body}"
            );
        }

        w.stop().await;
    }
}

#[tokio::test]
async fn soft_failed_events_are_served_and_rejected_ones_are_not() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let w = World::start(kind, &ca, json!({})).await;
        w.b_joins("@bob:hs-b.test").await;
        let erin = "@erin:hs-b.test";
        let erin_join = w.b_joins(erin).await;
        let (before_kick, depth) = w.head().await;
        let (status, reply) = w
            .a()
            .post(
                &format!("/_matrix/client/v3/rooms/{}/kick", enc(&w.room_id)),
                &w.alice.access_token,
                json!({"user_id": erin}),
            )
            .await;
        assert_eq!(status, 200, "{reply}");
        let create = w.state_id("m.room.create", "").await;
        let power = w.state_id("m.room.power_levels", "").await;
        // Erin, not knowing she was kicked, speaks on the state before: soft-failed.
        let late = w.b_event(
            erin,
            "m.room.message",
            None,
            json!({"msgtype": "m.text", "body": "still here?"}),
            &before_kick,
            &[&create, &power, &erin_join],
            depth + 1,
        );
        assert_eq!(w.a_receives(&late).await, Received::SoftFailed, "{kind:?}");
        let served = w
            .ask(
                w.b(),
                get_event::v1::Request::new(OwnedEventId::try_from(late.event_id()).unwrap()),
            )
            .await
            .expect("a soft-failed event is served");
        assert_eq!(
            w.ids(&[parse(&served.pdu)]),
            vec![late.event_id().to_owned()]
        );

        // Dave never joined: his message is rejected, and served by none of the reads.
        let dave = "@dave:hs-b.test";
        let (head, depth) = w.head().await;
        let rejected = w.b_event(
            dave,
            "m.room.message",
            None,
            json!({"msgtype": "m.text", "body": "let me in"}),
            &head,
            &[&create, &power],
            depth + 1,
        );
        assert!(
            matches!(w.a_receives(&rejected).await, Received::Rejected(_)),
            "{kind:?}"
        );
        for (name, status, body) in w.all_reads(w.b(), &w.room(), rejected.event_id()).await {
            match name {
                "get_missing_events" | "backfill" => assert_eq!(status, 200, "{kind:?}: {name}"),
                _ => assert_eq!(
                    (status, body["errcode"].as_str()),
                    (404, Some("M_NOT_FOUND")),
                    "{kind:?}: {name}: {body}"
                ),
            }
        }
        // Bob cites it as his prev event and is accepted (on the state before it); walks back
        // from bob's event pass through the rejected one without handing it out.
        let bob_join = w.state_id("m.room.member", "@bob:hs-b.test").await;
        let after = w.b_event(
            "@bob:hs-b.test",
            "m.room.message",
            None,
            json!({"msgtype": "m.text", "body": "after dave"}),
            rejected.event_id(),
            &[&create, &power, &bob_join],
            depth + 2,
        );
        assert_eq!(w.a_receives(&after).await, Received::Accepted, "{kind:?}");
        let walked = w.ids(&w.backfill(w.b(), &[after.event_id()], 100).await);
        assert!(
            !walked.contains(&rejected.event_id().to_owned()),
            "{kind:?}"
        );
        assert!(
            walked.contains(&head),
            "{kind:?}: history behind the rejected event: {walked:?}"
        );
        let missing = w.ids(&w.missing(&[], &[after.event_id()], 5, 0).await);
        assert!(
            !missing.contains(&rejected.event_id().to_owned()),
            "{kind:?}"
        );
        assert_eq!(missing.last(), Some(&head), "{kind:?}: {missing:?}");

        w.stop().await;
    }
}

#[tokio::test]
async fn history_visibility_decides_what_other_servers_see() {
    for kind in test_backends() {
        let ca = TestCa::new();
        // Only members see events sent while they were members.
        let w = World::start(
            kind,
            &ca,
            json!({"initial_state": [{"type": "m.room.history_visibility", "content": {"history_visibility": "joined"}}]}),
        )
        .await;
        let secret = w.say("before B was here").await;
        w.b_joins("@bob:hs-b.test").await;
        let open = w.say("after B came").await;
        let event = |id: &str| {
            let id = OwnedEventId::try_from(id).unwrap();
            let w = &w;
            async move {
                parse(
                    &w.ask(w.b(), get_event::v1::Request::new(id))
                        .await
                        .expect("/event")
                        .pdu,
                )
            }
        };
        // B sees what was sent while it was in the room, and the redacted form of the rest.
        assert_eq!(
            event(&open).await["content"]["body"],
            "after B came",
            "{kind:?}"
        );
        let hidden = event(&secret).await;
        assert_eq!(hidden["content"], json!({}), "{kind:?}: redacted: {hidden}");
        assert_eq!(
            w.ids(std::slice::from_ref(&hidden)),
            vec![secret.clone()],
            "same event"
        );
        // Walks through history redact alike.
        let walked = w.backfill(w.b(), &[&open], 100).await;
        let by_id: HashMap<String, Value> = w.ids(&walked).into_iter().zip(walked).collect();
        assert_eq!(by_id[&secret]["content"], json!({}), "{kind:?}");
        assert_eq!(by_id[&open]["content"]["body"], "after B came");
        let missing = w.missing(&[], &[&open], 20, 0).await;
        let by_id: HashMap<String, Value> = w.ids(&missing).into_iter().zip(missing).collect();
        assert_eq!(by_id[&secret]["content"], json!({}), "{kind:?}");
        w.stop().await;

        // World-readable history may be read by a server that is not in the room, and only
        // that: the state is still for servers in the room.
        let ca = TestCa::new();
        let w = World::start(
            kind,
            &ca,
            json!({"initial_state": [{"type": "m.room.history_visibility", "content": {"history_visibility": "world_readable"}}]}),
        )
        .await;
        let public = w.say("for everyone").await;
        let id = OwnedEventId::try_from(public.as_str()).unwrap();
        let pdu = w
            .ask(w.c(), get_event::v1::Request::new(id.clone()))
            .await
            .expect("world-readable /event");
        assert_eq!(
            parse(&pdu.pdu)["content"]["body"],
            "for everyone",
            "{kind:?}"
        );
        let walked = w.backfill(w.c(), &[&public], 5).await;
        assert_eq!(w.ids(&walked)[0], public, "{kind:?}");
        let state = w
            .ask(w.c(), get_room_state_ids::v1::Request::new(id, w.room()))
            .await;
        assert!(matches!(state, Err((403, _))), "{kind:?}: {state:?}");
        w.stop().await;
    }
}
