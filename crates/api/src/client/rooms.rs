//! Rooms over the client API: `createRoom`, room upgrades, membership (join, leave, invite, kick,
//! ban, unban, knock, forget, joined rooms), sending messages and state, and reading state,
//! events, members and timeline pages, and the event closest to a time. Each handler translates
//! and calls `myelin_service::rooms`.

use axum::{Router, response::IntoResponse};
use myelin_service::{
    Error as ServiceError,
    rate_limit::RateKey,
    rooms::{CreateRoom, Direction, MembersFilter, PageRequest, Preset},
};
use ruma::{
    OwnedRoomId, RoomAliasId, RoomId, RoomOrAliasId,
    api::client::{
        context::get_context,
        knock::knock_room,
        membership::{
            ban_user, forget_room, invite_user, join_room_by_id, join_room_by_id_or_alias,
            joined_members, joined_rooms, kick_user, leave_room, unban_user,
        },
        message::{get_message_events, send_message_event},
        redact::redact_event,
        room::{Visibility, create_room, get_event_by_timestamp, get_room_event, upgrade_room},
        state::{get_state_event_for_key, get_state_events, send_state_event},
    },
    serde::Raw,
};
use serde_json::{Value, json};

use crate::{AppState, MatrixError, Ruma, ruma_bridge::RumaRouterExt};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .ruma(create)
        .ruma(upgrade)
        .ruma(join_by_id)
        .ruma(join_by_id_or_alias)
        .ruma(leave)
        .ruma(invite)
        .ruma(kick)
        .ruma(ban)
        .ruma(unban)
        .ruma(knock)
        .ruma(forget)
        .ruma(rooms_joined)
        .ruma(send_message)
        .ruma(send_state)
        .ruma(get_state)
        .ruma(get_state_for_key)
        .ruma(get_event)
        .ruma(members)
        .ruma_raw::<joined_members::v3::Request, _, _, _>(members_joined)
        .ruma(messages)
        .ruma(redact)
        .ruma(context)
        .ruma(timestamp_to_event)
        .route_layer(axum::middleware::from_fn(default_messages_dir))
}

/// `GET /rooms/{roomId}/messages` without `dir`: the spec requires it, but clients written
/// against Synapse leave it out and Synapse reads that as `b`; so does Myelin (refusing it would
/// also answer 400 before the room's access check has had its say).
async fn default_messages_dir(
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let uri = request.uri();
    let needs_dir = request.method() == http::Method::GET
        && uri.path().ends_with("/messages")
        && !uri
            .query()
            .unwrap_or_default()
            .split('&')
            .any(|pair| pair == "dir" || pair.starts_with("dir="));
    if needs_dir {
        let query = match uri.query() {
            Some(query) if !query.is_empty() => format!("{query}&dir=b"),
            _ => "dir=b".to_owned(),
        };
        if let Ok(with_dir) = format!("{}?{query}", uri.path()).parse::<http::Uri>() {
            let mut parts = uri.clone().into_parts();
            parts.path_and_query = with_dir.into_parts().path_and_query;
            if let Ok(uri) = http::Uri::from_parts(parts) {
                *request.uri_mut() = uri;
            }
        }
    }
    next.run(request).await
}

pub(super) fn raw<T>(value: Value) -> Result<Raw<T>, MatrixError> {
    serde_json::value::to_raw_value(&value)
        .map(Raw::from_json)
        .map_err(|e| MatrixError::internal(e.to_string()))
}

fn parse_object(
    raw: &impl serde::Serialize,
    what: &str,
) -> Result<serde_json::Map<String, Value>, MatrixError> {
    match serde_json::to_value(raw) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(ServiceError::BadJson(format!("{what} must be a JSON object")).into()),
    }
}

