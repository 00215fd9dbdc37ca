//! The event graph through the persistence pipeline, with events signed by a simulated second
//! server (`remote.test`, a test signing key) handed to `Rooms::receive_pdus` as the federation
//! receiver will hand them: forks whose state resolves exactly as the room-version crate's state
//! resolution says, rejections with their reasons, soft failures, outliers, content hashes and
//! signatures. On SQLite and PostgreSQL.

use std::collections::{BTreeMap, HashMap, HashSet};

use myelin_room_version::{
    CanonicalJsonObject, CanonicalJsonValue, KeyPair, Pdu, PublicKey, RoomVersion,
    auth::auth_chain,
    pdu::{EventSigner, build_pdu},
    state_res::resolve_state,
    verify::{ServerKey, ServerKeys},
};
use myelin_service::{
    Config, Services,
    accounts::AuthedUser,
    rooms::{CreateRoom, Preset, Received},
};
use myelin_store::{EventStatus, RoomRow, test_support::TestDatabase};
use ruma::UserId;
use serde_json::{Value, json};

const REMOTE: &str = "remote.test";
const REMOTE_KEY_ID: &str = "ed25519:r";

/// The simulated second server: signs events with its key.
struct Remote {
    key: KeyPair,
}

impl Remote {
    fn new() -> Self {
        Remote {
            key: KeyPair::from_seed(&[7; 32]),
        }
    }

    /// What a caller that fetched the remote server's keys hands to the pipeline.
    fn keys(&self) -> ServerKeys {
        let mut keys: ServerKeys = BTreeMap::new();
        keys.entry(REMOTE.to_owned()).or_default().insert(
            REMOTE_KEY_ID.to_owned(),
            ServerKey {
                key: PublicKey::from_bytes(&self.key.public_key()).unwrap(),
                valid_until_ts: u64::MAX,
            },
        );
        keys
    }

    /// A signed event of `sender` (a user of the remote server) citing `prev` and `auth`.
    #[allow(clippy::too_many_arguments)]
    fn event(
        &self,
        version: &RoomVersion,
        room_id: &str,
        sender: &str,
        kind: &str,
        state_key: Option<&str>,
        content: Value,
        prev: &[&str],
        auth: &[&str],
        depth: i64,
        ts: i64,
    ) -> Pdu {
        let mut partial = CanonicalJsonObject::new();
        let s = |v: &str| CanonicalJsonValue::String(v.to_owned());
        partial.insert("type".to_owned(), s(kind));
        partial.insert("room_id".to_owned(), s(room_id));
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
            CanonicalJsonValue::Array(prev.iter().map(|id| s(id)).collect()),
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
            CanonicalJsonValue::Integer(ts.try_into().unwrap()),
        );
        build_pdu(
            partial,
            version,
            EventSigner::Server {
                server_name: REMOTE,
                key_id: REMOTE_KEY_ID,
                key: &self.key,
            },
        )
        .unwrap()
    }
}

/// A server `test` with a room of version 10 that `@alice:test` created as a public chat, and
/// `@bob:remote.test` joined through the pipeline and raised to power 100 by alice.
struct World {
    services: std::sync::Arc<Services>,
    _db: TestDatabase,
    _dir: tempfile::TempDir,
    remote: Remote,
    alice: ruma::OwnedUserId,
    room: RoomRow,
    version: &'static RoomVersion,
    create: String,
    join_rules: String,
    alice_join: String,
    bob_join: String,
    /// Alice's power levels giving bob 100: the room's end once the world is built.
    bob_power: String,
    depth: i64,
}

const BOB: &str = "@bob:remote.test";
const DAVE: &str = "@dave:remote.test";

