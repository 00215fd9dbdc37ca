//! The event graph on both databases: persisting an event writes its edges (with the cited
//! events' nids, filled in whichever order the two arrive) and keeps the room's forward
//! extremities (a fork has two, a merge one, an event that arrives after its child is none);
//! and migration 0018 gives the events stored before it their edges, status, topological
//! ordering and extremities, read out of their JSON in both event formats, with every room
//! reading the same afterwards.

use myelin_store::{
    DatabaseKind, EdgeKind, EventEdge, EventStatus, NewEvent, OutlierEvent, Persisted, Store,
    StoreOptions,
    test_support::{TestDatabase, test_backends},
};
use sqlx::Executor;

/// Persists an event whose JSON cites `prev` and `auth` as the room version would: plain ids,
/// or in event format 1 (`pairs`) `[id, {hashes}]` pairs.
#[allow(clippy::too_many_arguments)]
async fn put(
    store: &Store,
    room: i64,
    id: &str,
    state_key: Option<&str>,
    depth: i64,
    prev: &[&str],
    auth: &[&str],
    before: Option<i64>,
    pairs: bool,
) -> Persisted {
    let cite = |ids: &[&str]| -> serde_json::Value {
        ids.iter()
            .map(|id| {
                if pairs {
                    serde_json::json!([id, {"sha256": "aGFzaA"}])
                } else {
                    serde_json::json!(id)
                }
            })
            .collect()
    };
    let kind = if state_key.is_some() {
        "m.room.create"
    } else {
        "m.room.message"
    };
    let json = serde_json::json!({
        "type": kind, "content": {"body": id}, "depth": depth,
        "prev_events": cite(prev), "auth_events": cite(auth),
    })
    .to_string();
    let prev: Vec<String> = prev.iter().map(|p| p.to_string()).collect();
    let auth: Vec<String> = auth.iter().map(|p| p.to_string()).collect();
    store
        .persist_event(&NewEvent {
            room_nid: room,
            event_id: id,
            event_type: kind,
            state_key,
            sender: "@a:test",
            depth,
            origin_server_ts: depth,
            json: &json,
            prev_event_ids: &prev,
            auth_event_ids: &auth,
            state_group_before: before,
            membership: None,
            txn: None,
            redaction: None,
            push_actions: &[],
            relation: None,
            search: None,
            now: depth,
            ..Default::default()
        })
        .await
        .unwrap()
}

fn edge(kind: EdgeKind, id: &str, nid: Option<i64>) -> EventEdge {
    EventEdge {
        kind,
        cited_event_id: id.to_owned(),
        cited_event_nid: nid,
    }
}

