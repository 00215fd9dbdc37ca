//! An account-key room with a member of another server, its events handed to the pipeline as
//! federation will (signed by the member's account key): what local clients see follows this
//! server's knowledge of the key, through the store's key states (MSC4243.md §2.6, Q5, Q6).
//! Unverified: the member's events are hidden except room configuration; verified: shown by
//! account name; erased: hidden again. Client input naming the member is refused until the key
//! is verified. On SQLite and PostgreSQL.

use myelin_room_version::{
    CanonicalJsonObject, CanonicalJsonValue, KeyFormUserId, KeyPair, RoomVersion,
    pdu::{EventSigner, build_pdu},
};
use myelin_service::{
    Config, Error, Services,
    rooms::{CreateRoom, Preset, Received},
};
use myelin_store::{RemoteKeyVerdict, test_support::TestDatabase};
use ruma::UserId;
use serde_json::{Value, json};

const AK: &str = "org.matrix.12.4243";

#[tokio::test]
async fn remote_members_are_shown_as_their_key_state_says() {
    for kind in myelin_store::test_support::test_backends() {
        let db = TestDatabase::create(kind).await;
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            server_name: "test".try_into().unwrap(),
            data_dir: dir.path().to_owned(),
            ..Config::default()
        };
        config.database.url = Some(db.url.clone());
        config.experimental.msc4243 = true;
        let services = Services::start(config).await.unwrap();
        let alice = myelin_store::test_support::create_test_user(&services.store, "alice").await;
        let alice = UserId::parse(alice).unwrap();
        let room_id = services
            .rooms
            .create_room(
                &alice,
                CreateRoom {
                    room_version: Some(AK.to_owned()),
                    preset: Some(Preset::PublicChat),
                    ..CreateRoom::default()
                },
            )
            .await
            .unwrap();
        let room = services.store.room(&room_id).await.unwrap().unwrap();
        let version = RoomVersion::get(AK).unwrap();
        let state_id = |kind: &'static str| {
            let services = services.clone();
            let room_nid = room.room_nid;
            async move {
                services
                    .store
                    .current_state(room_nid, Some(&[(kind.to_owned(), String::new())]))
                    .await
                    .unwrap()
                    .pop()
                    .unwrap()
                    .event_id
            }
        };
        let join_rules = state_id("m.room.join_rules").await;
        let power = state_id("m.room.power_levels").await;

        // Bob of remote.test, by account key.
        let bob_pair = KeyPair::from_seed(&[5; 32]);
        let bob = KeyFormUserId {
            key: bob_pair.account_key(),
            server_name: "remote.test".to_owned(),
        };
        let bob_id = bob.to_string();
        let event = |kind: &str,
                     state_key: Option<&str>,
                     content: Value,
                     prev: &str,
                     auth: &[&str],
                     depth: i64| {
            let mut partial = CanonicalJsonObject::new();
            let s = |v: &str| CanonicalJsonValue::String(v.to_owned());
            partial.insert("type".to_owned(), s(kind));
            partial.insert("room_id".to_owned(), s(&room_id));
            partial.insert("sender".to_owned(), s(&bob_id));
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
                CanonicalJsonValue::Integer(1_000u32.into()),
            );
            build_pdu(partial, version, EventSigner::Account(&bob_pair)).unwrap()
        };
        let head = services
            .store
            .send_context(room.room_nid, &[], None)
            .await
            .unwrap()
            .head;
        let join = event(
            "m.room.member",
            Some(&bob_id),
            json!({"membership": "join"}),
            &head.prev_event_ids[0],
            &[&join_rules, &power],
            head.max_depth + 1,
        );
        let message = event(
            "m.room.message",
            None,
            json!({"msgtype": "m.text", "body": "from afar"}),
            join.event_id(),
            &[&power, join.event_id()],
            head.max_depth + 2,
        );
        let bytes = [join.canonical_json(), message.canonical_json()];
        let refs: Vec<&[u8]> = bytes.iter().map(|b| b.as_bytes()).collect();
        let outcomes: Vec<Received> = services
            .rooms
            .receive_pdus(&room_id, &refs, &Default::default())
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.outcome)
            .collect();
        assert_eq!(
            outcomes,
            [Received::Accepted, Received::Accepted],
            "{kind:?}"
        );

        let read = |event_id: String| {
            let (services, alice, room_id) = (services.clone(), alice.clone(), room_id.clone());
            async move {
                services
                    .rooms
                    .event(&alice, None, &room_id, &event_id)
                    .await
            }
        };
        // Unverified: hidden.
        for id in [join.event_id(), message.event_id()] {
            let err = read(id.to_owned()).await.unwrap_err();
            assert!(matches!(err, Error::NotFound(_)), "{kind:?}: {err:?}");
        }
        // Naming bob in power levels is refused while his key is not verified, by name or key.
        for named in ["@bob:remote.test", bob_id.as_str()] {
            let err = services
                .rooms
                .send_state_event(
                    &alice,
                    &room_id,
                    "m.room.power_levels",
                    "",
                    json!({"users": {named: 50}}),
                )
                .await
                .unwrap_err();
            assert!(matches!(err, Error::InvalidParam(_)), "{named}: {err:?}");
        }

        // Verified as bob: shown by name, with sender_account.
        let keys = &services.account_keys;
        let state = keys
            .record_remote(
                &bob,
                &RemoteKeyVerdict::Verified {
                    account_name: "bob",
                },
            )
            .await
            .unwrap();
        assert!(matches!(
            state,
            myelin_room_version::KeyVerification::Verified { .. }
        ));
        let shown = read(message.event_id().to_owned()).await.unwrap();
        assert_eq!(shown["sender"], "@bob:remote.test");
        assert_eq!(
            shown["unsigned"]["sender_account"],
            json!({"key": bob.key.as_str(), "user_id": "@bob:remote.test"})
        );
        let shown_join = read(join.event_id().to_owned()).await.unwrap();
        assert_eq!(shown_join["state_key"], "@bob:remote.test");
        // Now he may be named, by his account name (resolved against the room's verified
        // members, Q3) or his key form; the stored power levels hold the key, clients see
        // the name. A name no member is verified under is still refused.
        let err = services
            .rooms
            .send_state_event(
                &alice,
                &room_id,
                "m.room.power_levels",
                "",
                json!({"users": {"@carol:remote.test": 50}}),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidParam(_)), "{err:?}");
        services
            .rooms
            .send_state_event(
                &alice,
                &room_id,
                "m.room.power_levels",
                "",
                json!({"users": {"@bob:remote.test": 40}}),
            )
            .await
            .unwrap();
        let stored = services
            .store
            .current_state(
                room.room_nid,
                Some(&[("m.room.power_levels".to_owned(), String::new())]),
            )
            .await
            .unwrap()
            .pop()
            .unwrap();
        let stored: Value = serde_json::from_str(&stored.json).unwrap();
        assert_eq!(stored["content"]["users"], json!({bob_id.clone(): 40}));
        services
            .rooms
            .send_state_event(
                &alice,
                &room_id,
                "m.room.power_levels",
                "",
                json!({"users": {bob_id.clone(): 50}}),
            )
            .await
            .unwrap();
        let stored = services
            .store
            .current_state(
                room.room_nid,
                Some(&[("m.room.power_levels".to_owned(), String::new())]),
            )
            .await
            .unwrap()
            .pop()
            .unwrap();
        let stored: Value = serde_json::from_str(&stored.json).unwrap();
        assert_eq!(stored["content"]["users"], json!({bob_id.clone(): 50}));
        let seen = services
            .rooms
            .state_event(&alice, &room_id, "m.room.power_levels", "")
            .await
            .unwrap();
        assert_eq!(
            seen["content"]["users"],
            json!({"@bob:remote.test": 50}),
            "{seen}"
        );

        // Erased: hidden again, for good.
        keys.record_remote(&bob, &RemoteKeyVerdict::Erased { attestation: "{}" })
            .await
            .unwrap();
        let err = read(message.event_id().to_owned()).await.unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{kind:?}: {err:?}");
        let state = keys
            .record_remote(
                &bob,
                &RemoteKeyVerdict::Verified {
                    account_name: "bob",
                },
            )
            .await
            .unwrap();
        assert_eq!(state, myelin_room_version::KeyVerification::Erased);
        // Room configuration he set would still show (Q6): his power levels entry is config
        // of alice's here; the power levels event itself is delivered with key-form users.
        let seen = services
            .rooms
            .state_event(&alice, &room_id, "m.room.power_levels", "")
            .await
            .unwrap();
        assert_eq!(
            seen["content"]["users"],
            json!({bob_id.clone(): 50}),
            "{seen}"
        );
    }
}
