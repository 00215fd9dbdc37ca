//! The search index on both databases: what `persist_events` writes is found word by word
//! (every word required, stemmed, nothing in a word read as query syntax), narrowed by rooms and
//! keys, ordered by recency or rank; a redaction removes the event; and migration 0016 indexes
//! the events stored before it.

use myelin_store::{
    CurrentStateChange, DatabaseKind, NewEvent, SearchOrder, SearchQuery, Store, StoreOptions,
    test_support::{TestDatabase, test_backends},
};
use sqlx::Executor;

const KEYS: [&str; 3] = ["content.body", "content.name", "content.topic"];

/// Persists an event; `search` is what the service would index (`None`: as before 0016).
#[allow(clippy::too_many_arguments)] // one field per column the test varies
async fn put(
    store: &Store,
    room: i64,
    id: &str,
    kind: &str,
    state_key: Option<&str>,
    content: serde_json::Value,
    before: Option<i64>,
    search: Option<(&str, &str)>,
) -> myelin_store::Persisted {
    let json = serde_json::json!({"type": kind, "content": content}).to_string();
    store
        .persist_event(&NewEvent {
            room_nid: room,
            event_id: id,
            event_type: kind,
            state_key,
            sender: "@a:test",
            depth: 1,
            origin_server_ts: 1,
            json: &json,
            prev_event_ids: &[],
            auth_event_ids: &[],
            state_group_before: before,
            membership: None,
            txn: None,
            redaction: None,
            push_actions: &[],
            relation: None,
            search,
            now: 1,
            // The index, not the room's state, is under test: events do not chain.
            current_state: if before.is_none() {
                CurrentStateChange::Extend
            } else {
                CurrentStateChange::Unchanged
            },
            ..Default::default()
        })
        .await
        .unwrap()
}

