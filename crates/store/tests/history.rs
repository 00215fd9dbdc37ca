//! The store's reads of a room's history as clients see it, on both databases: `room_history`
//! walks the topological order, with backfilled events among live ones by depth, stream and
//! topological bounds (exclusive `from`, inclusive `to`) and a stream cap; the timeline reads
//! leave out soft-failed, rejected and outlier events; and `state_changed_in` gives, per room,
//! the event each key of the current state was left at by the changes in a window of the stream.

use myelin_store::{
    CurrentStateChange, EventStatus, HistoryPosition, HistoryWalk, NewEvent, Persisted, Placement,
    StateChange, StateDeltaWindow, StateValue, Store, StoreOptions, TimelineWindow,
    test_support::{TestDatabase, test_backends},
};

/// An event of `room` as the store sees it (the JSON is not read here).
struct Put<'a> {
    id: &'a str,
    state_key: Option<&'a str>,
    depth: i64,
    before: Option<i64>,
    status: EventStatus,
    placement: Placement,
    current_state: CurrentStateChange,
}

impl Default for Put<'_> {
    fn default() -> Self {
        Put {
            id: "",
            state_key: None,
            depth: 1,
            before: None,
            status: EventStatus::Normal,
            placement: Placement::Live,
            current_state: CurrentStateChange::Extend,
        }
    }
}

async fn put(store: &Store, room: i64, event: Put<'_>) -> Persisted {
    let kind = if event.state_key.is_some() {
        "m.room.topic"
    } else {
        "m.room.message"
    };
    let json = serde_json::json!({"type": kind, "depth": event.depth}).to_string();
    store
        .persist_event(&NewEvent {
            room_nid: room,
            event_id: event.id,
            event_type: kind,
            state_key: event.state_key,
            sender: "@a:test",
            depth: event.depth,
            origin_server_ts: event.depth,
            json: &json,
            state_group_before: event.before,
            status: event.status,
            placement: event.placement,
            current_state: event.current_state,
            now: event.depth,
            ..Default::default()
        })
        .await
        .unwrap()
}

fn walk(room: i64, backwards: bool) -> HistoryWalk {
    HistoryWalk {
        room_nid: room,
        from: None,
        to: None,
        backwards,
        max_stream: None,
        limit: 100,
    }
}

async fn ids(store: &Store, walk: HistoryWalk) -> Vec<String> {
    store
        .room_history(&walk)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event_id)
        .collect()
}

#[tokio::test]
async fn history_walks_the_topological_order_without_hidden_events() {
    for kind in test_backends() {
        let db = TestDatabase::create(kind).await;
        let store = Store::open(&db.url, &StoreOptions::default())
            .await
            .unwrap();
        let room = store
            .create_room("!r:test", "12", "@a:test", false, 0)
            .await
            .unwrap();
        let create = put(
            &store,
            room,
            Put {
                id: "$create",
                state_key: Some(""),
                ..Default::default()
            },
        )
        .await;
        let g = create.state_group;
        let live = |id, depth| Put {
            id,
            depth,
            before: g,
            ..Default::default()
        };
        let m1 = put(&store, room, live("$m1", 2)).await;
        let m2 = put(&store, room, live("$m2", 3)).await;
        // Hidden: never history, whatever their place.
        for (id, status) in [
            ("$soft", EventStatus::SoftFailed),
            ("$rejected", EventStatus::Rejected("no".to_owned())),
            ("$outlier", EventStatus::Outlier),
        ] {
            put(
                &store,
                room,
                Put {
                    status,
                    current_state: CurrentStateChange::Unchanged,
                    ..live(id, 3)
                },
            )
            .await;
        }
        // Backfilled beside `$m1`: below every live stream position, after `$create` by depth.
        let back = put(
            &store,
            room,
            Put {
                placement: Placement::Backfilled,
                current_state: CurrentStateChange::Unchanged,
                ..live("$back", 2)
            },
        )
        .await;
        assert!(back.stream_ordering < 0, "{kind:?}");

        let newest_first = ["$m2", "$m1", "$back", "$create"];
        assert_eq!(
            ids(&store, walk(room, true)).await,
            newest_first,
            "{kind:?}"
        );
        let mut oldest_first = newest_first;
        oldest_first.reverse();
        assert_eq!(
            ids(&store, walk(room, false)).await,
            oldest_first,
            "{kind:?}"
        );

        // A stream bound compares stream orderings only; the walk stays topological.
        let before_m2 = HistoryWalk {
            from: Some(HistoryPosition::Stream(m2.stream_ordering)),
            ..walk(room, true)
        };
        assert_eq!(
            ids(&store, before_m2).await,
            ["$m1", "$back", "$create"],
            "{kind:?}"
        );
        // Topological bounds: `from` exclusive, `to` inclusive.
        let m1_row = store.event("$m1").await.unwrap().unwrap();
        let at_m1 = HistoryPosition::of(&m1_row);
        assert_eq!(
            ids(
                &store,
                HistoryWalk {
                    from: Some(at_m1),
                    ..walk(room, true)
                }
            )
            .await,
            ["$back", "$create"],
            "{kind:?}"
        );
        assert_eq!(
            ids(
                &store,
                HistoryWalk {
                    from: Some(at_m1),
                    ..walk(room, false)
                }
            )
            .await,
            ["$m2"],
            "{kind:?}"
        );
        assert_eq!(
            ids(
                &store,
                HistoryWalk {
                    to: Some(at_m1),
                    ..walk(room, true)
                }
            )
            .await,
            ["$m2", "$m1"],
            "{kind:?}"
        );
        assert_eq!(
            ids(
                &store,
                HistoryWalk {
                    max_stream: Some(m1.stream_ordering),
                    limit: 2,
                    ..walk(room, true)
                }
            )
            .await,
            ["$m1", "$back"],
            "{kind:?}"
        );

        // The stream-ordered timeline reads leave the hidden events out too.
        let timeline: Vec<String> = store
            .room_timelines(&[TimelineWindow {
                room_nid: room,
                after: 0,
                before: i64::MAX,
                limit: 100,
            }])
            .await
            .unwrap()
            .remove(&room)
            .unwrap()
            .into_iter()
            .map(|e| e.event_id)
            .collect();
        assert_eq!(timeline, ["$m2", "$m1", "$create"], "{kind:?}");
        let events: Vec<String> = store
            .room_events(room, 0, i64::MAX, false, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.event_id)
            .collect();
        assert_eq!(events, ["$create", "$m1", "$m2"], "{kind:?}");
    }
}

