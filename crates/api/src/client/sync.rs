//! `GET /sync`: the request's filter turned into the service's [`SyncFilter`], the service's
//! answer turned into ruma's response types, and those into JSON with every timeline's
//! `limited` flag written out.

use std::{collections::BTreeMap, time::Duration};

use axum::Router;
use axum::response::Response;
use myelin_service::{
    Error as ServiceError,
    rooms::EventFilter,
    sync::{SyncFilter, SyncRequest},
};
use ruma::api::OutgoingResponseExt;
use ruma::api::client::{
    filter::{FilterDefinition, LazyLoadOptions},
    sync::sync_events::{self, v3},
};
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use crate::{AppState, MatrixError, Ruma, ruma_bridge::RumaRouterExt};

pub(crate) fn routes() -> Router<AppState> {
    Router::new().ruma_raw::<v3::Request, _, _, _>(sync)
}

/// The event fields of a ruma `RoomEventFilter`.
pub(crate) fn event_filter(filter: &ruma::api::client::filter::RoomEventFilter) -> EventFilter {
    EventFilter {
        types: filter.types.clone(),
        not_types: filter.not_types.clone(),
        senders: filter
            .senders
            .as_ref()
            .map(|s| s.iter().map(ToString::to_string).collect()),
        not_senders: filter.not_senders.iter().map(ToString::to_string).collect(),
        contains_url: filter
            .url_filter
            .map(|f| matches!(f, ruma::api::client::filter::UrlFilter::EventsWithUrl)),
    }
}

fn sync_filter(definition: &FilterDefinition) -> SyncFilter {
    let room = &definition.room;
    let timeline = &room.timeline;
    SyncFilter {
        timeline_limit: timeline
            .limit
            .map_or(SyncFilter::default().timeline_limit, |l| {
                usize::try_from(u64::from(l)).unwrap_or(usize::MAX)
            }),
        timeline: event_filter(timeline),
        rooms: room
            .rooms
            .as_ref()
            .map(|r| r.iter().map(ToString::to_string).collect()),
        not_rooms: room.not_rooms.iter().map(ToString::to_string).collect(),
        include_leave: room.include_leave,
        lazy_load_members: !matches!(room.state.lazy_load_options, LazyLoadOptions::Disabled),
        unread_thread_notifications: timeline.unread_thread_notifications,
    }
}

/// One section of the service's answer as ruma's type, taken out of the answer (not copied: a
/// sync's rooms are tens of kilobytes of events).
fn section<T: DeserializeOwned + Default>(value: &mut serde_json::Value) -> Result<T, MatrixError> {
    if value.is_null() {
        return Ok(T::default());
    }
    serde_json::from_value(value.take())
        .map_err(|e| MatrixError::internal(format!("building the sync response: {e}")))
}

async fn sync(state: AppState, request: Ruma<v3::Request>) -> Result<Response, MatrixError> {
    let response = sync_response(state, request)
        .await?
        .try_into_http_response::<bytes::BytesMut>()
        .map_err(|e| MatrixError::internal(format!("serializing the sync response: {e}")))?;
    let (mut parts, body) = response.into_parts();
    let body = write_out_defaults(&body)
        .map_err(|e| MatrixError::internal(format!("re-reading the sync response: {e}")))?;
    parts.headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(Response::from_parts(parts, axum::body::Body::from(body)))
}

/// A JSON object whose members are kept as their text: re-reading the response this way
/// parses only the levels it changes, never the events (a sync response is tens of kilobytes
/// of them, and a tree of maps for each was a measurable part of an initial sync's time).
type RawObject = BTreeMap<String, Box<RawValue>>;