async fn create(
    state: AppState,
    request: Ruma<create_room::v3::Request>,
) -> Result<create_room::v3::Response, MatrixError> {
    // Not marked rate-limited in the spec, but each room is a run of writes and a row in
    // every member's sync: limited like sends (Synapse limits it too).
    state
        .services
        .rate_limiter
        .check(RateKey::User(request.identity.user_id.to_string()))?;
    let body = request.body;
    if !body.invite_3pid.is_empty() {
        return Err(
            ServiceError::Forbidden("Third-party invites are not supported".to_owned()).into(),
        );
    }
    let alias = body
        .room_alias_name
        .as_deref()
        .map(|name| state.services.directory.local_alias(name))
        .transpose()?;
    let preset = body.preset.as_ref().map(|p| match p.as_str() {
        "public_chat" => Ok(Preset::PublicChat),
        "trusted_private_chat" => Ok(Preset::TrustedPrivateChat),
        "private_chat" => Ok(Preset::PrivateChat),
        other => Err(ServiceError::InvalidParam(format!(
            "Unknown preset {other}"
        ))),
    });
    let preset = preset.transpose()?;
    let mut initial_state = Vec::new();
    for event in &body.initial_state {
        let event = parse_object(event, "initial_state events")?;
        let event_type = event
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| ServiceError::BadJson("initial_state event without type".to_owned()))?;
        let state_key = event
            .get("state_key")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let content = event.get("content").cloned().unwrap_or_else(|| json!({}));
        initial_state.push((event_type.to_owned(), state_key.to_owned(), content));
    }
    let room_id = state
        .services
        .rooms
        .create_room(
            &request.identity.user_id,
            CreateRoom {
                room_version: body.room_version.map(|v| v.to_string()),
                preset,
                public: body.visibility == Visibility::Public,
                name: body.name,
                topic: body.topic,
                invite: body.invite,
                is_direct: body.is_direct,
                initial_state,
                creation_content: body
                    .creation_content
                    .as_ref()
                    .map(|c| parse_object(c, "creation_content"))
                    .transpose()?,
                power_level_content_override: body
                    .power_level_content_override
                    .as_ref()
                    .map(|c| parse_object(c, "power_level_content_override"))
                    .transpose()?,
                alias,
            },
        )
        .await?;
    Ok(create_room::v3::Response::new(room_id_of(&room_id)?))
}

async fn upgrade(
    state: AppState,
    request: Ruma<upgrade_room::v3::Request>,
) -> Result<upgrade_room::v3::Response, MatrixError> {
    // A new room and a run of writes in two rooms: limited like createRoom.
    state
        .services
        .rate_limiter
        .check(RateKey::User(request.identity.user_id.to_string()))?;
    let body = request.body;
    let replacement = state
        .services
        .rooms
        .upgrade_room(
            &request.identity.user_id,
            body.room_id.as_str(),
            body.new_version.as_str(),
            &body.additional_creators,
        )
        .await?;
    Ok(upgrade_room::v3::Response::new(room_id_of(&replacement)?))
}

fn room_id_of(room_id: &str) -> Result<OwnedRoomId, MatrixError> {
    RoomId::parse(room_id).map_err(|e| MatrixError::internal(format!("bad room id {room_id}: {e}")))
}

async fn join_by_id(
    state: AppState,
    request: Ruma<join_room_by_id::v3::Request>,
) -> Result<join_room_by_id::v3::Response, MatrixError> {
    let extra = extra_join_content(&request.raw_body)?;
    let body = request.body;
    let room_id = state
        .services
        .join_room(
            &request.identity.user_id,
            body.room_id.as_str(),
            &[],
            body.reason.as_deref(),
            extra,
        )
        .await?;
    Ok(join_room_by_id::v3::Response::new(room_id_of(&room_id)?))
}

async fn join_by_id_or_alias(
    state: AppState,
    request: Ruma<join_room_by_id_or_alias::v3::Request>,
) -> Result<join_room_by_id_or_alias::v3::Response, MatrixError> {
    let extra = extra_join_content(&request.raw_body)?;
    let body = request.body;
    let (room_id, mut via) = room_of(&state, &body.room_id_or_alias).await?;
    // The servers the client named first, then those the alias resolved to.
    via.splice(0..0, body.via);
    let joined = state
        .services
        .join_room(
            &request.identity.user_id,
            &room_id,
            &via,
            body.reason.as_deref(),
            extra,
        )
        .await?;
    Ok(join_room_by_id_or_alias::v3::Response::new(room_id_of(
        &joined,
    )?))
}

/// The keys of a `/join` body that are not the endpoint's own (`reason`, `third_party_signed`):
/// the client's extra member content. ruma has parsed the body already, so it is a JSON object
/// (or empty).
fn extra_join_content(raw: &[u8]) -> Result<serde_json::Map<String, Value>, MatrixError> {
    if raw.is_empty() {
        return Ok(serde_json::Map::new());
    }
    let mut content: serde_json::Map<String, Value> = serde_json::from_slice(raw)
        .map_err(|e| ServiceError::BadJson(format!("The body must be a JSON object: {e}")))?;
    content.remove("reason");
    content.remove("third_party_signed");
    Ok(content)
}