#[tokio::test]
async fn state_changed_in_gives_each_key_its_last_event_in_the_window() {
    for kind in test_backends() {
        let db = TestDatabase::create(kind).await;
        let store = Store::open(&db.url, &StoreOptions::default())
            .await
            .unwrap();
        let room = store
            .create_room("!r:test", "12", "@a:test", false, 0)
            .await
            .unwrap();
        let first = put(
            &store,
            room,
            Put {
                id: "$first",
                state_key: Some(""),
                ..Default::default()
            },
        )
        .await;
        let second = put(
            &store,
            room,
            Put {
                id: "$second",
                state_key: Some(""),
                depth: 2,
                before: first.state_group,
                ..Default::default()
            },
        )
        .await;
        let since = second.stream_ordering;
        // A resolution puts `$first` back, with no state event of its own.
        let fork = put(
            &store,
            room,
            Put {
                id: "$fork",
                depth: 3,
                before: second.state_group,
                current_state: CurrentStateChange::Resolved {
                    expected: second.current_state_group.unwrap(),
                    changes: vec![StateChange {
                        event_type: "m.room.topic".to_owned(),
                        state_key: String::new(),
                        value: StateValue::Event(first.event_nid),
                        membership: None,
                    }],
                },
                ..Default::default()
            },
        )
        .await;
        let changed = |after: i64, upto: i64| {
            let store = &store;
            async move {
                store
                    .state_changed_in(
                        &[StateDeltaWindow {
                            room_nid: room,
                            after,
                            upto,
                        }],
                        false,
                    )
                    .await
                    .unwrap()
                    .remove(&room)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|e| e.event_id)
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(
            changed(since, fork.stream_ordering).await,
            ["$first"],
            "{kind:?}"
        );
        // The window's end is inclusive, its start exclusive; the last change in it wins.
        assert_eq!(changed(0, since).await, ["$second"], "{kind:?}");
        assert_eq!(
            changed(0, fork.stream_ordering).await,
            ["$first"],
            "{kind:?}"
        );
        assert!(changed(fork.stream_ordering, i64::MAX).await.is_empty());
        // Several windows in one read: each room's changes in its own window only (a room
        // with no changes, or none in its window, has no entry).
        let several = store
            .state_changed_in(
                &[
                    StateDeltaWindow {
                        room_nid: room + 1000,
                        after: 0,
                        upto: i64::MAX,
                    },
                    StateDeltaWindow {
                        room_nid: room,
                        after: 0,
                        upto: since,
                    },
                ],
                false,
            )
            .await
            .unwrap();
        assert_eq!(several.len(), 1, "{kind:?}");
        let ids: Vec<&str> = several[&room].iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(ids, ["$second"], "{kind:?}");
        assert!(store.state_changed_in(&[], false).await.unwrap().is_empty());

        // A key that leaves the state has no event to show.
        let gone = put(
            &store,
            room,
            Put {
                id: "$gone",
                depth: 4,
                before: fork.state_group,
                current_state: CurrentStateChange::Resolved {
                    expected: fork.current_state_group.unwrap(),
                    changes: vec![StateChange {
                        event_type: "m.room.topic".to_owned(),
                        state_key: String::new(),
                        value: StateValue::Absent,
                        membership: None,
                    }],
                },
                ..Default::default()
            },
        )
        .await;
        assert!(
            changed(since, gone.stream_ordering).await.is_empty(),
            "{kind:?}"
        );
    }
}