/// Writes out what ruma leaves out when empty and clients and Complement read as missing:
/// `limited: false` on every joined and left room's timeline (the spec makes it optional,
/// absent meaning false), a joined room's `ephemeral` and `account_data` and a left room's
/// `state` and `account_data` with no events. Synapse always sends them, and matrix-nio fails
/// a sync without a left room's `state.events`. Takes and gives the response's JSON text.
fn write_out_defaults(body: &[u8]) -> Result<Vec<u8>, serde_json::Error> {
    let raw = |text: &str| RawValue::from_string(text.to_owned());
    let mut top: RawObject = serde_json::from_slice(body)?;
    if let Some(rooms) = top.get("rooms") {
        let mut rooms: RawObject = serde_json::from_str(rooms.get())?;
        for section in ["join", "leave"] {
            let Some(by_room) = rooms.get(section) else {
                continue;
            };
            let mut by_room: BTreeMap<String, RawObject> = serde_json::from_str(by_room.get())?;
            // Written out even when empty: clients (matrix-nio) require these sections'
            // `events` in joined rooms, and a left room's `state` and `account_data`.
            let keys: &[&str] = if section == "join" {
                &["ephemeral", "account_data"]
            } else {
                &["state", "account_data"]
            };
            for room in by_room.values_mut() {
                if let Some(timeline) = room.get("timeline") {
                    let mut timeline: RawObject = serde_json::from_str(timeline.get())?;
                    if !timeline.contains_key("limited") {
                        timeline.insert("limited".to_owned(), raw("false")?);
                    }
                    room.insert(
                        "timeline".to_owned(),
                        serde_json::value::to_raw_value(&timeline)?,
                    );
                }
                for key in keys {
                    if !room.contains_key(*key) {
                        room.insert((*key).to_owned(), raw(r#"{"events":[]}"#)?);
                    }
                }
            }
            rooms.insert(
                section.to_owned(),
                serde_json::value::to_raw_value(&by_room)?,
            );
        }
        top.insert("rooms".to_owned(), serde_json::value::to_raw_value(&rooms)?);
    }
    serde_json::to_vec(&top)
}

async fn sync_response(
    state: AppState,
    request: Ruma<v3::Request>,
) -> Result<v3::Response, MatrixError> {
    let user = request.identity;
    let body = request.body;
    let filter = match &body.filter {
        None => SyncFilter::default(),
        Some(sync_events::v3::Filter::FilterDefinition(definition)) => sync_filter(definition),
        Some(sync_events::v3::Filter::FilterId(id)) => {
            let definition = state
                .services
                .user_data
                .filter(&user, &user.user_id, id)
                .await
                .map_err(|err| match err {
                    ServiceError::NotFound(_) => {
                        ServiceError::InvalidParam(format!("Unknown filter {id}"))
                    }
                    other => other,
                })?;
            sync_filter(&definition)
        }
        Some(_) => return Err(ServiceError::InvalidParam("Unsupported filter".to_owned()).into()),
    };
    let mut answer = state
        .services
        .sync(
            &user,
            &SyncRequest {
                since: body.since,
                set_presence: Some(body.set_presence.to_string()),
                full_state: body.full_state,
                timeout: body.timeout.unwrap_or(Duration::ZERO),
                use_state_after: body.use_state_after,
                filter,
            },
        )
        .await?;
    let mut response =
        v3::Response::new(answer["next_batch"].as_str().unwrap_or_default().to_owned());
    response.rooms = section(&mut answer["rooms"])?;
    response.account_data = section(&mut answer["account_data"])?;
    response.presence = section(&mut answer["presence"])?;
    response.to_device = section(&mut answer["to_device"])?;
    response.device_lists = section(&mut answer["device_lists"])?;
    response.device_one_time_keys_count = section(&mut answer["device_one_time_keys_count"])?;
    response.device_unused_fallback_key_types =
        section(&mut answer["device_unused_fallback_key_types"])?;
    Ok(response)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::write_out_defaults;

    #[test]
    fn empty_sections_of_joined_and_left_rooms_are_written_out() {
        let body = json!({"rooms": {
            "join": {"!a:hs": {"timeline": {"events": [{"type": "m.room.message", "content": {"body": "x"}}]}}},
            "leave": {"!b:hs": {"timeline": {"events": [], "limited": true}}},
            "invite": {"!c:hs": {"invite_state": {"events": []}}},
        }, "next_batch": "s1"});
        let out = write_out_defaults(&serde_json::to_vec(&body).unwrap()).unwrap();
        let out: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            out,
            json!({"rooms": {
                "join": {"!a:hs": {
                    "timeline": {"events": [{"type": "m.room.message", "content": {"body": "x"}}], "limited": false},
                    "ephemeral": {"events": []},
                    "account_data": {"events": []},
                }},
                "leave": {"!b:hs": {
                    "timeline": {"events": [], "limited": true},
                    "state": {"events": []},
                    "account_data": {"events": []},
                }},
                "invite": {"!c:hs": {"invite_state": {"events": []}}},
            }, "next_batch": "s1"})
        );
    }

    #[test]
    fn a_response_without_rooms_is_left_as_it_is() {
        let body = json!({"next_batch": "s2", "presence": {"events": []}});
        let out = write_out_defaults(&serde_json::to_vec(&body).unwrap()).unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&out).unwrap(), body);
    }
}
