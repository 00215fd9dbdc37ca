//! The federation sender's rows in the store: the fan-out (local normal events, less those a resident delivers, and relayed ones only, recorded
//! with its position in one conditional write, an idle destination's position moved up to its
//! first new event), a destination's pending events (its rooms only, no further than the latest
//! event meant for it), catch-up cutoffs, delivery (a conditional position move, outbox rows
//! gone), transaction numbers, queue depths and the backoff rows. On both backends.

use myelin_store::{
    BackoffRow, CurrentStateChange, Delivery, FanoutEntry, NewEvent, Persisted, Store,
    StoreOptions,
    test_support::{TestDatabase, test_backends},
};

const HS: &str = "hs.test";
const PEER: &str = "peer.test";

struct Room {
    nid: i64,
    last: Option<Persisted>,
    depth: i64,
}

impl Room {
    async fn new(store: &Store, id: &str) -> Room {
        let nid = store
            .create_room(id, "10", "@a:hs.test", false, 0)
            .await
            .unwrap();
        let mut room = Room {
            nid,
            last: None,
            depth: 0,
        };
        room.put(store, &format!("$create{id}"), "@a:hs.test", Some(""))
            .await;
        room
    }

    /// Appends an event of `sender` (a state event when `state_key` is given).
    async fn put(
        &mut self,
        store: &Store,
        id: &str,
        sender: &str,
        state_key: Option<&str>,
    ) -> Persisted {
        self.put_as(store, id, sender, state_key, Delivery::BySender)
            .await
    }