impl World {
    async fn build(kind: myelin_store::DatabaseKind) -> World {
        let db = TestDatabase::create(kind).await;
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            server_name: "test".try_into().unwrap(),
            data_dir: dir.path().to_owned(),
            ..Config::default()
        };
        config.database.url = Some(db.url.clone());
        let services = Services::start(config).await.unwrap();
        let alice = myelin_store::test_support::create_test_user(&services.store, "alice").await;
        let alice = UserId::parse(alice).unwrap();
        let room_id = services
            .rooms
            .create_room(
                &alice,
                CreateRoom {
                    room_version: Some("10".to_owned()),
                    preset: Some(Preset::PublicChat),
                    ..CreateRoom::default()
                },
            )
            .await
            .unwrap();
        let room = services.store.room(&room_id).await.unwrap().unwrap();
        let version = RoomVersion::get("10").unwrap();
        let state = |kind: &str, key: &str| {
            let services = services.clone();
            let (kind, key, room_nid) = (kind.to_owned(), key.to_owned(), room.room_nid);
            async move {
                services
                    .store
                    .current_state(room_nid, Some(&[(kind, key)]))
                    .await
                    .unwrap()
                    .pop()
                    .unwrap()
            }
        };
        let create = state("m.room.create", "").await.event_id;
        let join_rules = state("m.room.join_rules", "").await.event_id;
        let power = state("m.room.power_levels", "").await.event_id;
        let alice_join = state("m.room.member", alice.as_str()).await.event_id;
        let end = services
            .store
            .send_context(room.room_nid, &[], None)
            .await
            .unwrap()
            .head;
        let remote = Remote::new();
        let join = remote.event(
            version,
            &room_id,
            BOB,
            "m.room.member",
            Some(BOB),
            json!({"membership": "join"}),
            &[end.prev_event_ids[0].as_str()],
            &[&create, &join_rules, &power],
            end.max_depth + 1,
            1_000,
        );
        let world = World {
            services: services.clone(),
            _db: db,
            _dir: dir,
            remote,
            alice: alice.clone(),
            room: room.clone(),
            version,
            create,
            join_rules,
            alice_join,
            bob_join: join.event_id().to_owned(),
            bob_power: String::new(),
            depth: end.max_depth + 1,
        };
        assert_eq!(world.receive(&[&join]).await, vec![Received::Accepted]);
        let bob_power = services
            .rooms
            .send_state_event(
                &alice,
                &room_id,
                "m.room.power_levels",
                "",
                json!({"users": {alice.as_str(): 100, BOB: 100}}),
            )
            .await
            .unwrap();
        World {
            bob_power,
            depth: world.depth + 1,
            ..world
        }
    }

    async fn receive(&self, pdus: &[&Pdu]) -> Vec<Received> {
        let bytes: Vec<String> = pdus.iter().map(|p| p.canonical_json()).collect();
        let refs: Vec<&[u8]> = bytes.iter().map(|b| b.as_bytes()).collect();
        self.receive_bytes(&refs).await
    }

    async fn receive_bytes(&self, bytes: &[&[u8]]) -> Vec<Received> {
        self.services
            .rooms
            .receive_pdus(&self.room.room_id, bytes, &self.remote.keys())
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.outcome)
            .collect()
    }

    /// An event of bob (or another remote user) on top of `prev`.
    #[allow(clippy::too_many_arguments)]
    fn remote_event(
        &self,
        sender: &str,
        kind: &str,
        state_key: Option<&str>,
        content: Value,
        prev: &[&str],
        auth: &[&str],
        ts: i64,
    ) -> Pdu {
        self.remote.event(
            self.version,
            &self.room.room_id,
            sender,
            kind,
            state_key,
            content,
            prev,
            auth,
            self.depth + 1,
            ts,
        )
    }

    async fn status(&self, event_id: &str) -> Option<EventStatus> {
        self.services
            .store
            .event(event_id)
            .await
            .unwrap()
            .map(|row| row.status)
    }

    async fn current_state_ids(&self) -> HashMap<(String, String), String> {
        self.services
            .store
            .current_state(self.room.room_nid, None)
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

    async fn extremity_ids(&self) -> HashSet<String> {
        self.services
            .store
            .send_context(self.room.room_nid, &[], None)
            .await
            .unwrap()
            .head
            .prev_event_ids
            .into_iter()
            .collect()
    }

    async fn alice_says(&self, body: &str) -> String {
        let user = AuthedUser {
            user_id: self.alice.clone(),
            device_id: "DEV".into(),
            is_admin: false,
            token_hash: Vec::new(),
        };
        self.services
            .rooms
            .send_message(
                &user,
                &self.room.room_id,
                "m.room.message",
                json!({"msgtype": "m.text", "body": body}),
                &format!("txn-{body}"),
            )
            .await
            .unwrap()
    }

    /// The state after `event_id` (by key, in event ids), read from the store.
    async fn state_after(&self, event_id: &str) -> HashMap<(String, String), String> {
        let row = self.services.store.event(event_id).await.unwrap().unwrap();
        self.services
            .store
            .state_at_group(row.state_group.unwrap())
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

    /// Every stored event of the room by id, as PDUs.
    async fn all_events(&self, ids: &[&str]) -> HashMap<String, Pdu> {
        let rows = self.services.store.events_by_ids(ids).await.unwrap();
        let mut out = HashMap::new();
        for row in rows {
            let json = myelin_room_version::canonical::parse_object(row.json.as_bytes()).unwrap();
            out.insert(
                row.event_id.clone(),
                Pdu::from_stored(&row.event_id, json, self.version).unwrap(),
            );
        }
        out
    }
}

fn backends() -> Vec<myelin_store::DatabaseKind> {
    myelin_store::test_support::test_backends()
}

/// Concurrent membership and power-level changes on four branches from one point: the room's
/// current state is exactly what the crate's state resolution makes of the four states, the
/// membership table follows it, and the next local event merges every branch.
#[tokio::test]
async fn forks_resolve_to_what_the_crate_says_and_a_local_event_merges_them() {
    for kind in backends() {
        let w = World::build(kind).await;
        let base = w.bob_power.clone();
        let auth_bob = [w.create.as_str(), base.as_str(), w.bob_join.as_str()];
        // Dave joins on one branch; on another bob bans him; on two more bob changes the power
        // levels in two ways.
        let dave_join = w.remote_event(
            DAVE,
            "m.room.member",
            Some(DAVE),
            json!({"membership": "join"}),
            &[&base],
            &[&w.create, &w.join_rules, &base],
            2_000,
        );
        let ban = w.remote_event(
            BOB,
            "m.room.member",
            Some(DAVE),
            json!({"membership": "ban"}),
            &[&base],
            &auth_bob,
            2_001,
        );
        let power_a = w.remote_event(
            BOB,
            "m.room.power_levels",
            Some(""),
            json!({"users": {w.alice.as_str(): 100, BOB: 100, "@carol:remote.test": 50}}),
            &[&base],
            &auth_bob,
            2_002,
        );
        let power_b = w.remote_event(
            BOB,
            "m.room.power_levels",
            Some(""),
            json!({"users": {w.alice.as_str(): 100, BOB: 100, "@erin:remote.test": 50}, "state_default": 60}),
            &[&base],
            &auth_bob,
            2_003,
        );
        // The later power levels arrive first: resolution, not arrival, decides which wins.
        assert_eq!(
            w.receive(&[&dave_join, &ban, &power_b, &power_a]).await,
            vec![Received::Accepted; 4],
            "{kind:?}: each branch is allowed by the state before it and the current state"
        );
        let branches: HashSet<String> = [&dave_join, &ban, &power_a, &power_b]
            .iter()
            .map(|p| p.event_id().to_owned())
            .collect();
        assert_eq!(
            w.extremity_ids().await,
            branches,
            "{kind:?}: four forward extremities"
        );

        // What the crate says, from the four states and their auth chains.
        let mut known: Vec<String> = branches.iter().cloned().collect();
        known.extend(
            [&w.create, &w.join_rules, &w.alice_join, &w.bob_join, &base]
                .into_iter()
                .cloned(),
        );
        let mut states = Vec::new();
        for branch in &branches {
            let state = w.state_after(branch).await;
            known.extend(state.values().cloned());
            states.push(state);
        }
        let ids: Vec<&str> = known.iter().map(String::as_str).collect();
        let mut events = w.all_events(&ids).await;
        // The auth chains reach events no state names any more (alice's first power levels).
        loop {
            let more: Vec<String> = events
                .values()
                .flat_map(|p| p.auth_events().map(str::to_owned).collect::<Vec<_>>())
                .filter(|id| !events.contains_key(id))
                .collect();
            if more.is_empty() {
                break;
            }
            let refs: Vec<&str> = more.iter().map(String::as_str).collect();
            events.extend(w.all_events(&refs).await);
        }
        let chains: Vec<HashSet<String>> = states
            .iter()
            .map(|state| auth_chain(state.values().map(String::as_str), |id| events.get(id)))
            .collect();
        let expected =
            resolve_state(w.version, &states, &chains, |id| events.get(id), None).unwrap();
        assert_eq!(
            w.current_state_ids().await,
            expected,
            "{kind:?}: the current state is the crate's resolution of the four branches"
        );
        assert_eq!(
            expected.get(&("m.room.member".to_owned(), DAVE.to_owned())),
            Some(&ban.event_id().to_owned()),
            "{kind:?}: the ban (a power event) wins over the join"
        );
        assert_eq!(
            expected.get(&("m.room.power_levels".to_owned(), String::new())),
            Some(&power_b.event_id().to_owned()),
            "{kind:?}: of two power levels by the same sender, the later wins"
        );
        let dave = w
            .services
            .store
            .membership(w.room.room_nid, DAVE)
            .await
            .unwrap()
            .map(|(membership, _, _)| membership);
        assert_eq!(
            dave.as_deref(),
            Some("ban"),
            "{kind:?}: memberships follow the resolved state"
        );

        // A remote event citing every branch is judged by their resolution, which its state
        // before is (written as a delta over one branch's state).
        let mut branch_ids: Vec<&str> = branches.iter().map(String::as_str).collect();
        branch_ids.sort();
        let remote_merge = w.remote.event(
            w.version,
            &w.room.room_id,
            BOB,
            "m.room.message",
            None,
            json!({"msgtype": "m.text", "body": "merge"}),
            &branch_ids,
            &[&w.create, power_b.event_id(), &w.bob_join],
            w.depth + 2,
            2_100,
        );
        assert_eq!(
            w.receive(&[&remote_merge]).await,
            vec![Received::Accepted],
            "{kind:?}"
        );
        assert_eq!(
            w.state_after(remote_merge.event_id()).await,
            expected,
            "{kind:?}"
        );
        assert_eq!(
            w.current_state_ids().await,
            expected,
            "{kind:?}: no other end is left"
        );
        assert_eq!(
            w.extremity_ids().await,
            HashSet::from([remote_merge.event_id().to_owned()])
        );

        // Two branches again (bob's topic on one, his message on the other), then a local event
        // cites both and leaves itself the room's only end.
        let topic = w.remote_event(
            BOB,
            "m.room.topic",
            Some(""),
            json!({"topic": "on one branch"}),
            &[remote_merge.event_id()],
            &[&w.create, power_b.event_id(), &w.bob_join],
            2_200,
        );
        let aside = w.remote_event(
            BOB,
            "m.room.message",
            None,
            json!({"msgtype": "m.text", "body": "on the other"}),
            &[remote_merge.event_id()],
            &[&w.create, power_b.event_id(), &w.bob_join],
            2_201,
        );
        assert_eq!(
            w.receive(&[&topic, &aside]).await,
            vec![Received::Accepted; 2]
        );
        let branches: HashSet<String> =
            HashSet::from([topic.event_id().to_owned(), aside.event_id().to_owned()]);
        let mut expected = expected;
        expected.insert(
            ("m.room.topic".to_owned(), String::new()),
            topic.event_id().to_owned(),
        );
        assert_eq!(
            w.current_state_ids().await,
            expected,
            "{kind:?}: the topic's branch wins its key"
        );
        let message = w.alice_says("merged").await;
        let row = w.services.store.event(&message).await.unwrap().unwrap();
        let json: Value = serde_json::from_str(&row.json).unwrap();
        let prevs: HashSet<String> = json["prev_events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            prevs, branches,
            "{kind:?}: the local event merges the branches"
        );
        assert_eq!(w.extremity_ids().await, HashSet::from([message.clone()]));
        assert_eq!(
            w.current_state_ids().await,
            expected,
            "{kind:?}: a message changes no state"
        );
    }
}

/// An event its own auth events do not allow, and one the state before it does not allow, are
/// stored rejected with their reasons, never enter the state and are never an extremity.
#[tokio::test]
async fn rejected_events_are_stored_with_their_reason_and_stay_out_of_the_state() {
    for kind in backends() {
        let w = World::build(kind).await;
        let base = w.bob_power.clone();
        let before = w.current_state_ids().await;
        // Carol never joined: her topic fails against the auth events it cites.
        let carol_topic = w.remote_event(
            "@carol:remote.test",
            "m.room.topic",
            Some(""),
            json!({"topic": "carol"}),
            &[&base],
            &[&w.create, &base],
            3_000,
        );
        // Bob's topic cites his join and power, but sits on history before he joined: the state
        // before it does not have him in the room.
        let early_topic = w.remote_event(
            BOB,
            "m.room.topic",
            Some(""),
            json!({"topic": "too early"}),
            &[&w.join_rules],
            &[&w.create, &base, &w.bob_join],
            3_001,
        );
        let outcomes = w.receive(&[&carol_topic, &early_topic]).await;
        for (outcome, event) in outcomes.iter().zip([&carol_topic, &early_topic]) {
            let Received::Rejected(reason) = outcome else {
                panic!(
                    "{kind:?}: {} was not rejected: {outcome:?}",
                    event.event_id()
                );
            };
            assert!(!reason.is_empty());
            assert_eq!(
                w.status(event.event_id()).await,
                Some(EventStatus::Rejected(reason.clone())),
                "{kind:?}: stored with its reason"
            );
        }
        assert_eq!(
            w.current_state_ids().await,
            before,
            "{kind:?}: no rejected event in the state"
        );
        assert_eq!(w.extremity_ids().await, HashSet::from([base.clone()]));

        // An event citing a rejected one as its prev event builds on the state before it.
        let auth = auth_keys_bob(&w, &base);
        let auth: Vec<&str> = auth.iter().map(String::as_str).collect();
        let after_rejected = w.remote_event(
            BOB,
            "m.room.message",
            None,
            json!({"msgtype": "m.text", "body": "hi"}),
            &[carol_topic.event_id()],
            &auth,
            3_002,
        );
        assert_eq!(
            w.receive(&[&after_rejected]).await,
            vec![Received::Accepted]
        );
        assert_eq!(
            w.state_after(after_rejected.event_id()).await,
            w.state_after(&base).await,
            "{kind:?}: the state after a rejected event is the state before it"
        );
    }
}

fn auth_keys_bob(w: &World, power: &str) -> Vec<String> {
    vec![w.create.clone(), power.to_owned(), w.bob_join.clone()]
}

/// An event allowed by the state before it but not by the current state is stored soft-failed:
/// hidden, never an extremity, so the next local event does not cite it.
#[tokio::test]
async fn a_soft_failed_event_is_stored_but_never_built_on() {
    for kind in backends() {
        let w = World::build(kind).await;
        const ERIN: &str = "@erin:remote.test";
        // Erin joins and alice gives her the power to set the topic...
        let erin_join = w.remote_event(
            ERIN,
            "m.room.member",
            Some(ERIN),
            json!({"membership": "join"}),
            &[&w.bob_power],
            &[&w.create, &w.join_rules, &w.bob_power],
            3_999,
        );
        assert_eq!(w.receive(&[&erin_join]).await, vec![Received::Accepted]);
        let set_power = |users: Value| {
            let w = &w;
            async move {
                w.services
                    .rooms
                    .send_state_event(
                        &w.alice,
                        &w.room.room_id,
                        "m.room.power_levels",
                        "",
                        json!({"users": users}),
                    )
                    .await
                    .unwrap()
            }
        };
        let base = set_power(json!({w.alice.as_str(): 100, BOB: 100, ERIN: 50})).await;
        // ...then takes it away; erin, not knowing, sets the topic on the older state.
        let demote = set_power(json!({w.alice.as_str(): 100, BOB: 100})).await;
        let auth = [w.create.as_str(), base.as_str(), erin_join.event_id()];
        let topic = w.remote.event(
            w.version,
            &w.room.room_id,
            ERIN,
            "m.room.topic",
            Some(""),
            json!({"topic": "from erin"}),
            &[&base],
            &auth,
            w.depth + 3,
            4_000,
        );
        let before = w.current_state_ids().await;
        assert_eq!(w.receive(&[&topic]).await, vec![Received::SoftFailed]);
        assert_eq!(
            w.status(topic.event_id()).await,
            Some(EventStatus::SoftFailed)
        );
        assert_eq!(
            w.current_state_ids().await,
            before,
            "{kind:?}: the state is unchanged"
        );
        assert_eq!(w.extremity_ids().await, HashSet::from([demote.clone()]));
        let message = w.alice_says("after").await;
        let row = w.services.store.event(&message).await.unwrap().unwrap();
        assert!(
            !row.json.contains(topic.event_id()),
            "{kind:?}: a new local event never cites a soft-failed one"
        );
        // Handing it in again changes nothing.
        assert_eq!(w.receive(&[&topic]).await, vec![Received::AlreadyStored]);
    }
}

/// A content hash that does not match keeps only the redacted form; a signature that does not
/// verify keeps nothing.
#[tokio::test]
async fn bad_hashes_are_redacted_and_bad_signatures_dropped() {
    for kind in backends() {
        let w = World::build(kind).await;
        let base = w.bob_power.clone();
        let auth = auth_keys_bob(&w, &base);
        let auth: Vec<&str> = auth.iter().map(String::as_str).collect();
        let message = w.remote_event(
            BOB,
            "m.room.message",
            None,
            json!({"msgtype": "m.text", "body": "original"}),
            &[&base],
            &auth,
            5_000,
        );
        // The body changed after signing: signatures (over the redacted form) still verify,
        // the content hash does not.
        let tampered = message
            .canonical_json()
            .replace("\"original\"", "\"tampered\"");
        assert_eq!(
            w.receive_bytes(&[tampered.as_bytes()]).await,
            vec![Received::Accepted]
        );
        let stored = w
            .services
            .store
            .event(message.event_id())
            .await
            .unwrap()
            .unwrap();
        assert!(
            !stored.json.contains("tampered") && !stored.json.contains("\"body\""),
            "{kind:?}: only the redacted form is stored: {}",
            stored.json
        );

        // Signed by another key under the remote server's key id: dropped, not stored.
        let forged = Remote {
            key: KeyPair::from_seed(&[8; 32]),
        }
        .event(
            w.version,
            &w.room.room_id,
            BOB,
            "m.room.message",
            None,
            json!({"msgtype": "m.text", "body": "forged"}),
            &[message.event_id()],
            &auth,
            w.depth + 2,
            5_001,
        );
        let outcome = w.receive(&[&forged]).await;
        assert!(
            matches!(&outcome[0], Received::Dropped(_)),
            "{kind:?}: {outcome:?}"
        );
        assert_eq!(
            w.status(forged.event_id()).await,
            None,
            "{kind:?}: not stored"
        );
        // Citing no prev events, in a room that has its start: cannot be placed, not stored,
        // and the call still answers (no internal error).
        let unplaced = w.remote_event(
            BOB,
            "m.room.message",
            None,
            json!({"msgtype": "m.text", "body": "from nowhere"}),
            &[],
            &auth,
            5_002,
        );
        let outcome = w.receive(&[&unplaced]).await;
        assert!(
            matches!(&outcome[0], Received::Dropped(_)),
            "{kind:?}: {outcome:?}"
        );
        assert_eq!(
            w.status(unplaced.event_id()).await,
            None,
            "{kind:?}: not stored"
        );
        // The positive control: the same event properly signed is accepted.
        let genuine = w.remote.event(
            w.version,
            &w.room.room_id,
            BOB,
            "m.room.message",
            None,
            json!({"msgtype": "m.text", "body": "forged"}),
            &[message.event_id()],
            &auth,
            w.depth + 2,
            5_001,
        );
        assert_eq!(w.receive(&[&genuine]).await, vec![Received::Accepted]);
    }
}

/// An event citing an event this server lacks is not stored and says what is missing; once the
/// missing event is in, the same event is accepted. Within one batch the order does not matter.
#[tokio::test]
async fn missing_events_are_reported_and_the_event_is_accepted_once_they_arrive() {
    for kind in backends() {
        let w = World::build(kind).await;
        let base = w.bob_power.clone();
        let auth = auth_keys_bob(&w, &base);
        let auth: Vec<&str> = auth.iter().map(String::as_str).collect();
        let say = |body: &str, prev: &str, depth: i64| {
            w.remote.event(
                w.version,
                &w.room.room_id,
                BOB,
                "m.room.message",
                None,
                json!({"msgtype": "m.text", "body": body}),
                &[prev],
                &auth,
                depth,
                6_000 + depth,
            )
        };
        let a = say("a", &base, w.depth + 1);
        let b = say("b", a.event_id(), w.depth + 2);
        assert_eq!(
            w.receive(&[&b]).await,
            vec![Received::Missing(vec![a.event_id().to_owned()])]
        );
        assert_eq!(
            w.status(b.event_id()).await,
            None,
            "{kind:?}: not stored while waiting"
        );
        assert_eq!(w.receive(&[&a]).await, vec![Received::Accepted]);
        assert_eq!(
            w.receive(&[&b]).await,
            vec![Received::Accepted],
            "{kind:?}: accepted later"
        );

        let c = say("c", b.event_id(), w.depth + 3);
        let d = say("d", c.event_id(), w.depth + 4);
        assert_eq!(
            w.receive(&[&d, &c]).await,
            vec![Received::Accepted, Received::Accepted],
            "{kind:?}: a batch is taken in graph order"
        );
        assert_eq!(
            w.extremity_ids().await,
            HashSet::from([d.event_id().to_owned()])
        );
    }
}

/// An outlier is stored for its auth chain only: no state, no place at the room's end, nothing
/// for clients. Once its prev events are known it is handed in as an ordinary event and is
/// upgraded in place (same row), becoming part of the room.
#[tokio::test]
async fn an_outlier_is_invisible_until_upgraded_in_place() {
    for kind in backends() {
        let w = World::build(kind).await;
        let base = w.bob_power.clone();
        let auth = auth_keys_bob(&w, &base);
        let auth: Vec<&str> = auth.iter().map(String::as_str).collect();
        let topic = w.remote_event(
            BOB,
            "m.room.topic",
            Some(""),
            json!({"topic": "outlier first"}),
            &[&base],
            &auth,
            7_000,
        );
        // Carol's event cites no membership of hers: rejected even as an outlier. And one
        // citing an auth event nobody has is not stored.
        let carol = w.remote_event(
            "@carol:remote.test",
            "m.room.topic",
            Some(""),
            json!({"topic": "carol"}),
            &[&base],
            &[&w.create, &base],
            7_001,
        );
        let unknown_auth = w.remote_event(
            BOB,
            "m.room.topic",
            Some(""),
            json!({"topic": "?"}),
            &[&base],
            &[&w.create, &base, "$nobody-has-this"],
            7_002,
        );
        let bytes: Vec<String> = [&topic, &carol, &unknown_auth]
            .iter()
            .map(|p| p.canonical_json())
            .collect();
        let refs: Vec<&[u8]> = bytes.iter().map(|b| b.as_bytes()).collect();
        let outcomes: Vec<Received> = w
            .services
            .rooms
            .receive_outliers(&w.room.room_id, &refs, &w.remote.keys())
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.outcome)
            .collect();
        assert_eq!(outcomes[0], Received::Accepted, "{kind:?}");
        assert!(
            matches!(&outcomes[1], Received::Rejected(_)),
            "{kind:?}: {outcomes:?}"
        );
        assert_eq!(
            outcomes[2],
            Received::Missing(vec!["$nobody-has-this".to_owned()]),
            "{kind:?}"
        );
        assert_eq!(w.status(unknown_auth.event_id()).await, None);

        let before = w.current_state_ids().await;
        let outlier = w
            .services
            .store
            .event(topic.event_id())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(outlier.status, EventStatus::Outlier);
        assert_eq!(
            outlier.state_group, None,
            "{kind:?}: an outlier has no state"
        );
        assert!(
            outlier.stream_ordering < 0,
            "{kind:?}: below every live position"
        );
        assert_eq!(w.extremity_ids().await, HashSet::from([base.clone()]));
        assert_eq!(w.current_state_ids().await, before);
        let latest = w.services.store.events_stream_position().await.unwrap();
        assert!(outlier.stream_ordering < latest);

        // Handed in again with its prev event known: upgraded in place.
        assert_eq!(w.receive(&[&topic]).await, vec![Received::Accepted]);
        let upgraded = w
            .services
            .store
            .event(topic.event_id())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            upgraded.event_nid, outlier.event_nid,
            "{kind:?}: the same row"
        );
        assert_eq!(upgraded.status, EventStatus::Normal);
        assert!(upgraded.state_group.is_some());
        assert!(
            upgraded.stream_ordering > latest,
            "{kind:?}: now at the live end"
        );
        assert_eq!(
            w.extremity_ids().await,
            HashSet::from([topic.event_id().to_owned()])
        );
        assert_eq!(
            w.current_state_ids()
                .await
                .get(&("m.room.topic".to_owned(), String::new())),
            Some(&topic.event_id().to_owned())
        );
    }
}