#[tokio::test]
async fn persisting_writes_edges_and_keeps_forward_extremities() {
    for kind in test_backends() {
        let db = TestDatabase::create(kind).await;
        let store = Store::open(&db.url, &StoreOptions::default())
            .await
            .unwrap();
        let room = store
            .create_room("!r:test", "12", "@a:test", false, 0)
            .await
            .unwrap();
        let create = put(&store, room, "$c", Some(""), 1, &[], &[], None, false).await;
        let g = create.state_group;
        assert_eq!(store.event_edges(create.event_nid).await.unwrap(), []);
        assert_eq!(
            store.forward_extremities(room).await.unwrap(),
            [create.event_nid]
        );
        assert_eq!(
            store.event_status(create.event_nid).await.unwrap(),
            Some(EventStatus::Normal)
        );

        // A fork: two children of the create event are both extremities.
        let a = put(&store, room, "$a", None, 2, &["$c"], &["$c"], g, false).await;
        let b = put(&store, room, "$b", None, 2, &["$c"], &["$c"], g, false).await;
        assert_eq!(
            store.event_edges(a.event_nid).await.unwrap(),
            [
                edge(EdgeKind::Prev, "$c", Some(create.event_nid)),
                edge(EdgeKind::Auth, "$c", Some(create.event_nid)),
            ],
            "{kind:?}"
        );
        assert_eq!(
            store.forward_extremities(room).await.unwrap(),
            [a.event_nid, b.event_nid],
            "{kind:?}"
        );

        // A child that arrives before its parent `$late` (as federation may deliver): its edge
        // waits for the parent's nid, and the parent, cited already, is no extremity.
        let merge = put(
            &store,
            room,
            "$m",
            None,
            3,
            &["$a", "$b", "$late"],
            &["$c", "$c"],
            g,
            false,
        )
        .await;
        assert_eq!(
            store.event_edges(merge.event_nid).await.unwrap(),
            [
                edge(EdgeKind::Prev, "$a", Some(a.event_nid)),
                edge(EdgeKind::Prev, "$b", Some(b.event_nid)),
                edge(EdgeKind::Prev, "$late", None),
                edge(EdgeKind::Auth, "$c", Some(create.event_nid)),
            ],
            "{kind:?}: a duplicate citation is one edge"
        );
        assert_eq!(
            store.forward_extremities(room).await.unwrap(),
            [merge.event_nid],
            "{kind:?}"
        );
        let late = put(&store, room, "$late", None, 2, &["$c"], &["$c"], g, false).await;
        assert_eq!(
            store.event_edges(merge.event_nid).await.unwrap()[2],
            edge(EdgeKind::Prev, "$late", Some(late.event_nid)),
            "{kind:?}"
        );
        assert_eq!(
            store.forward_extremities(room).await.unwrap(),
            [merge.event_nid],
            "{kind:?}"
        );
        // The head a local send builds on follows the table.
        let head = store.send_context(room, &[], None).await.unwrap().head;
        assert_eq!(head.prev_event_ids, ["$m"], "{kind:?}");
        assert_eq!(head.max_depth, 3, "{kind:?}");
        store.close().await;
    }
}

/// Takes a database back to the schema before migration 0018 (what main wrote), keeping its
/// forward extremities in the old table keyed by event id.
async fn undo_0018(kind: DatabaseKind, url: &str) {
    let undo = [
        "DROP TABLE event_edges",
        "CREATE TABLE old_extremities AS SELECT f.room_nid, e.event_id FROM forward_extremities f \
         JOIN events e ON e.event_nid = f.event_nid",
        "DROP TABLE forward_extremities",
        "CREATE TABLE forward_extremities (room_nid BIGINT NOT NULL REFERENCES rooms (room_nid), \
         event_id TEXT NOT NULL, PRIMARY KEY (room_nid, event_id))",
        "INSERT INTO forward_extremities (room_nid, event_id) SELECT room_nid, event_id FROM old_extremities",
        "DROP TABLE old_extremities",
        "DROP INDEX events_room_topological",
        "ALTER TABLE events DROP COLUMN topological_ordering",
        "ALTER TABLE events DROP COLUMN rejection_reason",
        "ALTER TABLE events DROP COLUMN status",
        "DELETE FROM _sqlx_migrations WHERE version = 18",
    ];
    match kind {
        DatabaseKind::Sqlite => {
            let pool = sqlx::SqlitePool::connect(url).await.unwrap();
            for sql in undo {
                pool.execute(sql).await.unwrap();
            }
            pool.close().await;
        }
        DatabaseKind::Postgres => {
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            for sql in undo {
                pool.execute(sql).await.unwrap();
            }
            pool.close().await;
        }
    }
}

/// What a room reads as: its current state, its whole timeline and its head.
async fn reads_of(store: &Store, room: i64) -> impl PartialEq + std::fmt::Debug {
    let state = store.current_state(room, None).await.unwrap();
    let timeline = store
        .room_events(room, 0, i64::MAX, false, 1_000)
        .await
        .unwrap();
    let head = store.send_context(room, &[], None).await.unwrap().head;
    (state, timeline, head)
}

/// The edges an event's JSON states, parsed here independently of the migration's SQL.
fn edges_in_json(json: &str, nid_of: &std::collections::HashMap<String, i64>) -> Vec<EventEdge> {
    let value: serde_json::Value = serde_json::from_str(json).unwrap();
    let mut edges = Vec::new();
    for (kind, key) in [
        (EdgeKind::Prev, "prev_events"),
        (EdgeKind::Auth, "auth_events"),
    ] {
        for cited in value[key].as_array().into_iter().flatten() {
            let id = cited
                .as_str()
                .or_else(|| cited[0].as_str())
                .unwrap()
                .to_owned();
            edges.push(edge(kind, &id, nid_of.get(&id).copied()));
        }
    }
    edges.sort();
    edges.dedup();
    edges
}

