//! What a simulated peer answers `/get_missing_events` with, from the events it holds (as
//! JSON): the one walk the test peers and the benchmark's peer share.

use std::collections::{HashMap, HashSet, VecDeque};

use serde_json::Value;

/// The `prev_events` ids of an event (as JSON).
pub fn prev_event_ids(event: &Value) -> Vec<String> {
    event["prev_events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// The events of `events` before `latest` (through `prev_events`, breadth first), not going
/// past `earliest`, at most `limit` (the nearest to `latest`), oldest first.
pub fn walk_back(
    events: &HashMap<String, Value>,
    latest: &[String],
    earliest: &[String],
    limit: usize,
) -> Vec<Value> {
    let earliest: HashSet<&String> = earliest.iter().collect();
    let mut seen: HashSet<String> = latest.iter().cloned().collect();
    let mut frontier: VecDeque<String> = latest
        .iter()
        .filter_map(|id| events.get(id))
        .flat_map(prev_event_ids)
        .collect();
    let mut found: Vec<Value> = Vec::new();
    while let Some(id) = frontier.pop_front() {
        if found.len() >= limit {
            break;
        }
        if earliest.contains(&id) || !seen.insert(id.clone()) {
            continue;
        }
        let Some(event) = events.get(&id) else {
            continue;
        };
        frontier.extend(prev_event_ids(event));
        found.push(event.clone());
    }
    found.sort_by_key(|e| e["depth"].as_i64());
    found
}
