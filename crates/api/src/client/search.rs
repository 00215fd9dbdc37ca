//! `POST /search` (room events). The request is parsed by ruma (a malformed body or filter is
//! `M_BAD_JSON`); the answer is written as JSON rather than through ruma's type, which leaves out
//! an empty `results` list that clients and Complement read on every page.

use axum::{Json, Router, extract::State, routing::post};
use myelin_service::rooms::SearchRequest;
use ruma::api::{Metadata, client::search::search_events, path_builder::PathBuilder};
use serde_json::{Value, json};

use super::sync::event_filter;
use crate::{AppState, MatrixError, Ruma};

pub(crate) fn routes() -> Router<AppState> {
    let mut router = Router::new();
    for path in search_events::v3::Request::PATH_BUILDER.all_paths() {
        router = router.route(path, post(search));
    }
    router
}

fn to_usize(value: ruma::UInt) -> usize {
    usize::try_from(u64::from(value)).unwrap_or(usize::MAX)
}

async fn search(
    State(state): State<AppState>,
    request: Ruma<search_events::v3::Request>,
) -> Result<Json<Value>, MatrixError> {
    let body = request.body;
    let Some(criteria) = body.search_categories.room_events else {
        // Room events are the only category; nothing asked, nothing found.
        return Ok(Json(json!({"search_categories": {}})));
    };
    let filter = &criteria.filter;
    let search = SearchRequest {
        search_term: &criteria.search_term,
        keys: criteria
            .keys
            .as_ref()
            .map(|keys| keys.iter().map(|k| k.as_str().to_owned()).collect()),
        order_by: criteria.order_by.as_ref().map(|o| o.as_str()),
        rooms: filter
            .rooms
            .as_ref()
            .map(|rooms| rooms.iter().map(ToString::to_string).collect()),
        not_rooms: filter.not_rooms.iter().map(ToString::to_string).collect(),
        filter: event_filter(filter),
        limit: filter.limit.map(to_usize),
        context: Some((
            to_usize(criteria.event_context.before_limit),
            to_usize(criteria.event_context.after_limit),
            criteria.event_context.include_profile,
        ))
        // No context at all when both sides are zero and no profiles are asked for.
        .filter(|(before, after, profile)| *before > 0 || *after > 0 || *profile),
        include_state: criteria.include_state.unwrap_or(false),
        group_by: criteria
            .groupings
            .group_by
            .iter()
            .filter_map(|g| g.key.as_ref().map(|k| k.as_str().to_owned()))
            .collect(),
        next_batch: body.next_batch.as_deref(),
        device: Some(request.identity.device_id.as_str()),
    };
    let results = state
        .services
        .rooms
        .search(&request.identity.user_id, &search)
        .await?;
    let mut room_events = json!({
        "count": results.count,
        "results": results.results,
        "highlights": results.highlights,
    });
    if let Some(next_batch) = results.next_batch {
        room_events["next_batch"] = Value::String(next_batch);
    }
    if !results.groups.is_empty() {
        room_events["groups"] = Value::Object(results.groups);
    }
    if !results.state.is_empty() {
        room_events["state"] = Value::Object(results.state);
    }
    Ok(Json(
        json!({"search_categories": {"room_events": room_events}}),
    ))
}