    /// [`Room::put`], `delivery` saying who sends the event on.
    async fn put_as(
        &mut self,
        store: &Store,
        id: &str,
        sender: &str,
        state_key: Option<&str>,
        delivery: Delivery,
    ) -> Persisted {
        self.depth += 1;
        let kind = if state_key.is_some() {
            "m.room.create"
        } else {
            "m.room.message"
        };
        let persisted = store
            .persist_event(&NewEvent {
                room_nid: self.nid,
                event_id: id,
                event_type: kind,
                state_key,
                sender,
                depth: self.depth,
                origin_server_ts: self.depth,
                json: &format!(r#"{{"type":"{kind}","body":"{id}"}}"#),
                state_group_before: self.last.and_then(|p| p.state_group),
                current_state: CurrentStateChange::Extend,
                now: self.depth,
                delivery,
                ..Default::default()
            })
            .await
            .unwrap();
        self.last = Some(persisted);
        persisted
    }
}

async fn open(kind: myelin_store::DatabaseKind) -> (TestDatabase, Store) {
    let db = TestDatabase::create(kind).await;
    let store = Store::open(&db.url, &StoreOptions::default())
        .await
        .unwrap();
    (db, store)
}

fn entry(room: &Room, first: &Persisted, last: &Persisted) -> FanoutEntry {
    FanoutEntry {
        destination: PEER.to_owned(),
        room_nid: room.nid,
        first_ordering: first.stream_ordering,
        last_ordering: last.stream_ordering,
    }
}

fn ids(events: &[myelin_store::OutgoingEvent]) -> Vec<&str> {
    events.iter().map(|e| e.event.event_id.as_str()).collect()
}

/// A local join a resident delivers (one made through its `send_join`) is not this server's to
/// send; the local events after it are.
#[tokio::test]
async fn local_events_a_resident_delivers_are_not_ours_to_send() {
    for kind in test_backends() {
        let (_db, store) = open(kind).await;
        let mut room = Room::new(&store, "!r:peer.test").await;
        let join = room
            .put_as(
                &store,
                "$join",
                "@a:hs.test",
                Some("@a:hs.test"),
                Delivery::ByResident,
            )
            .await;
        let said = room.put(&store, "$said", "@a:hs.test", None).await;
        let head = store.events_stream_position().await.unwrap();
        let found = store.local_events_between(HS, 0, head, 10).await.unwrap();
        assert_eq!(ids(&found), ["$create!r:peer.test", "$said"], "{kind:?}");
        assert!(
            store
                .record_federation_fanout(0, head, &[entry(&room, &join, &said)], 0)
                .await
                .unwrap()
        );
        let row = store.federation_destination(PEER, None).await.unwrap();
        let pending = store
            .federation_pending_events(PEER, HS, row.event_position, 50)
            .await
            .unwrap();
        assert_eq!(ids(&pending), ["$said"], "{kind:?}");
    }
}

#[tokio::test]
async fn relayed_events_of_other_servers_count_as_ours_to_send() {
    for kind in test_backends() {
        let (_db, store) = open(kind).await;
        let mut room = Room::new(&store, "!r:hs.test").await;
        room.put(&store, "$remote", "@b:peer.test", None).await;
        let joined = room
            .put_as(
                &store,
                "$relayed",
                "@c:third.test",
                Some("@c:third.test"),
                Delivery::Relay,
            )
            .await;
        let head = store.events_stream_position().await.unwrap();
        let found = store.local_events_between(HS, 0, head, 10).await.unwrap();
        assert_eq!(ids(&found), ["$create!r:hs.test", "$relayed"], "{kind:?}");
        assert_eq!(
            found.iter().map(|e| e.relayed).collect::<Vec<_>>(),
            [false, true],
            "{kind:?}"
        );
        assert!(
            store
                .record_federation_fanout(0, head, &[entry(&room, &joined, &joined)], 0)
                .await
                .unwrap()
        );
        let row = store.federation_destination(PEER, None).await.unwrap();
        let pending = store
            .federation_pending_events(PEER, HS, row.event_position, 50)
            .await
            .unwrap();
        assert_eq!(ids(&pending), ["$relayed"], "{kind:?}");
        assert_eq!(
            store.federation_queue_depths(HS).await.unwrap()[0].events,
            1,
            "{kind:?}"
        );
    }
}

#[tokio::test]
async fn fan_out_pending_events_and_delivery() {
    for kind in test_backends() {
        let (_db, store) = open(kind).await;
        // History older than the sender is not its business: the fan-out starts at the head.
        let mut room = Room::new(&store, "!r:hs.test").await;
        assert_eq!(store.federation_fanout_position().await.unwrap(), 0);
        let e1 = room.put(&store, "$e1", "@a:hs.test", None).await;
        room.put(&store, "$remote", "@b:peer.test", None).await;
        // A server whose name ends like ours is not ours.
        room.put(&store, "$lookalike", "@c:xhs.test", None).await;
        let e2 = room.put(&store, "$e2", "@a:hs.test", None).await;
        let head = store.events_stream_position().await.unwrap();
        let local = store.local_events_between(HS, 0, head, 10).await.unwrap();
        assert_eq!(ids(&local), ["$create!r:hs.test", "$e1", "$e2"], "{kind:?}");
        assert_eq!(
            ids(&store.local_events_between(HS, 0, head, 2).await.unwrap()),
            ["$create!r:hs.test", "$e1"]
        );

        // Recorded with the position, once: a second process with the old position writes
        // nothing.
        assert!(
            store
                .record_federation_fanout(0, head, &[entry(&room, &e1, &e2)], 7)
                .await
                .unwrap()
        );
        assert!(
            !store
                .record_federation_fanout(0, head, &[entry(&room, &e2, &e2)], 9)
                .await
                .unwrap(),
            "{kind:?}: the position moved"
        );
        assert_eq!(store.federation_fanout_position().await.unwrap(), head);
        let row = store.federation_destination(PEER, None).await.unwrap();
        assert_eq!(row.event_position, e1.stream_ordering - 1, "{kind:?}");
        assert_eq!(row.receipt_position, 7);

        // Pending: the destination's local events from its position, no further than the
        // latest meant for it.
        let e3 = room.put(&store, "$e3", "@a:hs.test", None).await;
        let pending = store
            .federation_pending_events(PEER, HS, row.event_position, 50)
            .await
            .unwrap();
        assert_eq!(ids(&pending), ["$e1", "$e2"], "{kind:?}");
        let depth = store.federation_queue_depths(HS).await.unwrap();
        assert_eq!((depth[0].destination.as_str(), depth[0].events), (PEER, 2));

        // Delivery moves the position only from where the transaction was built.
        let wrong = store
            .record_federation_delivery(PEER, 0, e2.stream_ordering, 7, 7, &[], Some(5))
            .await
            .unwrap();
        assert!(!wrong, "{kind:?}");
        let row = store.federation_destination(PEER, None).await.unwrap();
        assert_eq!(row.event_position, e1.stream_ordering - 1);
        assert_eq!(row.last_success_ts, Some(5), "the answer still counts");
        assert!(
            store
                .record_federation_delivery(
                    PEER,
                    row.event_position,
                    e2.stream_ordering,
                    7,
                    8,
                    &[],
                    Some(6)
                )
                .await
                .unwrap()
        );
        let row = store.federation_destination(PEER, None).await.unwrap();
        assert_eq!(
            (row.event_position, row.receipt_position),
            (e2.stream_ordering, 8)
        );
        assert_eq!(
            store.federation_queue_depths(HS).await.unwrap()[0].events,
            0
        );

        // An idle destination (nothing pending) is moved up to just before its next event;
        // one with events pending is not.
        let e4 = room.put(&store, "$e4", "@a:hs.test", None).await;
        let head2 = store.events_stream_position().await.unwrap();
        assert!(
            store
                .record_federation_fanout(head, head2, &[entry(&room, &e4, &e4)], 8)
                .await
                .unwrap()
        );
        let row = store.federation_destination(PEER, None).await.unwrap();
        assert_eq!(
            row.event_position,
            e4.stream_ordering - 1,
            "{kind:?}: past $e3"
        );
        let e5 = room.put(&store, "$e5", "@a:hs.test", None).await;
        let head3 = store.events_stream_position().await.unwrap();
        assert!(
            store
                .record_federation_fanout(head2, head3, &[entry(&room, &e5, &e5)], 8)
                .await
                .unwrap()
        );
        let row = store.federation_destination(PEER, None).await.unwrap();
        assert_eq!(
            row.event_position,
            e4.stream_ordering - 1,
            "{kind:?}: $e4 pending"
        );
        let pending = store
            .federation_pending_events(PEER, HS, row.event_position, 50)
            .await
            .unwrap();
        assert_eq!(ids(&pending), ["$e4", "$e5"], "{kind:?}");
        let _ = e3;

        // Transaction numbers count up, never twice.
        let first = store.next_federation_txn_serial(PEER).await.unwrap();
        let second = store.next_federation_txn_serial(PEER).await.unwrap();
        assert_eq!(second, first + 1);
    }
}

#[tokio::test]
async fn catch_up_cutoffs_keep_the_latest_events_of_rooms_far_behind() {
    for kind in test_backends() {
        let (_db, store) = open(kind).await;
        let mut busy = Room::new(&store, "!busy:hs.test").await;
        let mut quiet = Room::new(&store, "!quiet:hs.test").await;
        let mut busy_events = Vec::new();
        for i in 0..60 {
            busy_events.push(
                busy.put(&store, &format!("$b{i}"), "@a:hs.test", None)
                    .await,
            );
            if i < 20 {
                quiet
                    .put(&store, &format!("$q{i}"), "@a:hs.test", None)
                    .await;
            }
        }
        let quiet_last = quiet.last.unwrap();
        let head = store.events_stream_position().await.unwrap();
        store
            .record_federation_fanout(
                0,
                head,
                &[
                    entry(&busy, &busy_events[0], &busy_events[59]),
                    FanoutEntry {
                        destination: PEER.to_owned(),
                        room_nid: quiet.nid,
                        first_ordering: 1,
                        last_ordering: quiet_last.stream_ordering,
                    },
                ],
                0,
            )
            .await
            .unwrap();
        let row = store.federation_destination(PEER, None).await.unwrap();
        let cutoffs = store
            .federation_catch_up_cutoffs(PEER, HS, row.event_position, 50, 10)
            .await
            .unwrap();
        assert_eq!(
            cutoffs,
            [(busy.nid, busy_events[50].stream_ordering)],
            "{kind:?}: only the room over the limit, from its 10th latest event"
        );
    }
}

#[tokio::test]
async fn outbox_and_backoff_rows() {
    for kind in test_backends() {
        let (_db, store) = open(kind).await;
        // Remote to-device messages are queued with the local ones, once per transaction.
        for _ in 0..2 {
            store
                .queue_to_device_everywhere(
                    "@a:hs.test",
                    "DEV",
                    "t1",
                    "m.test",
                    &[],
                    &[(PEER.to_owned(), r#"{"n":1}"#.to_owned())],
                    1,
                )
                .await
                .unwrap();
        }
        assert_eq!(
            store.federation_outbox_destinations().await.unwrap(),
            [PEER]
        );
        let queued = store.federation_outbox(PEER, 100).await.unwrap();
        assert_eq!(queued.len(), 1, "{kind:?}");
        assert_eq!(queued[0].edu_type, "m.direct_to_device");
        assert_eq!(queued[0].content, r#"{"n":1}"#);
        let row = store.federation_destination(PEER, None).await.unwrap();
        assert_eq!(store.federation_queue_depths(HS).await.unwrap()[0].edus, 1);
        store
            .record_federation_delivery(
                PEER,
                row.event_position,
                row.event_position,
                row.receipt_position,
                row.receipt_position,
                &[queued[0].id],
                Some(2),
            )
            .await
            .unwrap();
        assert!(store.federation_outbox(PEER, 100).await.unwrap().is_empty());

        let down = BackoffRow {
            destination: PEER.to_owned(),
            failures: 3,
            retry_at_ts: 1_000,
            down_since_ts: 10,
            last_error: "refused".to_owned(),
        };
        store.set_federation_backoff(&down).await.unwrap();
        store
            .set_federation_backoff(&BackoffRow {
                failures: 4,
                ..down.clone()
            })
            .await
            .unwrap();
        assert_eq!(
            store.federation_backoffs().await.unwrap(),
            [BackoffRow {
                failures: 4,
                ..down
            }],
            "{kind:?}"
        );
        store.clear_federation_backoff(PEER).await.unwrap();
        assert!(store.federation_backoffs().await.unwrap().is_empty());
    }
}
