//! What clients read of the event graph (issue 14), on both databases: soft-failed, rejected and
//! outlier events reach no client read (sync, `/messages`, `/context`, `/event`, `/relations`,
//! `/threads`, bundled aggregations, `/search`, `/notifications`, unread counts,
//! `/timestamp_to_event`); backfilled history pages through `/messages` in depth order between
//! its live neighbours (from topological tokens and from sync's stream `prev_batch`) and never
//! reaches `/sync`; and a fork's resolution that puts an older event back into the current state
//! shows in an incremental sync's `state` and `state_after`, and moves the room to `leave` when
//! it is the reader's membership.
//!
//! Federation cannot bring such events over HTTP yet, so the tests write them through the
//! server's own store (`TestServer::store`), with the status, placement and change of current
//! state that the receive pipeline will give them.

use myelin_store::{
    CurrentStateChange, EventStatus, NewEvent, Placement, PushAction, StateChange, StateValue,
    Store,
};
use myelin_testkit::{TestServer, TestUser, enc, test_backends};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn send(server: &TestServer, user: &TestUser, room: &str, body: &str) -> String {
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
    assert_eq!(status, StatusCode::OK, "{reply}");
    reply["event_id"].as_str().unwrap().to_owned()
}

async fn put_state(
    server: &TestServer,
    user: &TestUser,
    room: &str,
    event_type: &str,
    state_key: &str,
    content: Value,
) -> String {
    let (status, reply) = server
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/{event_type}/{}",
                enc(room),
                enc(state_key)
            ),
            &user.access_token,
            content,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    reply["event_id"].as_str().unwrap().to_owned()
}

async fn ok(server: &TestServer, user: &TestUser, path: &str) -> Value {
    let (status, body) = server.get(path, &user.access_token).await;
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    body
}

async fn sync(server: &TestServer, user: &TestUser, query: &str) -> Value {
    ok(server, user, &format!("/_matrix/client/v3/sync?{query}")).await
}

async fn join(server: &TestServer, user: &TestUser, room: &str) {
    let (status, body) = server
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(room)),
            &user.access_token,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn leave(server: &TestServer, user: &TestUser, room: &str) {
    let (status, body) = server
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(room)),
            &user.access_token,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// The `content.body` of the messages among `events`, in order.
fn bodies(events: &Value) -> Vec<String> {
    events
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter(|e| e["type"] == "m.room.message")
                .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn ids(events: &Value) -> Vec<String> {
    events
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// An event id of the room-version-4 form, made from a tag (not a hash: the store never checks).
fn event_id(tag: &str) -> String {
    format!("${tag:A<43}")
}

/// A message written straight through the store, as the receive pipeline will write events
/// from other servers.
struct Injected<'a> {
    id: &'a str,
    body: &'a str,
    depth: i64,
    ts: i64,
    status: EventStatus,
    placement: Placement,
    current_state: CurrentStateChange,
    /// A thread reply to this event.
    thread_root: Option<&'a str>,
    /// Whom the event notifies, with a highlight.
    notifies: Option<&'a str>,
}

impl Default for Injected<'_> {
    fn default() -> Self {
        Injected {
            id: "",
            body: "",
            depth: 1,
            ts: 0,
            status: EventStatus::Normal,
            placement: Placement::Live,
            current_state: CurrentStateChange::Unchanged,
            thread_root: None,
            notifies: None,
        }
    }
}

/// The room's current state group, which a resolved change of state is decided against.
async fn current_group(store: &Store, room_nid: i64) -> i64 {
    store
        .send_context(room_nid, &[], None)
        .await
        .unwrap()
        .head
        .current_state_group
        .expect("the room has a current state")
}

async fn nid(store: &Store, event_id: &str) -> i64 {
    store.event(event_id).await.unwrap().unwrap().event_nid
}