#[tokio::test]
async fn migration_0018_builds_the_graph_of_the_events_stored_before_it() {
    for kind in test_backends() {
        let db = TestDatabase::create(kind).await;
        let store = Store::open(&db.url, &StoreOptions::default())
            .await
            .unwrap();
        // A room in event format 1 (id/hash pairs) with a fork, and one in later formats.
        let old = store
            .create_room("!old:test", "1", "@a:test", false, 0)
            .await
            .unwrap();
        let c = put(&store, old, "$c1:test", Some(""), 1, &[], &[], None, true).await;
        let g = c.state_group;
        put(
            &store,
            old,
            "$a1:test",
            None,
            2,
            &["$c1:test"],
            &["$c1:test"],
            g,
            true,
        )
        .await;
        put(
            &store,
            old,
            "$b1:test",
            None,
            2,
            &["$c1:test"],
            &["$c1:test"],
            g,
            true,
        )
        .await;
        let new = store
            .create_room("!new:test", "12", "@a:test", false, 0)
            .await
            .unwrap();
        let c = put(&store, new, "$c2", Some(""), 1, &[], &[], None, false).await;
        let g = c.state_group;
        put(&store, new, "$x2", None, 2, &["$c2"], &["$c2"], g, false).await;
        put(
            &store,
            new,
            "$y2",
            None,
            3,
            &["$x2"],
            &["$c2", "$x2"],
            g,
            false,
        )
        .await;
        // Cites an event this server never had.
        put(
            &store,
            new,
            "$z2",
            None,
            4,
            &["$y2", "$unknown"],
            &["$c2"],
            g,
            false,
        )
        .await;

        let rooms = [old, new];
        let mut before = Vec::new();
        let mut extremities = Vec::new();
        for room in rooms {
            before.push(format!("{:?}", reads_of(&store, room).await));
            extremities.push(store.forward_extremities(room).await.unwrap());
        }
        store.close().await;
        drop(store);

        undo_0018(kind, &db.url).await;
        let store = Store::open(&db.url, &StoreOptions::default())
            .await
            .unwrap();
        for (i, room) in rooms.into_iter().enumerate() {
            assert_eq!(
                format!("{:?}", reads_of(&store, room).await),
                before[i],
                "{kind:?}: room {room} reads the same"
            );
            assert_eq!(
                store.forward_extremities(room).await.unwrap(),
                extremities[i],
                "{kind:?}"
            );
            let events = store
                .room_events(room, 0, i64::MAX, false, 1_000)
                .await
                .unwrap();
            let nid_of: std::collections::HashMap<String, i64> = events
                .iter()
                .map(|e| (e.event_id.clone(), e.event_nid))
                .collect();
            for event in &events {
                assert_eq!(
                    store.event_edges(event.event_nid).await.unwrap(),
                    edges_in_json(&event.json, &nid_of),
                    "{kind:?}: edges of {}",
                    event.event_id
                );
                assert_eq!(
                    store.event_status(event.event_nid).await.unwrap(),
                    Some(EventStatus::Normal)
                );
            }
        }
        assert_eq!(extremities[0].len(), 2, "the fork's two ends");
        assert_eq!(
            store
                .event_edges(store.event("$z2").await.unwrap().unwrap().event_nid)
                .await
                .unwrap()[0],
            edge(EdgeKind::Prev, "$unknown", None),
            "{kind:?}"
        );
        store.close().await;
    }
}