/// Many branches from other servers do not leave the room with ever more forward extremities:
/// past ten, a local member's dummy event merges them.
/// The fallback for prev events whose history is out of reach: the state after such a prev
/// event (stored as an outlier) is given from elsewhere (`/state_ids`), written as a group only
/// when every event of it is stored, and an event citing it is placed on it.
#[tokio::test]
async fn an_event_on_an_outlier_takes_the_state_given_for_it() {
    for kind in backends() {
        let w = World::build(kind).await;
        let base = w.bob_power.clone();
        let far = w.remote_event(
            BOB,
            "m.room.topic",
            Some(""),
            json!({"topic": "from afar"}),
            &["$an-ancestor-nobody-sent"],
            &[&w.create, &base, &w.bob_join],
            8_000,
        );
        let json = far.canonical_json();
        w.services
            .rooms
            .receive_outliers(&w.room.room_id, &[json.as_bytes()], &w.remote.keys())
            .await
            .unwrap();
        let after = w.remote_event(
            BOB,
            "m.room.message",
            None,
            json!({"msgtype": "m.text", "body": "on top"}),
            &[far.event_id()],
            &[&w.create, &base, &w.bob_join],
            8_001,
        );
        assert_eq!(
            w.receive(&[&after]).await,
            vec![Received::Missing(vec![far.event_id().to_owned()])],
            "{kind:?}: an outlier has no state of its own"
        );
        let state: Vec<String> = w.current_state_ids().await.into_values().collect();
        let mut partial = state.clone();
        partial.push("$not-stored-here".to_owned());
        assert_eq!(
            w.services
                .rooms
                .remote_state_after(&w.room.room_id, far.event_id(), &partial)
                .await
                .unwrap(),
            None,
            "{kind:?}: a state with events this server lacks is not used"
        );
        let group = w
            .services
            .rooms
            .remote_state_after(&w.room.room_id, far.event_id(), &state)
            .await
            .unwrap()
            .expect("every event of the state is stored");
        let json = after.canonical_json();
        let outcomes = w
            .services
            .rooms
            .receive_pdus_with_prev_states(
                &w.room.room_id,
                &[json.as_bytes()],
                &w.remote.keys(),
                &HashMap::from([(far.event_id().to_owned(), group)]),
            )
            .await
            .unwrap();
        assert_eq!(outcomes[0].outcome, Received::Accepted, "{kind:?}");
        let state_after = w.state_after(after.event_id()).await;
        assert_eq!(
            state_after.get(&("m.room.topic".to_owned(), String::new())),
            Some(&far.event_id().to_owned()),
            "{kind:?}: the given state plus the prev event itself"
        );
        assert_eq!(
            w.status(far.event_id()).await,
            Some(EventStatus::Outlier),
            "{kind:?}: the prev event stays where it is"
        );
    }
}

