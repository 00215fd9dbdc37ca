//! A send whose caller goes away (its client hung up) while its event is being committed:
//! the room's writer lock stays held until the commit has ended, so the next send builds on
//! the cancelled one's event and the room stays one line (issue 13, item 5).

use std::time::Duration;

use myelin_service::{Config, Services, rooms::CreateRoom};
use myelin_store::test_support::{TestDatabase, create_test_user, test_backends};
use ruma::UserId;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_cancelled_during_its_commit_keeps_the_room_linear() {
    for kind in test_backends() {
        let db = TestDatabase::create(kind).await;
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            server_name: "test".try_into().unwrap(),
            data_dir: dir.path().to_owned(),
            ..Config::default()
        };
        config.database.url = Some(db.url.clone());
        let services = Services::start(config).await.unwrap();
        let alice = create_test_user(&services.store, "alice").await;
        let alice = UserId::parse(alice).unwrap();
        let room_id = services
            .rooms
            .create_room(&alice, CreateRoom::default())
            .await
            .unwrap();

        // The first send stops inside its commit, and its caller goes away there.
        let pause = services.store.pause_commits().await;
        let first = tokio::spawn({
            let (services, alice, room_id) = (services.clone(), alice.clone(), room_id.clone());
            async move {
                services
                    .rooms
                    .send_state_event(
                        &alice,
                        &room_id,
                        "m.room.topic",
                        "",
                        json!({"topic": "one"}),
                    )
                    .await
            }
        });
        pause.reached().await;
        first.abort();
        assert!(first.await.unwrap_err().is_cancelled());

        // The next send waits for the room's lock, which the cancelled commit still holds.
        let second = tokio::spawn({
            let (services, alice, room_id) = (services.clone(), alice.clone(), room_id.clone());
            async move {
                services
                    .rooms
                    .send_state_event(
                        &alice,
                        &room_id,
                        "m.room.topic",
                        "",
                        json!({"topic": "two"}),
                    )
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(pause);
        let second = tokio::time::timeout(Duration::from_secs(20), second)
            .await
            .unwrap()
            .unwrap()
            .unwrap();

        let store = &services.store;
        let room = store.room(&room_id).await.unwrap().unwrap();
        let second = store.event(&second).await.unwrap().unwrap();
        let extremities = store.forward_extremities(room.room_nid).await.unwrap();
        assert_eq!(
            extremities,
            vec![second.event_nid],
            "{kind:?}: one forward extremity"
        );
        let json: serde_json::Value = serde_json::from_str(&second.json).unwrap();
        assert_eq!(json["prev_events"].as_array().unwrap().len(), 1, "{kind:?}");
        let prev = json["prev_events"][0].as_str().unwrap();
        let first = store.event(prev).await.unwrap().unwrap();
        let first_json: serde_json::Value = serde_json::from_str(&first.json).unwrap();
        assert_eq!(
            first_json["content"]["topic"], "one",
            "{kind:?}: the second send follows the cancelled one's event"
        );
        let ids = |rows: Vec<myelin_store::EventRow>| {
            let mut ids: Vec<String> = rows.into_iter().map(|e| e.event_id).collect();
            ids.sort();
            ids
        };
        let current = ids(store.current_state(room.room_nid, None).await.unwrap());
        assert!(
            current.contains(&second.event_id),
            "{kind:?}: current state"
        );
        assert_eq!(
            current,
            ids(store
                .state_at_group(second.state_after().unwrap())
                .await
                .unwrap()),
            "{kind:?}: current state is the state after the head"
        );
        services.shutdown().await;
    }
}