/// Auth chains come from the auth edges in one statement: the events reachable from the
/// starting ones (not themselves unless reachable), from events or from a state group's events;
/// edges to events nobody stored are not followed. Outliers written in bulk get their edges and
/// nids whatever order they come in, and are stored without state below every live position.
#[tokio::test]
async fn auth_chains_follow_the_auth_edges_of_bulk_outliers() {
    for kind in test_backends() {
        let db = TestDatabase::create(kind).await;
        let store = Store::open(&db.url, &StoreOptions::default())
            .await
            .unwrap();
        let room = store
            .create_room("!chain:test", "10", "@a:test", false, 0)
            .await
            .unwrap();
        // create <- power <- member <- topic (each cites all before it), plus "$lost" cited by
        // the topic and stored nowhere. Given newest first: edges must still resolve.
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let specs: [(&str, &str, &str, Vec<String>); 4] = [
            (
                "$topic",
                "m.room.topic",
                "",
                ids(&["$create", "$power", "$member", "$lost"]),
            ),
            (
                "$member",
                "m.room.member",
                "@a:test",
                ids(&["$create", "$power"]),
            ),
            ("$power", "m.room.power_levels", "", ids(&["$create"])),
            ("$create", "m.room.create", "", Vec::new()),
        ];
        let outliers: Vec<OutlierEvent<'_>> = specs
            .iter()
            .map(|(id, kind, key, auth)| OutlierEvent {
                event_id: id,
                event_type: kind,
                state_key: Some(key),
                sender: "@a:test",
                depth: 1,
                origin_server_ts: 1,
                json: "{}",
                prev_event_ids: &[],
                auth_event_ids: auth,
                rejected: None,
            })
            .collect();
        let nids = store.persist_outliers(room, &outliers).await.unwrap();
        assert_eq!(nids.len(), 4);
        let chain = |start: &[&str]| {
            let store = store.clone();
            let start: Vec<i64> = start.iter().map(|id| nids[*id]).collect();
            async move {
                let mut ids: Vec<String> = store
                    .auth_chain(None, &start)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|(_, id)| id)
                    .collect();
                ids.sort();
                ids
            }
        };
        assert_eq!(
            chain(&["$topic"]).await,
            ["$create", "$member", "$power"],
            "{kind:?}"
        );
        assert_eq!(chain(&["$member"]).await, ["$create", "$power"], "{kind:?}");
        assert_eq!(
            chain(&["$member", "$power"]).await,
            ["$create", "$power"],
            "{kind:?}"
        );
        assert!(chain(&["$create"]).await.is_empty(), "{kind:?}");

        // From a state group: the chain of every event in it.
        let group = store
            .create_state_group(
                room,
                None,
                &[
                    ("m.room.member", "@a:test", nids["$member"]),
                    ("m.room.topic", "", nids["$topic"]),
                ],
            )
            .await
            .unwrap();
        let mut from_group: Vec<String> = store
            .auth_chain(Some(group), &[])
            .await
            .unwrap()
            .into_iter()
            .map(|(_, id)| id)
            .collect();
        from_group.sort();
        assert_eq!(from_group, ["$create", "$member", "$power"], "{kind:?}");

        let topic = store.event("$topic").await.unwrap().unwrap();
        assert_eq!(topic.status, EventStatus::Outlier);
        assert_eq!(topic.state_group, None);
        assert!(
            topic.stream_ordering < 0,
            "{kind:?}: below every live position"
        );
        // Given again: nothing changes, the same nids come back.
        assert_eq!(store.persist_outliers(room, &outliers).await.unwrap(), nids);
    }
}