/// Persists redaction `id` of `target`, which writes `target`'s redacted form in the same
/// transaction, as the service does.
async fn redact(store: &Store, room: i64, target: &str, id: &str, before: Option<i64>) {
    let json = serde_json::json!({"type": "m.room.redaction", "redacts": target, "content": {}});
    let redacted = r#"{"type":"m.room.message","content":{}}"#;
    store
        .persist_event(&NewEvent {
            room_nid: room,
            event_id: id,
            event_type: "m.room.redaction",
            state_key: None,
            sender: "@a:test",
            depth: 1,
            origin_server_ts: 1,
            json: &json.to_string(),
            prev_event_ids: &[],
            auth_event_ids: &[],
            state_group_before: before,
            membership: None,
            txn: None,
            redaction: Some((target, redacted)),
            push_actions: &[],
            relation: None,
            search: None,
            now: 1,
            current_state: CurrentStateChange::Unchanged,
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn find(
    store: &Store,
    rooms: &[i64],
    term: &[&str],
    keys: &[&str],
    order: SearchOrder,
) -> Vec<i64> {
    let words: Vec<String> = term.iter().map(|w| w.to_string()).collect();
    store
        .search_events(&SearchQuery {
            room_nids: rooms,
            words: &words,
            keys,
            order,
            before: None,
            offset: 0,
            limit: 50,
        })
        .await
        .unwrap()
        .into_iter()
        .map(|hit| hit.event_nid)
        .collect()
}

#[tokio::test]
async fn the_index_finds_words_and_forgets_redacted_events() {
    for kind in test_backends() {
        let db = TestDatabase::create(kind).await;
        let store = Store::open(&db.url, &StoreOptions::default())
            .await
            .unwrap();
        let room = store
            .create_room("!r:test", "12", "@a:test", false, 0)
            .await
            .unwrap();
        let other = store
            .create_room("!o:test", "12", "@a:test", false, 0)
            .await
            .unwrap();
        let create = put(
            &store,
            room,
            "$c",
            "m.room.create",
            Some(""),
            serde_json::json!({}),
            None,
            None,
        )
        .await;
        let g = create.state_group;
        let msg = |body: &'static str| {
            (
                serde_json::json!({"body": body}),
                Some(("content.body", body)),
            )
        };
        let (c, s) = msg("The cats were running");
        let cats = put(&store, room, "$1", "m.room.message", None, c, g, s).await;
        let (c, s) = msg("a cat runs NEAR \"quotes\"");
        let cat = put(&store, room, "$2", "m.room.message", None, c, g, s).await;
        let (c, s) = msg("cat cat cat");
        let triple = put(&store, room, "$3", "m.room.message", None, c, g, s).await;
        let named = put(
            &store,
            room,
            "$n",
            "m.room.name",
            Some(""),
            serde_json::json!({"name": "Cat room"}),
            g,
            Some(("content.name", "Cat room")),
        )
        .await;
        let other_create = put(
            &store,
            other,
            "$oc",
            "m.room.create",
            Some(""),
            serde_json::json!({}),
            None,
            None,
        )
        .await;
        let (c, s) = msg("cat elsewhere");
        let elsewhere = put(
            &store,
            other,
            "$o1",
            "m.room.message",
            None,
            c,
            other_create.state_group,
            s,
        )
        .await;

        // Stemmed: "cat" finds "cats", newest first; only the rooms asked.
        let recent = find(&store, &[room], &["cat"], &KEYS, SearchOrder::Recent).await;
        assert_eq!(
            recent,
            vec![
                named.event_nid,
                triple.event_nid,
                cat.event_nid,
                cats.event_nid
            ],
            "{kind:?}"
        );
        assert_eq!(
            find(&store, &[room, other], &["cat"], &KEYS, SearchOrder::Recent).await[0],
            elsewhere.event_nid
        );
        // Every word must match; operators and quotes are plain words.
        assert_eq!(
            find(
                &store,
                &[room],
                &["cat", "running"],
                &KEYS,
                SearchOrder::Recent
            )
            .await,
            vec![cat.event_nid, cats.event_nid]
        );
        assert_eq!(
            find(
                &store,
                &[room],
                &["near", "\"quotes\""],
                &KEYS,
                SearchOrder::Recent
            )
            .await,
            vec![cat.event_nid]
        );
        assert_eq!(
            find(&store, &[room], &["OR"], &KEYS, SearchOrder::Recent).await,
            Vec::<i64>::new()
        );
        // Keys narrow the fields.
        assert_eq!(
            find(
                &store,
                &[room],
                &["cat"],
                &["content.name"],
                SearchOrder::Recent
            )
            .await,
            vec![named.event_nid]
        );
        // Rank: the event saying it three times first.
        assert_eq!(
            find(
                &store,
                &[room],
                &["cat"],
                &["content.body"],
                SearchOrder::Rank
            )
            .await[0],
            triple.event_nid
        );
        let words = vec!["cat".to_owned()];
        let count = store
            .search_count(&SearchQuery {
                room_nids: &[room],
                words: &words,
                keys: &KEYS,
                order: SearchOrder::Rank,
                before: None,
                offset: 0,
                limit: 0,
            })
            .await
            .unwrap();
        assert_eq!(count, 4);

        // A redaction takes the event out of the index (the rank order of the two left is the
        // backend's business: only which events are found is asserted).
        redact(&store, room, "$3", "$redaction", g).await;
        let mut found = find(
            &store,
            &[room],
            &["cat"],
            &["content.body"],
            SearchOrder::Rank,
        )
        .await;
        found.sort_unstable();
        assert_eq!(found, vec![cats.event_nid, cat.event_nid], "{kind:?}");
    }
}

#[tokio::test]
async fn migration_0016_indexes_the_events_stored_before_it() {
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
            "$c",
            "m.room.create",
            Some(""),
            serde_json::json!({}),
            None,
            None,
        )
        .await;
        let g = create.state_group;
        // Stored without index rows, as before the migration.
        let body = put(
            &store,
            room,
            "$1",
            "m.room.message",
            None,
            serde_json::json!({"body": "hello world"}),
            g,
            None,
        )
        .await;
        let topic = put(
            &store,
            room,
            "$t",
            "m.room.topic",
            Some(""),
            serde_json::json!({"topic": "hello topic"}),
            g,
            None,
        )
        .await;
        put(
            &store,
            room,
            "$2",
            "m.room.message",
            None,
            serde_json::json!({"body": "hello gone"}),
            g,
            None,
        )
        .await;
        redact(&store, room, "$2", "$r", g).await;
        // A state event's body and a non-string body are not searchable text.
        put(
            &store,
            room,
            "$s",
            "m.custom",
            Some("k"),
            serde_json::json!({"body": "hello state"}),
            g,
            None,
        )
        .await;
        put(
            &store,
            room,
            "$3",
            "m.room.message",
            None,
            serde_json::json!({"body": {"hello": 1}}),
            g,
            None,
        )
        .await;
        drop(store);

        // Forget migration 0016, then open again: it runs and backfills.
        let forget = [
            "DROP TABLE event_search",
            "DELETE FROM _sqlx_migrations WHERE version = 16",
        ];
        match kind {
            DatabaseKind::Sqlite => {
                let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
                for sql in forget {
                    pool.execute(sql).await.unwrap();
                }
                pool.close().await;
            }
            DatabaseKind::Postgres => {
                let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
                for sql in forget {
                    pool.execute(sql).await.unwrap();
                }
                pool.close().await;
            }
        }
        let store = Store::open(&db.url, &StoreOptions::default())
            .await
            .unwrap();
        assert_eq!(
            find(&store, &[room], &["hello"], &KEYS, SearchOrder::Recent).await,
            vec![topic.event_nid, body.event_nid],
            "{kind:?}"
        );
    }
}