#[tokio::test]
async fn forward_extremities_are_kept_bounded() {
    for kind in backends() {
        let w = World::build(kind).await;
        let base = w.bob_power.clone();
        let auth = auth_keys_bob(&w, &base);
        let auth: Vec<&str> = auth.iter().map(String::as_str).collect();
        let branches: Vec<Pdu> = (0..12)
            .map(|i| {
                w.remote_event(
                    BOB,
                    "m.room.message",
                    None,
                    json!({"msgtype": "m.text", "body": format!("branch {i}")}),
                    &[&base],
                    &auth,
                    8_000 + i,
                )
            })
            .collect();
        // Ten branches stay as they are.
        let first: Vec<&Pdu> = branches[..10].iter().collect();
        assert_eq!(w.receive(&first).await, vec![Received::Accepted; 10]);
        assert_eq!(w.extremity_ids().await.len(), 10, "{kind:?}");
        // Two more: merged.
        let rest: Vec<&Pdu> = branches[10..].iter().collect();
        assert_eq!(w.receive(&rest).await, vec![Received::Accepted; 2]);
        let ends = w.extremity_ids().await;
        assert_eq!(
            ends.len(),
            1,
            "{kind:?}: one dummy event merges the branches"
        );
        let dummy = w
            .services
            .store
            .event(ends.iter().next().unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(dummy.event_type, "org.matrix.dummy_event");
        assert_eq!(dummy.sender, w.alice.as_str());
        let json: Value = serde_json::from_str(&dummy.json).unwrap();
        assert_eq!(json["prev_events"].as_array().unwrap().len(), 12);
    }
}

/// History fetched backwards goes below every live position, by its depth, and changes neither
/// the current state nor the room's end; it is judged by the state it was sent in.
#[tokio::test]
async fn backfilled_events_take_their_own_stream_range() {
    for kind in backends() {
        let w = World::build(kind).await;
        let before_join = w.state_after(&w.bob_join).await;
        let first_power = before_join[&("m.room.power_levels".to_owned(), String::new())].clone();
        let join_depth = w
            .services
            .store
            .event(&w.bob_join)
            .await
            .unwrap()
            .unwrap()
            .depth;
        // Bob's message right after he joined, before alice raised him: older than the end.
        let old = w.remote.event(
            w.version,
            &w.room.room_id,
            BOB,
            "m.room.message",
            None,
            json!({"msgtype": "m.text", "body": "from the past"}),
            &[&w.bob_join],
            &[&w.create, &first_power, &w.bob_join],
            join_depth + 1,
            1_500,
        );
        let ends = w.extremity_ids().await;
        let state = w.current_state_ids().await;
        let live = w.services.store.events_stream_position().await.unwrap();
        let bytes = old.canonical_json();
        let outcome = w
            .services
            .rooms
            .receive_backfill(&w.room.room_id, &[bytes.as_bytes()], &w.remote.keys())
            .await
            .unwrap();
        assert_eq!(outcome[0].outcome, Received::Accepted, "{kind:?}");
        let row = w
            .services
            .store
            .event(old.event_id())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.status, EventStatus::Normal);
        assert!(
            row.stream_ordering < 0,
            "{kind:?}: below every live position"
        );
        assert_eq!(
            w.services.store.events_stream_position().await.unwrap(),
            live
        );
        assert_eq!(
            w.extremity_ids().await,
            ends,
            "{kind:?}: the room's end is unchanged"
        );
        assert_eq!(w.current_state_ids().await, state);
        assert_eq!(w.state_after(old.event_id()).await, before_join);
    }
}