/// The room's current state is compare-and-set: an append decided against a current state
/// that has moved since (another writer, e.g. another process over the same database) is
/// refused and writes nothing, whether it changes the state (a state event) or only builds on
/// it (a message); decided against the state as it is, it goes through.
#[tokio::test]
async fn appends_decided_against_a_moved_current_state_are_refused() {
    for kind in test_backends() {
        let db = TestDatabase::create(kind).await;
        let store = Store::open(&db.url, &StoreOptions::default())
            .await
            .unwrap();
        let room = store
            .create_room("!cas:test", "10", "@a:test", false, 0)
            .await
            .unwrap();
        let create = put(&store, room, "$create", Some(""), 1, &[], &[], None, false).await;
        let event = |id: &'static str, state_key: Option<&'static str>, before: Option<i64>| {
            let json = format!(r#"{{"type":"m.room.topic","content":{{"topic":"{id}"}}}}"#);
            (id, state_key, before, json)
        };
        let append = |(id, state_key, before, json): (
            &'static str,
            Option<&'static str>,
            Option<i64>,
            String,
        )| {
            let store = store.clone();
            async move {
                store
                    .persist_event(&NewEvent {
                        room_nid: room,
                        event_id: id,
                        event_type: if state_key.is_some() {
                            "m.room.topic"
                        } else {
                            "m.room.message"
                        },
                        state_key,
                        sender: "@a:test",
                        depth: 2,
                        origin_server_ts: 2,
                        json: &json,
                        prev_event_ids: &["$create".to_owned()],
                        auth_event_ids: &["$create".to_owned()],
                        state_group_before: before,
                        now: 2,
                        ..Default::default()
                    })
                    .await
            }
        };
        let topic = append(event("$topic", Some(""), create.state_group))
            .await
            .unwrap();
        // Both decided against the state before the topic: refused, nothing stored.
        for stale in [
            event("$stale-topic", Some(""), create.state_group),
            event("$stale-message", None, create.state_group),
        ] {
            let id = stale.0;
            let refused = append(stale).await;
            assert!(
                matches!(refused, Err(myelin_store::StoreError::Conflict(_))),
                "{kind:?} {id}: {refused:?}"
            );
            assert!(
                store.event(id).await.unwrap().is_none(),
                "{kind:?}: {id} left nothing"
            );
        }
        assert_eq!(
            store.current_state_group(room).await.unwrap(),
            topic.state_group
        );
        // Against the current state: accepted.
        append(event("$message", None, topic.state_group))
            .await
            .unwrap();
        append(event("$topic-2", Some(""), topic.state_group))
            .await
            .unwrap();
    }
}

/// What a state group holds itself: a whole group (no parent) its every member, a delta its
/// parent and only the members it changed; other keys are not members; unknown groups are
/// absent. The federation sender carries a parent's servers over a delta with this alone.
#[tokio::test]
async fn a_groups_own_members_are_read_without_its_chain() {
    for kind in test_backends() {
        let db = TestDatabase::create(kind).await;
        let store = Store::open(&db.url, &StoreOptions::default())
            .await
            .unwrap();
        let room = store
            .create_room("!members:test", "10", "@a:test", false, 0)
            .await
            .unwrap();
        let outliers: Vec<OutlierEvent<'_>> = ["$create", "$a", "$b", "$topic", "$c"]
            .iter()
            .map(|id| OutlierEvent {
                event_id: id,
                event_type: "m.room.member",
                state_key: Some(""),
                sender: "@a:test",
                depth: 1,
                origin_server_ts: 1,
                json: "{}",
                prev_event_ids: &[],
                auth_event_ids: &[],
                rejected: None,
            })
            .collect();
        let nids = store.persist_outliers(room, &outliers).await.unwrap();
        let whole = store
            .create_state_group(
                room,
                None,
                &[
                    ("m.room.create", "", nids["$create"]),
                    ("m.room.member", "@a:test", nids["$a"]),
                    ("m.room.member", "@b:remote", nids["$b"]),
                ],
            )
            .await
            .unwrap();
        let topic_only = store
            .create_state_group(room, Some(whole), &[("m.room.topic", "", nids["$topic"])])
            .await
            .unwrap();
        let joined = store
            .create_state_group(
                room,
                Some(topic_only),
                &[("m.room.member", "@c:test", nids["$c"])],
            )
            .await
            .unwrap();
        let read = store
            .group_members_changed(&[whole, topic_only, joined, 999_999])
            .await
            .unwrap();
        let mut whole_members = read[&whole].members.clone();
        whole_members.sort();
        assert_eq!(read[&whole].parent, None, "{kind:?}");
        assert_eq!(
            whole_members,
            [
                ("@a:test".to_owned(), nids["$a"]),
                ("@b:remote".to_owned(), nids["$b"])
            ],
            "{kind:?}"
        );
        assert_eq!(read[&topic_only].parent, Some(whole), "{kind:?}");
        assert!(read[&topic_only].members.is_empty(), "{kind:?}");
        assert_eq!(read[&joined].parent, Some(topic_only), "{kind:?}");
        assert_eq!(
            read[&joined].members,
            [("@c:test".to_owned(), nids["$c"])],
            "{kind:?}"
        );
        assert!(!read.contains_key(&999_999), "{kind:?}");
    }
}