/// The room a `{roomIdOrAlias}` names, resolving aliases through the directory (this
/// server's, or the alias's server), with the servers an alias resolved to.
async fn room_of(
    state: &AppState,
    room_or_alias: &RoomOrAliasId,
) -> Result<(String, Vec<ruma::OwnedServerName>), MatrixError> {
    match <&RoomAliasId>::try_from(room_or_alias) {
        Ok(alias) => Ok(state.services.resolve_alias(alias).await?),
        Err(room_id) => Ok((room_id.to_string(), Vec::new())),
    }
}

async fn leave(
    state: AppState,
    request: Ruma<leave_room::v3::Request>,
) -> Result<leave_room::v3::Response, MatrixError> {
    let body = request.body;
    state
        .services
        .rooms
        .leave(
            &request.identity.user_id,
            body.room_id.as_str(),
            body.reason.as_deref(),
        )
        .await?;
    Ok(leave_room::v3::Response::new())
}

async fn invite(
    state: AppState,
    request: Ruma<invite_user::v3::Request>,
) -> Result<invite_user::v3::Response, MatrixError> {
    let body = request.body;
    let invite_user::v3::InvitationRecipient::UserId(recipient) = body.recipient else {
        return Err(
            ServiceError::Forbidden("Third-party invites are not supported".to_owned()).into(),
        );
    };
    state
        .services
        .rooms
        .invite(
            &request.identity.user_id,
            body.room_id.as_str(),
            &recipient.user_id,
            recipient.reason.as_deref(),
            false,
        )
        .await?;
    Ok(invite_user::v3::Response::new())
}

async fn kick(
    state: AppState,
    request: Ruma<kick_user::v3::Request>,
) -> Result<kick_user::v3::Response, MatrixError> {
    let body = request.body;
    state
        .services
        .rooms
        .set_membership_of(
            &request.identity.user_id,
            body.room_id.as_str(),
            &body.user_id,
            "leave",
            body.reason.as_deref(),
        )
        .await?;
    Ok(kick_user::v3::Response::new())
}

async fn ban(
    state: AppState,
    request: Ruma<ban_user::v3::Request>,
) -> Result<ban_user::v3::Response, MatrixError> {
    let body = request.body;
    state
        .services
        .rooms
        .set_membership_of(
            &request.identity.user_id,
            body.room_id.as_str(),
            &body.user_id,
            "ban",
            body.reason.as_deref(),
        )
        .await?;
    Ok(ban_user::v3::Response::new())
}

async fn unban(
    state: AppState,
    request: Ruma<unban_user::v3::Request>,
) -> Result<unban_user::v3::Response, MatrixError> {
    let body = request.body;
    state
        .services
        .rooms
        .unban(
            &request.identity.user_id,
            body.room_id.as_str(),
            &body.user_id,
            body.reason.as_deref(),
        )
        .await?;
    Ok(unban_user::v3::Response::new())
}

async fn knock(
    state: AppState,
    request: Ruma<knock_room::v3::Request>,
) -> Result<knock_room::v3::Response, MatrixError> {
    let body = request.body;
    let (room_id, mut via) = room_of(&state, &body.room_id_or_alias).await?;
    via.splice(0..0, body.via);
    let knocked = state
        .services
        .knock_room(
            &request.identity.user_id,
            &room_id,
            &via,
            body.reason.as_deref(),
        )
        .await?;
    Ok(knock_room::v3::Response::new(room_id_of(&knocked)?))
}

async fn forget(
    state: AppState,
    request: Ruma<forget_room::v3::Request>,
) -> Result<forget_room::v3::Response, MatrixError> {
    state
        .services
        .rooms
        .forget(&request.identity.user_id, request.body.room_id.as_str())
        .await?;
    Ok(forget_room::v3::Response::new())
}

async fn rooms_joined(
    state: AppState,
    request: Ruma<joined_rooms::v3::Request>,
) -> Result<joined_rooms::v3::Response, MatrixError> {
    let rooms = state
        .services
        .rooms
        .joined_rooms(&request.identity.user_id)
        .await?;
    Ok(joined_rooms::v3::Response::new(
        rooms
            .iter()
            .map(|r| room_id_of(r))
            .collect::<Result<_, _>>()?,
    ))
}

/// What both kinds of send do first: the rate limit and the content as a JSON object.
fn prepare_send(
    state: &AppState,
    user: &myelin_service::accounts::AuthedUser,
    content: &serde_json::value::RawValue,
) -> Result<Value, MatrixError> {
    // Sends are not marked rate-limited in the spec, but a flood of them is what limits exist
    // for (Synapse limits them too).
    state
        .services
        .rate_limiter
        .check(RateKey::User(user.user_id.to_string()))?;
    let content: Value =
        serde_json::from_str(content.get()).map_err(|e| ServiceError::BadJson(e.to_string()))?;
    if !content.is_object() {
        return Err(ServiceError::BadJson("Event content must be a JSON object".to_owned()).into());
    }
    Ok(content)
}