/// Persists `event` in `room`: a copy of `template` (a message stored there) with the body,
/// depth, timestamp and relation asked for, built on the room's forward extremities.
async fn inject(server: &TestServer, room: &str, template: &str, event: Injected<'_>) {
    let store = server.store();
    let room = store.room(room).await.unwrap().unwrap();
    let head = store
        .send_context(room.room_nid, &[], None)
        .await
        .unwrap()
        .head;
    let template = store.event(template).await.unwrap().unwrap();
    let mut json: Value = serde_json::from_str(&template.json).unwrap();
    let mut content = json!({"msgtype": "m.text", "body": event.body});
    if let Some(root) = event.thread_root {
        content["m.relates_to"] = json!({"rel_type": "m.thread", "event_id": root});
    }
    json["content"] = content;
    json["depth"] = json!(event.depth);
    json["origin_server_ts"] = json!(event.ts);
    json["prev_events"] = json!(head.prev_event_ids);
    let json = json.to_string();
    let push: Vec<PushAction> = event
        .notifies
        .map(|user| PushAction {
            user_id: user.to_owned(),
            notify: true,
            highlight: true,
            actions: json!(["notify", {"set_tweak": "highlight"}]).to_string(),
        })
        .into_iter()
        .collect();
    let outlier = event.status == EventStatus::Outlier;
    store
        .persist_event(&NewEvent {
            room_nid: room.room_nid,
            event_id: event.id,
            event_type: "m.room.message",
            state_key: None,
            sender: &template.sender,
            depth: event.depth,
            origin_server_ts: event.ts,
            json: &json,
            prev_event_ids: &head.prev_event_ids,
            auth_event_ids: &[],
            state_group_before: if outlier {
                None
            } else {
                head.current_state_group
            },
            status: event.status,
            placement: event.placement,
            current_state: event.current_state,
            relation: event.thread_root.map(|root| (root, "m.thread")),
            search: Some(("content.body", event.body)),
            push_actions: &push,
            now: event.ts,
            ..Default::default()
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn soft_failed_rejected_and_outlier_events_reach_no_client_read() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let room = server
            .create_room(&alice, json!({"preset": "public_chat"}))
            .await;
        join(&server, &bob, &room).await;
        let root = send(&server, &alice, &room, "root").await;
        let root_event = ok(
            &server,
            &bob,
            &format!(
                "/_matrix/client/v3/rooms/{}/event/{}",
                enc(&room),
                enc(&root)
            ),
        )
        .await;
        let root_ts = root_event["origin_server_ts"].as_i64().unwrap();
        let since = sync(&server, &bob, "").await["next_batch"]
            .as_str()
            .unwrap()
            .to_owned();
        let depth = server.store().event(&root).await.unwrap().unwrap().depth;

        // Each a thread reply to `root` that would highlight for bob, with searchable text, and
        // sent "later" than anything else (for `/timestamp_to_event`).
        let hidden = [
            (event_id("SoftFailed"), EventStatus::SoftFailed),
            (
                event_id("Rejected"),
                EventStatus::Rejected("not allowed".to_owned()),
            ),
            (event_id("Outlier"), EventStatus::Outlier),
        ];
        for (i, (id, status)) in hidden.iter().enumerate() {
            inject(
                &server,
                &room,
                &root,
                Injected {
                    id,
                    body: &format!("secret {i}"),
                    depth: depth + 1,
                    ts: root_ts + 1_000_000,
                    status: status.clone(),
                    thread_root: Some(&root),
                    notifies: Some(&bob.user_id),
                    ..Default::default()
                },
            )
            .await;
        }
        let after = send(&server, &alice, &room, "after").await;
        let no_secret = |what: &str, found: Vec<String>| {
            assert!(
                found.iter().all(|b| !b.starts_with("secret")),
                "{kind:?} {what}: {found:?}"
            );
        };

        // By id: as if they did not exist.
        for (id, _) in &hidden {
            for path in [
                format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(id)),
                format!(
                    "/_matrix/client/v3/rooms/{}/context/{}",
                    enc(&room),
                    enc(id)
                ),
                format!(
                    "/_matrix/client/v1/rooms/{}/relations/{}",
                    enc(&room),
                    enc(id)
                ),
            ] {
                let (status, body) = server.get(&path, &bob.access_token).await;
                assert_eq!(status, StatusCode::NOT_FOUND, "{kind:?} {path}: {body}");
                assert_eq!(body["errcode"], "M_NOT_FOUND", "{kind:?} {path}");
            }
        }

        // Nor may a receipt name them.
        for (id, _) in &hidden {
            let (status, body) = server
                .post(
                    &format!(
                        "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                        enc(&room),
                        enc(id)
                    ),
                    &bob.access_token,
                    json!({}),
                )
                .await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{kind:?} receipt: {body}");
        }

        // Pages and context.
        for dir in ["b", "f"] {
            let page = ok(
                &server,
                &bob,
                &format!(
                    "/_matrix/client/v3/rooms/{}/messages?dir={dir}&limit=100",
                    enc(&room)
                ),
            )
            .await;
            let found = bodies(&page["chunk"]);
            assert!(found.contains(&"after".to_owned()), "{kind:?} {found:?}");
            no_secret("/messages", found);
        }
        let context = ok(
            &server,
            &bob,
            &format!(
                "/_matrix/client/v3/rooms/{}/context/{}?limit=10",
                enc(&room),
                enc(&root)
            ),
        )
        .await;
        assert_eq!(
            ids(&context["events_after"]),
            vec![after.clone()],
            "{kind:?}"
        );
        assert!(
            context["event"]["unsigned"]["m.relations"].is_null(),
            "{kind:?} no thread is bundled: {}",
            context["event"]
        );

        // Relations, threads and search.
        let relations = ok(
            &server,
            &bob,
            &format!(
                "/_matrix/client/v1/rooms/{}/relations/{}",
                enc(&room),
                enc(&root)
            ),
        )
        .await;
        assert_eq!(relations["chunk"], json!([]), "{kind:?}");
        let threads = ok(
            &server,
            &bob,
            &format!("/_matrix/client/v1/rooms/{}/threads", enc(&room)),
        )
        .await;
        assert_eq!(threads["chunk"], json!([]), "{kind:?}");
        let (status, search) = server
            .post(
                "/_matrix/client/v3/search",
                &bob.access_token,
                json!({"search_categories": {"room_events": {"search_term": "secret"}}}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{search}");
        let events = &search["search_categories"]["room_events"];
        assert_eq!(events["count"], 0, "{kind:?} {events}");
        assert_eq!(events["results"], json!([]), "{kind:?} {events}");

        // Notifications and unread counts: only `root` and `after` notify, neither highlights.
        let notifications = ok(&server, &bob, "/_matrix/client/v3/notifications").await;
        let notified: Vec<Value> = notifications["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["event"].clone())
            .collect();
        no_secret("/notifications", bodies(&Value::Array(notified)));
        let initial = sync(&server, &bob, "").await;
        let joined = &initial["rooms"]["join"][&room];
        no_secret("initial sync", bodies(&joined["timeline"]["events"]));
        assert_eq!(
            joined["unread_notifications"]["highlight_count"], 0,
            "{kind:?} {joined}"
        );
        let incremental = sync(&server, &bob, &format!("since={since}")).await;
        let timeline = &incremental["rooms"]["join"][&room]["timeline"];
        assert_eq!(bodies(&timeline["events"]), vec!["after"], "{kind:?}");
        assert_eq!(timeline["limited"], false, "{kind:?}");

        // Jump to date: the newest visible event before the hidden ones' timestamp.
        let jump = ok(
            &server,
            &bob,
            &format!(
                "/_matrix/client/v1/rooms/{}/timestamp_to_event?ts={}&dir=b",
                enc(&room),
                root_ts + 1_000_000
            ),
        )
        .await;
        assert_eq!(jump["event_id"], after.as_str(), "{kind:?}");
    }
}

#[tokio::test]
async fn backfilled_history_pages_in_depth_order_and_never_syncs() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let room = server
            .create_room(&alice, json!({"preset": "private_chat"}))
            .await;
        let m1 = send(&server, &alice, &room, "m1").await;
        send(&server, &alice, &room, "m2").await;
        let (d1, d2) = {
            let store = server.store();
            let m1 = store.event(&m1).await.unwrap().unwrap();
            (m1.depth, m1.depth + 1)
        };
        let since = sync(&server, &alice, "").await["next_batch"]
            .as_str()
            .unwrap()
            .to_owned();

        // Older history, fetched backwards: stream positions counting down from 0, placed by
        // depth (ties go to the stream ordering: the live event after, the later backfill
        // before the earlier).
        for (tag, body, depth) in [
            ("BackLow", "b-low", d1),
            ("BackMidOne", "b-mid-1", d2),
            ("BackMidTwo", "b-mid-2", d2),
        ] {
            inject(
                &server,
                &room,
                &m1,
                Injected {
                    id: &event_id(tag),
                    body,
                    depth,
                    ts: 1,
                    placement: Placement::Backfilled,
                    ..Default::default()
                },
            )
            .await;
        }
        let newest_first = ["m2", "b-mid-1", "b-mid-2", "m1", "b-low"];

        let messages = |query: String| {
            let server = &server;
            let alice = &alice;
            let room = &room;
            async move {
                ok(
                    server,
                    alice,
                    &format!("/_matrix/client/v3/rooms/{}/messages?{query}", enc(room)),
                )
                .await
            }
        };
        let all_back = messages("dir=b&limit=100".to_owned()).await;
        assert_eq!(bodies(&all_back["chunk"]), newest_first, "{kind:?}");
        let all_ids = ids(&all_back["chunk"]);

        // Page by page, following the topological tokens, to the same history.
        let mut paged = Vec::new();
        let mut from: Option<String> = None;
        loop {
            let query = match &from {
                Some(token) => format!("dir=b&limit=2&from={}", enc(token)),
                None => "dir=b&limit=2".to_owned(),
            };
            let page = messages(query).await;
            paged.extend(ids(&page["chunk"]));
            match page["end"].as_str() {
                Some(end) => {
                    assert!(end.starts_with('t'), "{kind:?} a topological token: {end}");
                    from = Some(end.to_owned());
                }
                None => break,
            }
            assert!(paged.len() <= all_ids.len(), "{kind:?} pages never end");
        }
        assert_eq!(paged, all_ids, "{kind:?}");

        // Forwards from the room's start: the same history, oldest first.
        let all_forward = messages("dir=f&limit=100".to_owned()).await;
        let mut oldest_first = all_ids.clone();
        oldest_first.reverse();
        assert_eq!(ids(&all_forward["chunk"]), oldest_first, "{kind:?}");

        // Sync never shows it; its stream `prev_batch` continues into it in depth order.
        let filter = enc(&json!({"room": {"timeline": {"limit": 1}}}).to_string());
        let initial = sync(&server, &alice, &format!("filter={filter}")).await;
        let timeline = &initial["rooms"]["join"][&room]["timeline"];
        assert_eq!(bodies(&timeline["events"]), vec!["m2"], "{kind:?}");
        let prev_batch = timeline["prev_batch"].as_str().unwrap();
        let before = messages(format!("dir=b&limit=100&from={}", enc(prev_batch))).await;
        assert_eq!(bodies(&before["chunk"]), newest_first[1..], "{kind:?}");
        let incremental = sync(&server, &alice, &format!("since={since}")).await;
        assert!(
            incremental["rooms"]["join"][&room].is_null(),
            "{kind:?} nothing new to sync: {incremental}"
        );

        // Context around a backfilled event: its neighbours by depth.
        let context = ok(
            &server,
            &alice,
            &format!(
                "/_matrix/client/v3/rooms/{}/context/{}?limit=2",
                enc(&room),
                enc(&event_id("BackMidOne"))
            ),
        )
        .await;
        assert_eq!(
            bodies(&context["events_before"]),
            vec!["b-mid-2"],
            "{kind:?}"
        );
        assert_eq!(bodies(&context["events_after"]), vec!["m2"], "{kind:?}");
        let from_start = messages(format!(
            "dir=b&limit=100&from={}",
            enc(context["start"].as_str().unwrap())
        ))
        .await;
        assert_eq!(bodies(&from_start["chunk"]), ["m1", "b-low"], "{kind:?}");
        // Jump to date finds backfilled events at the very timestamp asked for (all three are
        // at 1; the earliest the room saw of them was stored last).
        let jump = ok(
            &server,
            &alice,
            &format!(
                "/_matrix/client/v1/rooms/{}/timestamp_to_event?ts=1&dir=f",
                enc(&room)
            ),
        )
        .await;
        assert_eq!(jump["event_id"], event_id("BackMidTwo"), "{kind:?}");

        // `/members` reads a topological token as the place it names.
        let members = ok(
            &server,
            &alice,
            &format!(
                "/_matrix/client/v3/rooms/{}/members?at={}",
                enc(&room),
                enc(context["start"].as_str().unwrap())
            ),
        )
        .await;
        assert_eq!(
            members["chunk"][0]["state_key"],
            alice.user_id.as_str(),
            "{kind:?} {members}"
        );

        // Near misses of a topological token are refused, never read as another place.
        for bad in ["t1_-0", "t1", "t-1_1", "t01_1", "t1_2_3", "t1_+2"] {
            let (status, body) = server
                .get(
                    &format!(
                        "/_matrix/client/v3/rooms/{}/messages?dir=b&from={}",
                        enc(&room),
                        enc(bad)
                    ),
                    &alice.access_token,
                )
                .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{kind:?} {bad}: {body}");
            assert_eq!(body["errcode"], "M_INVALID_PARAM", "{kind:?} {bad}");
        }
    }
}

#[tokio::test]
async fn state_changed_by_resolution_shows_in_incremental_sync() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let room = server
            .create_room(&alice, json!({"preset": "public_chat"}))
            .await;
        let first_topic = put_state(
            &server,
            &alice,
            &room,
            "m.room.topic",
            "",
            json!({"topic": "first"}),
        )
        .await;
        put_state(
            &server,
            &alice,
            &room,
            "m.room.topic",
            "",
            json!({"topic": "second"}),
        )
        .await;
        join(&server, &bob, &room).await;
        leave(&server, &bob, &room).await;
        join(&server, &bob, &room).await;
        let anchor = send(&server, &alice, &room, "anchor").await;
        let since_bob = sync(&server, &bob, "").await["next_batch"]
            .as_str()
            .unwrap()
            .to_owned();
        let since_alice = sync(&server, &alice, "").await["next_batch"]
            .as_str()
            .unwrap()
            .to_owned();
        let store = server.store();
        let room_nid = store.room(&room).await.unwrap().unwrap().room_nid;
        let depth = store.event(&anchor).await.unwrap().unwrap().depth;

        // A fork's resolution puts the first topic back, with no topic event in the timeline.
        inject(
            &server,
            &room,
            &anchor,
            Injected {
                id: &event_id("ForkTopic"),
                body: "fork",
                depth: depth + 1,
                ts: 1,
                current_state: CurrentStateChange::Resolved {
                    expected: current_group(store, room_nid).await,
                    changes: vec![StateChange {
                        event_type: "m.room.topic".to_owned(),
                        state_key: String::new(),
                        value: StateValue::Event(nid(store, &first_topic).await),
                        membership: None,
                    }],
                },
                ..Default::default()
            },
        )
        .await;
        let topic = ok(
            &server,
            &bob,
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.topic/",
                enc(&room)
            ),
        )
        .await;
        assert_eq!(topic["topic"], "first", "{kind:?}");
        let body = sync(&server, &bob, &format!("since={since_bob}")).await;
        let joined = &body["rooms"]["join"][&room];
        assert_eq!(bodies(&joined["timeline"]["events"]), ["fork"], "{kind:?}");
        assert_eq!(
            ids(&joined["state"]["events"]),
            std::slice::from_ref(&first_topic),
            "{kind:?} {joined}"
        );
        let body = sync(
            &server,
            &bob,
            &format!("since={since_bob}&use_state_after=true"),
        )
        .await;
        let joined = &body["rooms"]["join"][&room];
        assert_eq!(
            ids(&joined["state_after"]["events"]),
            std::slice::from_ref(&first_topic),
            "{kind:?} {joined}"
        );
        let since_bob = body["next_batch"].as_str().unwrap().to_owned();

        // Another resolution restores bob's leave: the room moves to his `leave` section, with
        // the leave as its state, and alice sees it as a change of state.
        let bob_leave = {
            let state = ok(
                &server,
                &alice,
                &format!(
                    "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100",
                    enc(&room)
                ),
            )
            .await;
            state["chunk"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| {
                    e["type"] == "m.room.member"
                        && e["state_key"] == bob.user_id.as_str()
                        && e["content"]["membership"] == "leave"
                })
                .and_then(|e| e["event_id"].as_str())
                .unwrap()
                .to_owned()
        };
        inject(
            &server,
            &room,
            &anchor,
            Injected {
                id: &event_id("ForkLeave"),
                body: "fork 2",
                depth: depth + 2,
                ts: 2,
                current_state: CurrentStateChange::Resolved {
                    expected: current_group(store, room_nid).await,
                    changes: vec![StateChange {
                        event_type: "m.room.member".to_owned(),
                        state_key: bob.user_id.clone(),
                        value: StateValue::Event(nid(store, &bob_leave).await),
                        membership: Some("leave".to_owned()),
                    }],
                },
                ..Default::default()
            },
        )
        .await;
        let body = sync(&server, &bob, &format!("since={since_bob}")).await;
        assert!(body["rooms"]["join"][&room].is_null(), "{kind:?} {body}");
        let left = &body["rooms"]["leave"][&room];
        assert_eq!(
            ids(&left["state"]["events"]),
            std::slice::from_ref(&bob_leave),
            "{kind:?} {left}"
        );
        let body = sync(&server, &alice, &format!("since={since_alice}")).await;
        let state = ids(&body["rooms"]["join"][&room]["state"]["events"]);
        assert_eq!(state, [first_topic.clone(), bob_leave.clone()], "{kind:?}");
        // Lazy loading keeps it too: bob sends nothing, but this is his membership's change.
        let lazy = enc(&json!({"room": {"state": {"lazy_load_members": true}}}).to_string());
        let body = sync(
            &server,
            &alice,
            &format!("since={since_alice}&filter={lazy}"),
        )
        .await;
        let state = ids(&body["rooms"]["join"][&room]["state"]["events"]);
        assert_eq!(state, [first_topic.clone(), bob_leave], "{kind:?}");
    }
}