/// A remote redaction is applied with it only when its target is known and its sender may
/// redact it (the target's server, or the redact power level); otherwise it is stored and the
/// target stays as it was.
#[tokio::test]
async fn remote_redactions_apply_only_when_allowed_and_the_target_is_known() {
    for kind in backends() {
        let w = World::build(kind).await;
        let secret = w.alice_says("secret").await;
        let dave_join = w.remote_event(
            DAVE,
            "m.room.member",
            Some(DAVE),
            json!({"membership": "join"}),
            &[&secret],
            &[&w.create, &w.join_rules, &w.bob_power],
            9_000,
        );
        assert_eq!(w.receive(&[&dave_join]).await, vec![Received::Accepted]);
        let redaction = |sender: &str, prev: &str, auth: &[&str], target: &str, ts: i64| {
            w.remote
                .event(
                    w.version,
                    &w.room.room_id,
                    sender,
                    "m.room.redaction",
                    None,
                    json!({}),
                    &[prev],
                    auth,
                    w.depth + 10,
                    ts,
                )
                .redacts_set(w.version, target, &w.remote.key)
        };
        let body_of = |id: String| {
            let services = w.services.clone();
            async move {
                let row = services.store.event(&id).await.unwrap().unwrap();
                let json: Value = serde_json::from_str(&row.json).unwrap();
                (
                    json["content"]["body"].as_str().map(str::to_owned),
                    row.redacted_by,
                )
            }
        };
        // Dave (power 0, another server than alice's) may send a redaction but not apply it.
        let by_dave = redaction(
            DAVE,
            dave_join.event_id(),
            &[&w.create, &w.bob_power, dave_join.event_id()],
            &secret,
            9_001,
        );
        assert_eq!(w.receive(&[&by_dave]).await, vec![Received::Accepted]);
        assert_eq!(
            body_of(secret.clone()).await,
            (Some("secret".to_owned()), None),
            "{kind:?}"
        );
        // Of an event nobody has: stored, nothing applied.
        let by_bob_unknown = redaction(
            BOB,
            by_dave.event_id(),
            &[&w.create, &w.bob_power, &w.bob_join],
            "$unknown",
            9_002,
        );
        assert_eq!(
            w.receive(&[&by_bob_unknown]).await,
            vec![Received::Accepted]
        );
        // Bob has the redact level: applied with it.
        let by_bob = redaction(
            BOB,
            by_bob_unknown.event_id(),
            &[&w.create, &w.bob_power, &w.bob_join],
            &secret,
            9_003,
        );
        assert_eq!(w.receive(&[&by_bob]).await, vec![Received::Accepted]);
        assert_eq!(
            body_of(secret.clone()).await,
            (None, Some(by_bob.event_id().to_owned())),
            "{kind:?}: the redacted copy is written with the redaction"
        );
        // A redaction that arrives before its target waits for it: Dave redacts his own
        // message, which reaches us after the redaction. It is stored redacted on arrival.
        let dave_says = w.remote_event(
            DAVE,
            "m.room.message",
            None,
            json!({"msgtype": "m.text", "body": "oops"}),
            &[by_bob.event_id()],
            &[&w.create, &w.bob_power, dave_join.event_id()],
            9_004,
        );
        let by_dave_early = redaction(
            DAVE,
            by_bob.event_id(),
            &[&w.create, &w.bob_power, dave_join.event_id()],
            dave_says.event_id(),
            9_005,
        );
        assert_eq!(w.receive(&[&by_dave_early]).await, vec![Received::Accepted]);
        assert_eq!(w.receive(&[&dave_says]).await, vec![Received::Accepted]);
        assert_eq!(
            body_of(dave_says.event_id().to_owned()).await,
            (None, Some(by_dave_early.event_id().to_owned())),
            "{kind:?}: the target is stored redacted when it arrives after its redaction"
        );
        // Bob's redaction of "$unknown" (he has the redact level) waits as well: an event of
        // that id would be redacted; nothing else is.
        let waiting = w
            .services
            .store
            .waiting_redactions(w.room.room_nid, "$unknown")
            .await
            .unwrap();
        assert_eq!(waiting.len(), 1, "{kind:?}");
        assert!(waiting[0].by_power, "{kind:?}");
        assert!(
            w.services
                .store
                .waiting_redactions(w.room.room_nid, dave_says.event_id())
                .await
                .unwrap()
                .is_empty(),
            "{kind:?}: an applied wait is done with"
        );
    }
}