async fn send_message(
    state: AppState,
    request: Ruma<send_message_event::v3::Request>,
) -> Result<send_message_event::v3::Response, MatrixError> {
    let user = request.identity;
    let body = request.body;
    let content = prepare_send(&state, &user, body.body.json())?;
    let event_type = body.event_type.to_string();
    let event_id = state
        .services
        .rooms
        .send_message(
            &user,
            body.room_id.as_str(),
            &event_type,
            content,
            body.txn_id.as_str(),
        )
        .await?;
    Ok(send_message_event::v3::Response::new(event_id_of(
        &event_id,
    )?))
}

fn event_id_of(event_id: &str) -> Result<ruma::OwnedEventId, MatrixError> {
    ruma::EventId::parse(event_id)
        .map_err(|e| MatrixError::internal(format!("bad event id {event_id}: {e}")))
}

async fn send_state(
    state: AppState,
    request: Ruma<send_state_event::v3::Request>,
) -> Result<send_state_event::v3::Response, MatrixError> {
    let user = request.identity;
    let body = request.body;
    let content = prepare_send(&state, &user, body.body.json())?;
    let event_type = body.event_type.to_string();
    if event_type == "m.room.canonical_alias" && body.state_key.is_empty() {
        // The spec: new aliases in the event must exist, be ours and point to this room.
        state
            .services
            .directory
            .check_canonical_alias(&body.room_id, &content)
            .await?;
    }
    let event_id = state
        .services
        .rooms
        .send_state_event(
            &user.user_id,
            body.room_id.as_str(),
            &event_type,
            &body.state_key,
            content,
        )
        .await?;
    Ok(send_state_event::v3::Response::new(event_id_of(&event_id)?))
}

async fn get_state(
    state: AppState,
    request: Ruma<get_state_events::v3::Request>,
) -> Result<get_state_events::v3::Response, MatrixError> {
    let events = state
        .services
        .rooms
        .state(&request.identity.user_id, request.body.room_id.as_str())
        .await?;
    Ok(get_state_events::v3::Response::new(
        events.into_iter().map(raw).collect::<Result<_, _>>()?,
    ))
}

async fn get_state_for_key(
    state: AppState,
    request: Ruma<get_state_event_for_key::v3::Request>,
) -> Result<get_state_event_for_key::v3::Response, MatrixError> {
    let body = request.body;
    let event = state
        .services
        .rooms
        .state_event(
            &request.identity.user_id,
            body.room_id.as_str(),
            &body.event_type.to_string(),
            &body.state_key,
        )
        .await?;
    let value = match body.format {
        get_state_event_for_key::v3::StateEventFormat::Event => event,
        _ => event["content"].clone(),
    };
    let raw = serde_json::value::to_raw_value(&value)
        .map_err(|e| MatrixError::internal(e.to_string()))?;
    Ok(get_state_event_for_key::v3::Response::new(raw))
}

async fn get_event(
    state: AppState,
    request: Ruma<get_room_event::v3::Request>,
) -> Result<get_room_event::v3::Response, MatrixError> {
    let body = request.body;
    let event = state
        .services
        .rooms
        .event(
            &request.identity.user_id,
            Some(request.identity.device_id.as_str()),
            body.room_id.as_str(),
            body.event_id.as_str(),
        )
        .await?;
    Ok(get_room_event::v3::Response::new(raw(event)?))
}

async fn members(
    state: AppState,
    request: Ruma<ruma::api::client::membership::get_member_events::v3::Request>,
) -> Result<ruma::api::client::membership::get_member_events::v3::Response, MatrixError> {
    let body = request.body;
    let filter = MembersFilter {
        at: body.at,
        membership: body.membership.map(|m| m.to_string()),
        not_membership: body.not_membership.map(|m| m.to_string()),
    };
    let events = state
        .services
        .rooms
        .members(&request.identity.user_id, body.room_id.as_str(), &filter)
        .await?;
    Ok(
        ruma::api::client::membership::get_member_events::v3::Response::new(
            events.into_iter().map(raw).collect::<Result<_, _>>()?,
        ),
    )
}

