//! Events in the store: what a local send reads in one statement ([`Store::send_context`]: the
//! current state for the keys asked, the room's head, and the event a retried client transaction
//! produced), the walk by time `/timestamp_to_event` takes, group commit (concurrent persists land
//! together, a bad one fails alone), one id per event (the first of two claiming one is kept),
//! which events have relations to bundle ([`Store::related_parents`]), and the state before a
//! sync timeline's first event ([`Store::state_groups_before`]).

use myelin_store::{
    NewEvent, Persisted, Store, StoreError, StoreOptions, TxnKey,
    test_support::{TestDatabase, test_backends},
};

/// A bare event to persist (the store does not check JSON; the room-version layer does).
#[derive(Default)]
struct Ev<'a> {
    id: &'a str,
    kind: &'a str,
    state_key: Option<&'a str>,
    depth: i64,
    prev: &'a [&'a str],
    before: Option<i64>,
    txn: Option<TxnKey<'a>>,
    redaction: Option<(&'a str, &'a str)>,
    /// `origin_server_ts`, when not the depth.
    ts: Option<i64>,
    /// `(parent event id, rel_type)`.
    relation: Option<(&'a str, &'a str)>,
}

const SEND_SCOPE: &str = "/rooms/!r/send/m.room.message";

fn txn<'a>(device_id: &'a str, scope: &'a str, txn_id: &'a str) -> Option<TxnKey<'a>> {
    Some(TxnKey {
        user_id: "@a:localhost",
        device_id,
        scope,
        txn_id,
    })
}

async fn put(store: &Store, room_nid: i64, ev: Ev<'_>) -> Persisted {
    try_put(store, room_nid, ev).await.unwrap()
}

/// A new room `room_id` with its create event, `{prefix}create`: the room's nid, the event's
/// id and where it landed.
async fn room_with_create(store: &Store, room_id: &str, prefix: &str) -> (i64, String, Persisted) {
    let room = store
        .create_room(room_id, "12", "@a:localhost", false, 0)
        .await
        .unwrap();
    let create = format!("{prefix}create");
    let created = put(
        store,
        room,
        Ev {
            id: &create,
            kind: "m.room.create",
            state_key: Some(""),
            depth: 1,
            ..Ev::default()
        },
    )
    .await;
    (room, create, created)
}