/// Room version 10 puts `redacts` at the top level of the event: rebuild a redaction with it.
trait RedactsSet {
    fn redacts_set(self, version: &RoomVersion, target: &str, key: &KeyPair) -> Pdu;
}

impl RedactsSet for Pdu {
    fn redacts_set(self, version: &RoomVersion, target: &str, key: &KeyPair) -> Pdu {
        let mut json = self.into_json();
        json.insert(
            "redacts".to_owned(),
            CanonicalJsonValue::String(target.to_owned()),
        );
        build_pdu(
            json,
            version,
            EventSigner::Server {
                server_name: REMOTE,
                key_id: REMOTE_KEY_ID,
                key,
            },
        )
        .unwrap()
    }
}

/// A transaction's run of messages on the room's head is committed together, one transaction
/// for the run, while an event that may change the state or redact (a redaction, a topic)
/// first commits the run before it and is then committed alone; later events of the same
/// batch see the kept ones as stored (their prev events, a retransmitted copy), and the room
/// ends the same as if each had been committed alone.
#[tokio::test]
async fn a_run_of_received_messages_commits_together_and_other_events_after_it() {
    for kind in backends() {
        let w = World::build(kind).await;
        let mut depth = w.depth + 1;
        let mut next = |sender: &str, kind: &str, key: Option<&str>, content: Value, prev: &str| {
            depth += 1;
            w.remote.event(
                w.version,
                &w.room.room_id,
                sender,
                kind,
                key,
                content,
                &[prev],
                &[&w.create, &w.bob_power, &w.bob_join],
                depth,
                20_000 + depth,
            )
        };
        let text = |body: &str| json!({"msgtype": "m.text", "body": body});
        let m1 = next(BOB, "m.room.message", None, text("one"), &w.bob_power);
        let m2 = next(BOB, "m.room.message", None, text("two"), m1.event_id());
        let redaction = next(BOB, "m.room.redaction", None, json!({}), m2.event_id()).redacts_set(
            w.version,
            m1.event_id(),
            &w.remote.key,
        );
        let topic = next(
            BOB,
            "m.room.topic",
            Some(""),
            json!({"topic": "batched"}),
            redaction.event_id(),
        );
        let m3 = next(BOB, "m.room.message", None, text("three"), topic.event_id());
        let m4 = next(BOB, "m.room.message", None, text("four"), m3.event_id());
        w.services.store.take_commit_sizes();

        let outcomes = w
            .receive(&[&m1, &m2, &redaction, &topic, &m3, &m4, &m4])
            .await;
        assert_eq!(
            outcomes,
            [vec![Received::Accepted; 6], vec![Received::AlreadyStored]].concat(),
            "{kind:?}"
        );
        assert_eq!(
            w.services.store.take_commit_sizes(),
            vec![2, 1, 1, 2],
            "{kind:?}: the runs of messages in one commit each, the others alone"
        );

        // Everything as if committed one by one: m1 redacted by the redaction, the topic in
        // the current state, m4 the room's one end, every event normal and in stream order.
        let m1_row = w
            .services
            .store
            .event(m1.event_id())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            m1_row.redacted_by.as_deref(),
            Some(redaction.event_id()),
            "{kind:?}"
        );
        assert_eq!(
            w.current_state_ids().await[&("m.room.topic".to_owned(), String::new())],
            topic.event_id(),
            "{kind:?}"
        );
        assert_eq!(
            w.extremity_ids().await,
            HashSet::from([m4.event_id().to_owned()]),
            "{kind:?}"
        );
        let mut last = i64::MIN;
        for event in [&m1, &m2, &redaction, &topic, &m3, &m4] {
            let row = w
                .services
                .store
                .event(event.event_id())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(row.status, EventStatus::Normal, "{kind:?}");
            assert!(row.stream_ordering > last, "{kind:?}: stream order");
            last = row.stream_ordering;
        }
        // The messages after the topic are on the state with it.
        assert_eq!(
            w.state_after(m4.event_id()).await[&("m.room.topic".to_owned(), String::new())],
            topic.event_id(),
            "{kind:?}"
        );

        // A local send builds on the batch's end.
        let after = w.alice_says("after").await;
        let row = w.services.store.event(&after).await.unwrap().unwrap();
        let json: Value = serde_json::from_str(&row.json).unwrap();
        assert_eq!(json["prev_events"], json!([m4.event_id()]), "{kind:?}");
    }
}
