//! The search benchmark of issue 11, ignored by default (it builds a 100,000-message room on
//! each database):
//!
//! ```text
//! MYELIN_REQUIRE_POSTGRES=1 scripts/test --release -p myelin-store --test search_bench -- --ignored --nocapture
//! ```
//!
//! One room of 100,000 messages, a word found in 1,000 of them; the first page of a search for
//! it (what `/search` asks the store: the count, a batch of matches, their events) is timed 20
//! times per order, and the medians must be under 50 ms (`recent`) and 200 ms (`rank`).

use std::time::{Duration, Instant};

use myelin_store::{
    NewEvent, SearchOrder, SearchQuery, Store, StoreOptions,
    test_support::{TestDatabase, persist_batch, test_backends},
};

const MESSAGES: usize = 100_000;
/// Every this many messages holds the searched word.
const NEEDLE_EVERY: usize = 100;
const BATCH: usize = 1_000;
const RUNS: usize = 20;

/// Words of ordinary messages: pseudo-words from a small generator, never the needle.
fn filler_word(seed: u64) -> String {
    const SYLLABLES: [&str; 16] = [
        "ka", "lo", "mi", "tu", "re", "sa", "vo", "ne", "pi", "da", "go", "ru", "te", "zo", "ba",
        "fi",
    ];
    let mut word = String::new();
    let mut n = seed % 4096;
    for _ in 0..3 {
        word.push_str(SYLLABLES[(n % 16) as usize]);
        n /= 16;
    }
    word
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

#[tokio::test]
#[ignore = "builds a 100,000-message room; run explicitly (see the module docs)"]
async fn search_first_page_medians_on_a_100k_message_room() {
    for kind in test_backends() {
        let db = TestDatabase::create(kind).await;
        let store = Store::open(&db.url, &StoreOptions::default())
            .await
            .unwrap();
        let room = store
            .create_room("!bench:test", "12", "@a:test", false, 0)
            .await
            .unwrap();
        let create = persist_batch(
            &store,
            &[NewEvent {
                room_nid: room,
                event_id: "$create",
                event_type: "m.room.create",
                state_key: Some(""),
                sender: "@a:test",
                depth: 1,
                origin_server_ts: 1,
                json: r#"{"type":"m.room.create","content":{}}"#,
                prev_event_ids: &[],
                auth_event_ids: &[],
                state_group_before: None,
                membership: None,
                txn: None,
                redaction: None,
                push_actions: &[],
                relation: None,
                search: None,
                now: 1,
                ..Default::default()
            }],
        )
        .await
        .unwrap()[0];

        let started = Instant::now();
        let mut seed: u64 = 0x9e37_79b9;
        for batch_start in (0..MESSAGES).step_by(BATCH) {
            let mut texts = Vec::with_capacity(BATCH);
            for i in batch_start..batch_start + BATCH {
                let mut words: Vec<String> = (0..8)
                    .map(|_| {
                        seed = seed
                            .wrapping_mul(6_364_136_223_846_793_005)
                            .wrapping_add(1_442_695_040_888_963_407);
                        filler_word(seed >> 33)
                    })
                    .collect();
                if i % NEEDLE_EVERY == 0 {
                    words[(i / NEEDLE_EVERY) % 8] = "needle".to_owned();
                }
                let body = words.join(" ");
                let id = format!("$m{i}");
                let json = serde_json::json!({"type": "m.room.message", "content": {"msgtype": "m.text", "body": body}})
                    .to_string();
                texts.push((id, body, json));
            }
            let events: Vec<NewEvent<'_>> = texts
                .iter()
                .enumerate()
                .map(|(n, (id, body, json))| NewEvent {
                    room_nid: room,
                    event_id: id,
                    event_type: "m.room.message",
                    state_key: None,
                    sender: "@a:test",
                    depth: (batch_start + n + 2) as i64,
                    origin_server_ts: (batch_start + n + 2) as i64,
                    json,
                    prev_event_ids: &[],
                    auth_event_ids: &[],
                    state_group_before: create.state_group,
                    membership: None,
                    txn: None,
                    redaction: None,
                    push_actions: &[],
                    relation: None,
                    search: Some(("content.body", body)),
                    now: 1,
                    ..Default::default()
                })
                .collect();
            persist_batch(&store, &events).await.unwrap();
        }
        let built = started.elapsed();

        let words = vec!["needle".to_owned()];
        let rooms = [room];
        let keys = ["content.body", "content.name", "content.topic"];
        let mut report = Vec::new();
        for order in [SearchOrder::Recent, SearchOrder::Rank] {
            let query = SearchQuery {
                room_nids: &rooms,
                words: &words,
                keys: &keys,
                order,
                before: None,
                offset: 0,
                // The service reads twice a page (10) per batch.
                limit: 20,
            };
            // One warm-up run, then the timed ones.
            let mut samples = Vec::with_capacity(RUNS);
            for run in 0..=RUNS {
                let t = Instant::now();
                let count = store.search_count(&query).await.unwrap();
                let hits = store.search_events(&query).await.unwrap();
                let nids: Vec<i64> = hits.iter().map(|h| h.event_nid).collect();
                let rows = store.events_by_nids(&nids).await.unwrap();
                let elapsed = t.elapsed();
                assert_eq!(count, (MESSAGES / NEEDLE_EVERY) as i64);
                assert_eq!(rows.len(), 20);
                if order == SearchOrder::Recent {
                    // Newest first: the last needle message, then the one before it.
                    let mut positions: Vec<i64> = hits.iter().map(|h| h.stream_ordering).collect();
                    assert!(positions.windows(2).all(|w| w[0] > w[1]));
                    positions.dedup();
                    assert_eq!(positions.len(), 20);
                }
                if run > 0 {
                    samples.push(elapsed);
                }
            }
            let median = median(samples);
            report.push((order, median));
        }
        println!(
            "search benchmark ({kind:?}): {MESSAGES} messages built in {:.1} s; first page of a \
             word in {} of them, median of {RUNS}: recent {:.2} ms, rank {:.2} ms",
            built.as_secs_f64(),
            MESSAGES / NEEDLE_EVERY,
            report[0].1.as_secs_f64() * 1e3,
            report[1].1.as_secs_f64() * 1e3,
        );
        assert!(
            report[0].1 < Duration::from_millis(50),
            "{kind:?} recent: {:?}",
            report[0].1
        );
        assert!(
            report[1].1 < Duration::from_millis(200),
            "{kind:?} rank: {:?}",
            report[1].1
        );
    }
}