async fn try_put(store: &Store, room_nid: i64, ev: Ev<'_>) -> Result<Persisted, StoreError> {
    let prev: Vec<String> = ev.prev.iter().map(|p| p.to_string()).collect();
    store
        .persist_event(&NewEvent {
            room_nid,
            event_id: ev.id,
            event_type: ev.kind,
            state_key: ev.state_key,
            sender: "@a:localhost",
            depth: ev.depth,
            origin_server_ts: ev.ts.unwrap_or(ev.depth),
            json: &format!(r#"{{"type":"{}"}}"#, ev.kind),
            prev_event_ids: &prev,
            auth_event_ids: &[],
            state_group_before: ev.before,
            membership: None,
            txn: ev.txn,
            redaction: ev.redaction,
            push_actions: &[],
            relation: ev.relation,
            search: None,
            now: ev.depth,
            ..Default::default()
        })
        .await
}

#[tokio::test]
async fn send_context_reads_state_head_and_transaction_together() {
    for kind in test_backends() {
        let db = TestDatabase::create(kind).await;
        let store = Store::open(&db.url, &StoreOptions::default())
            .await
            .unwrap();
        let room = store
            .create_room("!r:localhost", "12", "@a:localhost", false, 0)
            .await
            .unwrap();
        let create = put(
            &store,
            room,
            Ev {
                id: "$create",
                kind: "m.room.create",
                state_key: Some(""),
                depth: 1,
                ..Ev::default()
            },
        )
        .await;
        let power = put(
            &store,
            room,
            Ev {
                id: "$power",
                kind: "m.room.power_levels",
                state_key: Some(""),
                depth: 2,
                prev: &["$create"],
                before: create.state_group,
                ..Ev::default()
            },
        )
        .await;
        let message = put(
            &store,
            room,
            Ev {
                id: "$message",
                kind: "m.room.message",
                depth: 3,
                prev: &["$power"],
                before: power.state_group,
                txn: txn("DEV", SEND_SCOPE, "txn1"),
                ..Ev::default()
            },
        )
        .await;

        let keys = [
            ("m.room.create".to_owned(), String::new()),
            ("m.room.power_levels".to_owned(), String::new()),
            ("m.room.name".to_owned(), String::new()),
        ];
        let context = store
            .send_context(room, &keys, txn("DEV", SEND_SCOPE, "txn2"))
            .await
            .unwrap();
        let mut state: Vec<&str> = context.state.iter().map(|e| e.event_id.as_str()).collect();
        state.sort();
        assert_eq!(
            state,
            ["$create", "$power"],
            "{kind:?}: only the keys the room has"
        );
        assert_eq!(context.head.prev_event_ids, ["$message"], "{kind:?}");
        assert_eq!(context.head.max_depth, 3);
        assert_eq!(context.head.current_state_group, message.state_group);
        assert_eq!(context.txn_event_id, None, "{kind:?}: a new transaction");

        let retry = store
            .send_context(room, &keys, txn("DEV", SEND_SCOPE, "txn1"))
            .await
            .unwrap();
        assert_eq!(retry.txn_event_id.as_deref(), Some("$message"), "{kind:?}");
        let other_device = store
            .send_context(room, &keys, txn("PHONE", SEND_SCOPE, "txn1"))
            .await
            .unwrap();
        assert_eq!(
            other_device.txn_event_id, None,
            "{kind:?}: scoped to the device"
        );
        // The same device and txn id on another path (another room, or another endpoint) is
        // another request.
        for scope in ["/rooms/!other/send/m.room.message", "/rooms/!r/redact/$x"] {
            let other_path = store
                .send_context(room, &keys, txn("DEV", scope, "txn1"))
                .await
                .unwrap();
            assert_eq!(other_path.txn_event_id, None, "{kind:?}: scoped to {scope}");
        }

        // Two extremities (a fork): both are prev events, the deepest first.
        put(
            &store,
            room,
            Ev {
                id: "$side",
                kind: "m.room.message",
                depth: 5,
                prev: &["$power"],
                before: power.state_group,
                ..Ev::default()
            },
        )
        .await;
        let forked = store.send_context(room, &[], None).await.unwrap();
        assert_eq!(
            forked.head.prev_event_ids,
            ["$side", "$message"],
            "{kind:?}"
        );
        assert_eq!(forked.head.max_depth, 5);
        assert!(forked.state.is_empty() && forked.txn_event_id.is_none());
        store.close().await;
    }
}

/// A redaction and the redacted copy of its target are one write: if the redaction cannot be
/// stored, the target keeps its content; if it is, the target is redacted by it (and a second
/// redaction leaves the first in place).
#[tokio::test]
async fn a_redaction_and_the_redacted_copy_are_written_together() {
    for kind in test_backends() {
        let db = TestDatabase::create(kind).await;
        let store = Store::open(&db.url, &StoreOptions::default())
            .await
            .unwrap();
        let room = store
            .create_room("!r:localhost", "12", "@a:localhost", false, 0)
            .await
            .unwrap();
        let create = put(
            &store,
            room,
            Ev {
                id: "$create",
                kind: "m.room.create",
                state_key: Some(""),
                depth: 1,
                ..Ev::default()
            },
        )
        .await;
        let message = put(
            &store,
            room,
            Ev {
                id: "$message",
                kind: "m.room.message",
                depth: 2,
                prev: &["$create"],
                before: create.state_group,
                ..Ev::default()
            },
        )
        .await;
        // A redaction whose own insert fails (its id is taken): nothing of it is written.
        let failed = try_put(
            &store,
            room,
            Ev {
                id: "$create",
                kind: "m.room.redaction",
                depth: 3,
                prev: &["$message"],
                before: message.state_group,
                redaction: Some(("$message", r#"{"type":"redacted"}"#)),
                ..Ev::default()
            },
        )
        .await;
        assert!(failed.is_err(), "{kind:?}");
        let target = store.event("$message").await.unwrap().unwrap();
        assert_eq!(
            target.redacted_by, None,
            "{kind:?}: no half-written redaction"
        );
        assert_eq!(target.json, r#"{"type":"m.room.message"}"#, "{kind:?}");

        let redaction = Ev {
            id: "$redaction",
            kind: "m.room.redaction",
            depth: 3,
            prev: &["$message"],
            before: message.state_group,
            redaction: Some(("$message", r#"{"type":"redacted"}"#)),
            ..Ev::default()
        };
        put(&store, room, redaction).await;
        let target = store.event("$message").await.unwrap().unwrap();
        assert_eq!(
            target.redacted_by.as_deref(),
            Some("$redaction"),
            "{kind:?}"
        );
        assert_eq!(target.json, r#"{"type":"redacted"}"#, "{kind:?}");

        put(
            &store,
            room,
            Ev {
                id: "$again",
                kind: "m.room.redaction",
                depth: 4,
                prev: &["$redaction"],
                before: message.state_group,
                redaction: Some(("$message", r#"{"type":"again"}"#)),
                ..Ev::default()
            },
        )
        .await;
        let target = store.event("$message").await.unwrap().unwrap();
        assert_eq!(
            target.redacted_by.as_deref(),
            Some("$redaction"),
            "{kind:?}: the first stays"
        );
        store.close().await;
    }
}

#[tokio::test]
async fn concurrent_persists_all_land_with_distinct_positions_and_a_bad_one_fails_alone() {
    for kind in test_backends() {
        let db = TestDatabase::create(kind).await;
        let store = Store::open(&db.url, &StoreOptions::default())
            .await
            .unwrap();
        let mut rooms = Vec::new();
        for i in 0..24 {
            let room = store
                .create_room(&format!("!r{i}:localhost"), "12", "@a:localhost", false, 0)
                .await
                .unwrap();
            rooms.push(room);
        }
        // One event id already taken (in a room of its own): its second persist must fail
        // without taking others down.
        let taken_room = store
            .create_room("!taken:localhost", "12", "@a:localhost", false, 0)
            .await
            .unwrap();
        put(
            &store,
            taken_room,
            Ev {
                id: "$taken",
                kind: "m.room.create",
                state_key: Some(""),
                depth: 1,
                ..Ev::default()
            },
        )
        .await;

        let mut tasks = Vec::new();
        for (i, room) in rooms.iter().copied().enumerate() {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let id = if i == 7 {
                    "$taken".to_owned()
                } else {
                    format!("$create{i}")
                };
                let ev = Ev {
                    id: &id,
                    kind: "m.room.create",
                    state_key: Some(""),
                    depth: 1,
                    ..Ev::default()
                };
                try_put(&store, room, ev).await
            }));
        }
        let mut positions = Vec::new();
        for (i, task) in tasks.into_iter().enumerate() {
            let result = task.await.unwrap();
            if i == 7 {
                assert!(result.is_err(), "{kind:?}: a duplicate event id is refused");
            } else {
                positions.push(
                    result
                        .unwrap_or_else(|e| panic!("{kind:?} {i}: {e}"))
                        .stream_ordering,
                );
            }
        }
        positions.sort();
        positions.dedup();
        assert_eq!(
            positions.len(),
            23,
            "{kind:?}: every other event landed, each at its own position"
        );
        for (i, room) in rooms
            .iter()
            .copied()
            .enumerate()
            .filter(|(i, _)| *i != 7 && *i != 0)
        {
            let context = store.send_context(room, &[], None).await.unwrap();
            assert_eq!(
                context.head.prev_event_ids,
                [format!("$create{i}")],
                "{kind:?}"
            );
        }
        store.close().await;
    }
}

/// `/timestamp_to_event` walks a room by `(origin_server_ts, stream_ordering)` from a position,
/// exclusive: events of the same millisecond come in the order the room saw them, first going
/// forwards and last going backwards, and a page resumes after the last row it returned.
#[tokio::test]
async fn events_by_time_break_ties_in_stream_order() {
    for kind in test_backends() {
        let db = TestDatabase::create(kind).await;
        let store = Store::open(&db.url, &StoreOptions::default())
            .await
            .unwrap();
        let room = store
            .create_room("!r:localhost", "12", "@a:localhost", false, 0)
            .await
            .unwrap();
        let mut before = None;
        let mut prev = Vec::new();
        // `$late` is stored before the two events of one millisecond but sent after them.
        for (id, ts) in [("$create", 1), ("$late", 9), ("$one", 5), ("$two", 5)] {
            let prev_refs: Vec<&str> = prev.iter().map(String::as_str).collect();
            let persisted = put(
                &store,
                room,
                Ev {
                    id,
                    kind: if id == "$create" {
                        "m.room.create"
                    } else {
                        "m.room.message"
                    },
                    state_key: (id == "$create").then_some(""),
                    depth: prev.len() as i64 + 1,
                    prev: &prev_refs,
                    before,
                    ts: Some(ts),
                    ..Ev::default()
                },
            )
            .await;
            before = persisted.state_group;
            prev = vec![id.to_owned()];
        }
        let walk = |ts: i64, stream: i64, backwards: bool| {
            let store = &store;
            async move {
                store
                    .room_events_by_time(room, ts, stream, backwards, 10)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|row| (row.event_id, row.stream_ordering))
                    .collect::<Vec<_>>()
            }
        };
        let ids = |rows: &[(String, i64)]| rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>();

        let forwards = walk(5, -1, false).await;
        assert_eq!(ids(&forwards), ["$one", "$two", "$late"], "{kind:?}");
        let backwards = walk(5, i64::MAX, true).await;
        assert_eq!(ids(&backwards), ["$two", "$one", "$create"], "{kind:?}");
        // Resuming after a row of the tied millisecond.
        assert_eq!(ids(&walk(5, forwards[0].1, false).await), ["$two", "$late"]);
        assert_eq!(
            ids(&walk(5, backwards[0].1, true).await),
            ["$one", "$create"]
        );
        // Nothing past either end.
        assert!(walk(9, i64::MAX, false).await.is_empty(), "{kind:?}");
        assert!(walk(1, -1, true).await.is_empty(), "{kind:?}");
        store.close().await;
    }
}

/// Rooms 1 and 2 carry their event ids in the PDU, so two different events can claim one id:
/// the first one stored is kept and the second refused (issue 12).
#[tokio::test]
async fn a_second_event_with_a_stored_id_is_refused_and_the_first_kept() {
    for kind in test_backends() {
        let db = TestDatabase::create(kind).await;
        let store = Store::open(&db.url, &StoreOptions::default())
            .await
            .unwrap();
        let room = store
            .create_room("!r:localhost", "1", "@a:localhost", false, 0)
            .await
            .unwrap();
        let create = put(
            &store,
            room,
            Ev {
                id: "$create:localhost",
                kind: "m.room.create",
                state_key: Some(""),
                depth: 1,
                ..Ev::default()
            },
        )
        .await;
        let first = put(
            &store,
            room,
            Ev {
                id: "$same:localhost",
                kind: "m.room.message",
                depth: 2,
                prev: &["$create:localhost"],
                before: create.state_group,
                ..Ev::default()
            },
        )
        .await;
        let second = try_put(
            &store,
            room,
            Ev {
                id: "$same:localhost",
                kind: "m.room.topic",
                state_key: Some(""),
                depth: 2,
                prev: &["$create:localhost"],
                before: create.state_group,
                ..Ev::default()
            },
        )
        .await;
        assert!(
            matches!(second, Err(StoreError::Conflict(_))),
            "{kind:?}: {second:?}"
        );
        let kept = store.event("$same:localhost").await.unwrap().unwrap();
        assert_eq!(kept.event_type, "m.room.message", "{kind:?}");
        assert_eq!(kept.json, r#"{"type":"m.room.message"}"#);
        assert_eq!(
            store
                .event_by_nid(first.event_nid)
                .await
                .unwrap()
                .unwrap()
                .event_id,
            "$same:localhost"
        );
    }
}

/// Push actions land with their event: a few within the event's own statement, a large room's
/// in statements of their own after it. Either way each member's unread counts see them, and
/// the sender's transaction, relation and search text are written in the same append.
#[tokio::test]
async fn push_actions_land_with_their_event_in_small_and_large_rooms() {
    for kind in test_backends() {
        let db = TestDatabase::create(kind).await;
        let store = Store::open(&db.url, &StoreOptions::default())
            .await
            .unwrap();
        let room = store
            .create_room("!p:localhost", "12", "@a:localhost", false, 0)
            .await
            .unwrap();
        let create = put(
            &store,
            room,
            Ev {
                id: "$create",
                kind: "m.room.create",
                state_key: Some(""),
                depth: 1,
                ..Ev::default()
            },
        )
        .await;
        let actions = |n: usize| -> Vec<myelin_store::PushAction> {
            (0..n)
                .map(|i| myelin_store::PushAction {
                    user_id: format!("@u{i}:localhost"),
                    notify: true,
                    highlight: i == 0,
                    actions: r#"["notify"]"#.to_owned(),
                })
                .collect()
        };
        let mut before = create.state_group;
        let mut prev = "$create".to_owned();
        for (depth, (id, members)) in [("$few", 3), ("$many", 150)].into_iter().enumerate() {
            let pushed = actions(members);
            let prev_ids = [prev.clone()];
            let persisted = store
                .persist_event(&NewEvent {
                    room_nid: room,
                    event_id: id,
                    event_type: "m.room.message",
                    sender: "@a:localhost",
                    depth: depth as i64 + 2,
                    origin_server_ts: 1,
                    json: r#"{"type":"m.room.message"}"#,
                    prev_event_ids: &prev_ids,
                    state_group_before: before,
                    txn: txn("DEV", SEND_SCOPE, id),
                    push_actions: &pushed,
                    relation: Some(("$create", "m.reference")),
                    search: Some(("content.body", "hello")),
                    now: 1,
                    ..Default::default()
                })
                .await
                .unwrap();
            before = persisted.state_group;
            prev = id.to_owned();
        }
        // @u0 .. @u2 were notified by both events, the others by the second only; @u0's
        // notifications highlight.
        assert_eq!(
            store.unread_counts(room, "@u0:localhost").await.unwrap(),
            (2, 2),
            "{kind:?}"
        );
        assert_eq!(
            store.unread_counts(room, "@u2:localhost").await.unwrap(),
            (2, 0),
            "{kind:?}"
        );
        assert_eq!(
            store.unread_counts(room, "@u149:localhost").await.unwrap(),
            (1, 0),
            "{kind:?}"
        );
        assert_eq!(
            store.unread_counts(room, "@u150:localhost").await.unwrap(),
            (0, 0),
            "{kind:?}"
        );
        for id in ["$few", "$many"] {
            let key = TxnKey {
                user_id: "@a:localhost",
                device_id: "DEV",
                scope: SEND_SCOPE,
                txn_id: id,
            };
            assert_eq!(
                store.txn_event_id(key).await.unwrap().as_deref(),
                Some(id),
                "{kind:?}"
            );
        }
        assert_eq!(
            store.forward_extremities(room).await.unwrap().len(),
            1,
            "{kind:?}"
        );
    }
}

/// A lone message (on PostgreSQL, one statement that takes its own stream position) lands
/// whole: the position it reports is the one stored and the next of the stream, and its
/// relation, search text, transaction id and extremity carry that event and position. The same
/// id sent again is refused and changes nothing.
#[tokio::test]
async fn a_lone_message_takes_the_next_position_and_lands_whole() {
    for kind in test_backends() {
        let db = TestDatabase::create(kind).await;
        let store = Store::open(&db.url, &StoreOptions::default())
            .await
            .unwrap();
        let room = store
            .create_room("!m:localhost", "12", "@a:localhost", false, 0)
            .await
            .unwrap();
        let create = put(
            &store,
            room,
            Ev {
                id: "$create",
                kind: "m.room.create",
                state_key: Some(""),
                depth: 1,
                ..Ev::default()
            },
        )
        .await;
        let message = |id: &'static str, prev: &'static str, depth: i64| {
            let prev = [prev.to_owned()];
            let store = store.clone();
            async move {
                store
                    .persist_event(&NewEvent {
                        room_nid: room,
                        event_id: id,
                        event_type: "m.room.message",
                        sender: "@a:localhost",
                        depth,
                        origin_server_ts: depth,
                        json: r#"{"type":"m.room.message"}"#,
                        prev_event_ids: &prev,
                        state_group_before: create.state_group,
                        txn: txn("DEV", SEND_SCOPE, id),
                        relation: Some(("$create", "m.reference")),
                        search: Some(("content.body", "lone")),
                        now: depth,
                        ..Default::default()
                    })
                    .await
            }
        };
        let first = message("$m1", "$create", 2).await.unwrap();
        let second = message("$m2", "$m1", 3).await.unwrap();
        assert_eq!(
            first.stream_ordering,
            create.stream_ordering + 1,
            "{kind:?}"
        );
        assert_eq!(
            second.stream_ordering,
            first.stream_ordering + 1,
            "{kind:?}"
        );
        for (id, persisted) in [("$m1", &first), ("$m2", &second)] {
            let stored = store.event(id).await.unwrap().unwrap();
            assert_eq!(
                (stored.event_nid, stored.stream_ordering),
                (persisted.event_nid, persisted.stream_ordering),
                "{kind:?} {id}"
            );
            // A message leaves the state as it was, and the current state with it.
            assert_eq!(persisted.state_group, create.state_group, "{kind:?}");
            assert_eq!(
                persisted.current_state_group, create.state_group,
                "{kind:?}"
            );
            let key = TxnKey {
                user_id: "@a:localhost",
                device_id: "DEV",
                scope: SEND_SCOPE,
                txn_id: id,
            };
            assert_eq!(
                store.txn_event_id(key).await.unwrap().as_deref(),
                Some(id),
                "{kind:?}"
            );
        }
        // The relation and the search text are at the event's position.
        let related = store
            .relating_events(&myelin_store::RelationsQuery {
                room_nid: room,
                parents: &["$create".to_owned()],
                rel_type: Some("m.reference"),
                event_type: None,
                after: second.stream_ordering - 1,
                before: second.stream_ordering + 1,
                backwards: false,
                limit: 10,
            })
            .await
            .unwrap();
        let related: Vec<&str> = related.iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(related, ["$m2"], "{kind:?}");
        let hits = store
            .search_events(&myelin_store::SearchQuery {
                room_nids: &[room],
                words: &["lone".to_owned()],
                keys: &["content.body"],
                order: myelin_store::SearchOrder::Recent,
                before: None,
                offset: 0,
                limit: 10,
            })
            .await
            .unwrap();
        let hits: Vec<(i64, i64)> = hits
            .iter()
            .map(|h| (h.event_nid, h.stream_ordering))
            .collect();
        assert_eq!(
            hits,
            [
                (second.event_nid, second.stream_ordering),
                (first.event_nid, first.stream_ordering)
            ],
            "{kind:?}"
        );
        assert_eq!(
            store.forward_extremities(room).await.unwrap(),
            [second.event_nid],
            "{kind:?}"
        );

        // Sent again: refused, and the room is as it was.
        let again = message("$m2", "$m1", 3).await;
        assert!(
            matches!(again, Err(StoreError::Conflict(_))),
            "{kind:?}: {again:?}"
        );
        assert_eq!(
            store.event("$m2").await.unwrap().unwrap().stream_ordering,
            second.stream_ordering,
            "{kind:?}"
        );
        assert_eq!(
            store.forward_extremities(room).await.unwrap(),
            [second.event_nid],
            "{kind:?}"
        );
        store.close().await;
    }
}

#[tokio::test]
async fn related_parents_are_the_events_related_to_by_the_types_asked_in_any_room() {
    for kind in test_backends() {
        let db = TestDatabase::create(kind).await;
        let store = Store::open(&db.url, &StoreOptions::default())
            .await
            .unwrap();
        let mut events = Vec::new();
        for (room_id, prefix) in [("!one:localhost", "$a"), ("!two:localhost", "$b")] {
            let (room, create, created) = room_with_create(&store, room_id, prefix).await;
            // Roots first, then what relates to them, each citing the one before.
            let ids: Vec<String> = ["root", "plain", "thread", "reacted", "edit"]
                .iter()
                .map(|n| format!("{prefix}{n}"))
                .collect();
            let relations = [
                None,
                None,
                Some((ids[0].as_str(), "m.thread")),
                Some((ids[1].as_str(), "m.annotation")),
                Some((ids[2].as_str(), "m.replace")),
            ];
            let mut prev = create.clone();
            for (depth, (id, relation)) in ids.iter().zip(relations).enumerate() {
                put(
                    &store,
                    room,
                    Ev {
                        id,
                        kind: "m.room.message",
                        depth: depth as i64 + 2,
                        prev: &[&prev],
                        before: created.state_group,
                        relation,
                        ..Ev::default()
                    },
                )
                .await;
                prev = id.clone();
            }
            events.extend(ids);
        }
        let bundled = ["m.thread", "m.reference", "m.replace"];
        let mut asked = events.clone();
        asked.push("$unknown".to_owned());
        let mut related: Vec<String> = store
            .related_parents(&asked, &bundled)
            .await
            .unwrap()
            .into_iter()
            .collect();
        related.sort();
        // The thread roots and the edited thread reply of both rooms; an annotation is not
        // asked for, and events nothing relates to are not returned.
        assert_eq!(
            related,
            ["$aroot", "$athread", "$broot", "$bthread"],
            "{kind:?}"
        );
        assert!(
            store.related_parents(&asked, &[]).await.unwrap().is_empty(),
            "{kind:?}"
        );
        assert!(
            store
                .related_parents(&[], &bundled)
                .await
                .unwrap()
                .is_empty(),
            "{kind:?}"
        );
    }
}

#[tokio::test]
async fn state_groups_before_a_timeline_are_read_for_many_rooms_at_once() {
    for kind in test_backends() {
        let db = TestDatabase::create(kind).await;
        let store = Store::open(&db.url, &StoreOptions::default())
            .await
            .unwrap();
        let mut positions = Vec::new();
        let mut expected = Vec::new();
        for (room_id, prefix) in [("!one:localhost", "$a"), ("!two:localhost", "$b")] {
            let (room, create, created) = room_with_create(&store, room_id, prefix).await;
            let topic = format!("{prefix}topic");
            let topical = put(
                &store,
                room,
                Ev {
                    id: &topic,
                    kind: "m.room.topic",
                    state_key: Some(""),
                    depth: 2,
                    prev: &[&create],
                    before: created.state_group,
                    ..Ev::default()
                },
            )
            .await;
            let message = format!("{prefix}message");
            let sent = put(
                &store,
                room,
                Ev {
                    id: &message,
                    kind: "m.room.message",
                    depth: 3,
                    prev: &[&topic],
                    before: topical.state_group,
                    ..Ev::default()
                },
            )
            .await;
            assert_ne!(created.state_group, topical.state_group, "{kind:?}");
            // A timeline starting at the topic: the state before it (the create alone); one
            // starting after the message, at a position with no event of the room: the state
            // of its newest event before that.
            positions.push((room, topical.stream_ordering));
            expected.push((room, topical.stream_ordering, created.state_group));
            positions.push((room + 1000, sent.stream_ordering + 100));
            expected.push((room + 1000, 0, None));
            let mut after = store
                .state_groups_before(&[(room, sent.stream_ordering + 100)])
                .await
                .unwrap();
            assert_eq!(after.remove(&room), Some(sent.state_group), "{kind:?}");
        }
        let before = store.state_groups_before(&positions).await.unwrap();
        assert_eq!(before.len(), positions.len(), "{kind:?}");
        for (room, _, group) in expected {
            assert_eq!(before.get(&room), Some(&group), "room {room}, {kind:?}");
        }
        assert!(
            store.state_groups_before(&[]).await.unwrap().is_empty(),
            "{kind:?}"
        );
    }
}