/// `GET /rooms/{roomId}/joined_members`, written as JSON here rather than through ruma's type,
/// which leaves out a missing display name or avatar: every member carries both keys, `null`
/// when unset, as Synapse sends them and Complement expects.
async fn members_joined(
    state: AppState,
    request: Ruma<joined_members::v3::Request>,
) -> Result<axum::response::Response, MatrixError> {
    let joined = state
        .services
        .rooms
        .joined_members(&request.identity.user_id, request.body.room_id.as_str())
        .await?;
    let joined: serde_json::Map<String, Value> = joined
        .into_iter()
        .map(|(user_id, display_name, avatar_url)| {
            (
                user_id,
                json!({"display_name": display_name, "avatar_url": avatar_url}),
            )
        })
        .collect();
    Ok(axum::Json(json!({ "joined": joined })).into_response())
}

async fn messages(
    state: AppState,
    request: Ruma<get_message_events::v3::Request>,
) -> Result<get_message_events::v3::Response, MatrixError> {
    let body = request.body;
    let dir = match body.dir {
        ruma::api::Direction::Backward => Direction::Backward,
        ruma::api::Direction::Forward => Direction::Forward,
    };
    let limit = usize::try_from(u64::from(body.limit)).unwrap_or(usize::MAX);
    let filter = super::sync::event_filter(&body.filter);
    let page = state
        .services
        .room_messages(
            &request.identity.user_id,
            body.room_id.as_str(),
            &PageRequest {
                from: body.from.as_deref(),
                to: body.to.as_deref(),
                dir,
                limit,
                filter: &filter,
                device: Some(request.identity.device_id.as_str()),
                lazy_load_members: !matches!(
                    body.filter.lazy_load_options,
                    ruma::api::client::filter::LazyLoadOptions::Disabled
                ),
            },
        )
        .await?;
    let mut response = get_message_events::v3::Response::new();
    response.start = page.start;
    response.end = page.end;
    response.chunk = page.chunk.into_iter().map(raw).collect::<Result<_, _>>()?;
    response.state = page.state.into_iter().map(raw).collect::<Result<_, _>>()?;
    Ok(response)
}

async fn redact(
    state: AppState,
    request: Ruma<redact_event::v3::Request>,
) -> Result<redact_event::v3::Response, MatrixError> {
    let user = request.identity;
    let body = request.body;
    let event_id = state
        .services
        .rooms
        .redact(
            &user,
            body.room_id.as_str(),
            body.event_id.as_str(),
            body.reason.as_deref(),
            body.txn_id.as_str(),
        )
        .await?;
    Ok(redact_event::v3::Response::new(event_id_of(&event_id)?))
}

async fn context(
    state: AppState,
    request: Ruma<get_context::v3::Request>,
) -> Result<get_context::v3::Response, MatrixError> {
    let body = request.body;
    let limit = usize::try_from(u64::from(body.limit)).unwrap_or(usize::MAX);
    let context = state
        .services
        .rooms
        .context(
            &request.identity.user_id,
            Some(request.identity.device_id.as_str()),
            body.room_id.as_str(),
            body.event_id.as_str(),
            limit,
        )
        .await?;
    let mut response = get_context::v3::Response::new();
    response.start = Some(context.start);
    response.end = Some(context.end);
    response.event = Some(raw(context.event)?);
    response.events_before = context
        .before
        .into_iter()
        .map(raw)
        .collect::<Result<_, _>>()?;
    response.events_after = context
        .after
        .into_iter()
        .map(raw)
        .collect::<Result<_, _>>()?;
    response.state = context
        .state
        .into_iter()
        .map(raw)
        .collect::<Result<_, _>>()?;
    Ok(response)
}

async fn timestamp_to_event(
    state: AppState,
    request: Ruma<get_event_by_timestamp::v1::Request>,
) -> Result<get_event_by_timestamp::v1::Response, MatrixError> {
    let body = request.body;
    let dir = match body.dir {
        ruma::api::Direction::Backward => Direction::Backward,
        ruma::api::Direction::Forward => Direction::Forward,
    };
    let ts = i64::from(body.ts.get());
    let (event_id, sent) = state
        .services
        .rooms
        .event_by_timestamp(&request.identity.user_id, body.room_id.as_str(), ts, dir)
        .await?;
    let event_id = event_id
        .try_into()
        .map_err(|_| MatrixError::internal("stored event has an invalid event id"))?;
    let sent = ruma::UInt::try_from(sent)
        .map(ruma::MilliSecondsSinceUnixEpoch)
        .map_err(|_| MatrixError::internal("stored event has an invalid timestamp"))?;
    Ok(get_event_by_timestamp::v1::Response::new(event_id, sent))
}
