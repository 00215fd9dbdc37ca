//! The state-snapshot benchmark of issue 14, ignored by default (it writes 10,000-member
//! snapshots on each database):
//!
//! ```text
//! MYELIN_REQUIRE_POSTGRES=1 scripts/test --release -p myelin-store --test snapshot_bench -- --ignored --nocapture
//! ```
//!
//! What a remote join does with the room state it is sent: 10,000 member events (plus the
//! create, power levels and join rules events they cite) stored as outliers, with their edges,
//! then one state group holding all of them. Timed 5 times per database (each time into a room
//! of its own); the medians go to `docs/benchmarks.md` (the goal is under 1 s).

use std::time::{Duration, Instant};

use myelin_store::{
    OutlierEvent, Store, StoreOptions,
    test_support::{TestDatabase, test_backends},
};

const MEMBERS: usize = 10_000;
const RUNS: usize = 5;

struct Owned {
    id: String,
    kind: &'static str,
    state_key: String,
    sender: String,
    json: String,
    prev: Vec<String>,
    auth: Vec<String>,
}

/// The snapshot of room `run`: three power events, then `MEMBERS` joins citing them.
fn snapshot(run: usize) -> Vec<Owned> {
    let room = format!("!bench{run}:remote.test");
    let head = |kind: &'static str, n: usize| Owned {
        id: format!("${kind}-{run}-{n}"),
        kind,
        state_key: String::new(),
        sender: "@admin:remote.test".to_owned(),
        json: format!(
            r#"{{"auth_events":[],"content":{{"creator":"@admin:remote.test"}},"depth":{n},"hashes":{{"sha256":"x"}},"origin_server_ts":1,"prev_events":[],"room_id":"{room}","sender":"@admin:remote.test","signatures":{{}},"state_key":"","type":"{kind}"}}"#
        ),
        prev: Vec::new(),
        auth: Vec::new(),
    };
    let mut events = vec![
        head("m.room.create", 1),
        head("m.room.power_levels", 2),
        head("m.room.join_rules", 3),
    ];
    let auth: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    for i in 0..MEMBERS {
        let user = format!("@user{i}:remote.test");
        let prev = if i == 0 {
            events[2].id.clone()
        } else {
            events[events.len() - 1].id.clone()
        };
        events.push(Owned {
            id: format!("$member-{run}-{i}"),
            kind: "m.room.member",
            state_key: user.clone(),
            sender: user.clone(),
            json: format!(
                r#"{{"auth_events":["{a}","{b}","{c}"],"content":{{"displayname":"User {i}","membership":"join"}},"depth":{d},"hashes":{{"sha256":"8m1Z3qBVX8b6w0tb4Dk9TLYuLqnHMHN0JcG3WyfBOw0"}},"origin_server_ts":1700000000000,"prev_events":["{prev}"],"room_id":"{room}","sender":"{user}","signatures":{{"remote.test":{{"ed25519:a":"Ot6+8Gd8jw9tKZ4kLtuYLAsfJI6cqLaD4DWzOXfKMDeS0gICuGkiz2HaYf1rHsqjGJqJEBLU9MhvR0Fd4T3aAw"}}}},"state_key":"{user}","type":"m.room.member"}}"#,
                a = auth[0],
                b = auth[1],
                c = auth[2],
                d = i + 4
            ),
            prev: vec![prev],
            auth: auth.clone(),
        });
    }
    events
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

#[tokio::test]
#[ignore = "writes 10,000-member snapshots; run explicitly (see the module docs)"]
async fn persisting_a_10k_member_state_snapshot() {
    for kind in test_backends() {
        let db = TestDatabase::create(kind).await;
        let store = Store::open(&db.url, &StoreOptions::default())
            .await
            .unwrap();
        let mut samples = Vec::new();
        for run in 0..RUNS {
            let events = snapshot(run);
            let room = store
                .create_room(
                    &format!("!bench{run}:remote.test"),
                    "10",
                    "@admin:remote.test",
                    false,
                    0,
                )
                .await
                .unwrap();
            let outliers: Vec<OutlierEvent<'_>> = events
                .iter()
                .enumerate()
                .map(|(depth, e)| OutlierEvent {
                    event_id: &e.id,
                    event_type: e.kind,
                    state_key: Some(&e.state_key),
                    sender: &e.sender,
                    depth: depth as i64 + 1,
                    origin_server_ts: 1,
                    json: &e.json,
                    prev_event_ids: &e.prev,
                    auth_event_ids: &e.auth,
                    rejected: None,
                })
                .collect();
            let started = Instant::now();
            let nids = store.persist_outliers(room, &outliers).await.unwrap();
            let outliers_done = started.elapsed();
            let entries: Vec<(&str, &str, i64)> = events
                .iter()
                .map(|e| (e.kind, e.state_key.as_str(), nids[&e.id]))
                .collect();
            let group = store
                .create_state_group(room, None, &entries)
                .await
                .unwrap();
            samples.push(started.elapsed());
            println!(
                "{kind:?} run {run}: outliers {outliers_done:?}, total {:?}",
                started.elapsed()
            );
            // What was written is whole: every entry, and the auth chain of a member through
            // the edges.
            assert_eq!(
                store.state_ids_at_group(group).await.unwrap().len(),
                MEMBERS + 3
            );
            let chain = store
                .auth_chain(None, &[nids[&events[3].id]])
                .await
                .unwrap();
            assert_eq!(
                chain.len(),
                3,
                "{kind:?}: a member's auth chain is the three power events"
            );
        }
        println!(
            "{kind:?}: {MEMBERS}-member snapshot (outliers, edges, one state group): median {:?} of {RUNS} runs ({:?})",
            median(samples.clone()),
            samples
        );
    }
}
