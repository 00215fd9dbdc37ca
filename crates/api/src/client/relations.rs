//! Relations over the client API: `/relations` (with and without a relation type and event type)
//! and `/threads`. Each handler translates and calls `myelin_service::rooms`.

use axum::Router;
use myelin_service::rooms::{Direction, RelationsPage, RelationsRequest, ThreadsInclude};
use ruma::{
    UInt,
    api::client::{
        relations::{
            get_relating_events, get_relating_events_with_rel_type,
            get_relating_events_with_rel_type_and_event_type,
        },
        threads::get_threads::{self, v1::IncludeThreads},
    },
};

use super::rooms::raw;
use crate::{AppState, MatrixError, Ruma, ruma_bridge::RumaRouterExt};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .ruma(relations)
        .ruma(relations_with_rel_type)
        .ruma(relations_with_rel_type_and_event_type)
        .ruma(threads)
}

fn direction(dir: ruma::api::Direction) -> Direction {
    match dir {
        ruma::api::Direction::Backward => Direction::Backward,
        ruma::api::Direction::Forward => Direction::Forward,
    }
}

fn limit(limit: Option<UInt>) -> Option<usize> {
    limit.map(|l| usize::try_from(u64::from(l)).unwrap_or(usize::MAX))
}

/// The parts every `/relations` response shares.
struct Page {
    chunk: Vec<ruma::serde::Raw<ruma::events::AnyMessageLikeEvent>>,
    next_batch: Option<String>,
    prev_batch: Option<String>,
    recursion_depth: Option<UInt>,
}

fn page(page: RelationsPage) -> Result<Page, MatrixError> {
    Ok(Page {
        chunk: page.chunk.into_iter().map(raw).collect::<Result<_, _>>()?,
        next_batch: page.next_batch,
        prev_batch: page.prev_batch,
        recursion_depth: page.recursion_depth.map(UInt::from),
    })
}

/// Fills any of the three `/relations` responses from a page.
macro_rules! respond {
    ($response:ty, $page:expr) => {{
        let page = page($page)?;
        let mut response = <$response>::new(page.chunk);
        response.next_batch = page.next_batch;
        response.prev_batch = page.prev_batch;
        response.recursion_depth = page.recursion_depth;
        Ok(response)
    }};
}

async fn relations(
    state: AppState,
    request: Ruma<get_relating_events::v1::Request>,
) -> Result<get_relating_events::v1::Response, MatrixError> {
    let body = request.body;
    let result = state
        .services
        .rooms
        .relations(
            &request.identity.user_id,
            body.room_id.as_str(),
            body.event_id.as_str(),
            &RelationsRequest {
                rel_type: None,
                event_type: None,
                from: body.from.as_deref(),
                to: body.to.as_deref(),
                dir: direction(body.dir),
                limit: limit(body.limit),
                recurse: body.recurse,
                device: Some(request.identity.device_id.as_str()),
            },
        )
        .await?;
    respond!(get_relating_events::v1::Response, result)
}

async fn relations_with_rel_type(
    state: AppState,
    request: Ruma<get_relating_events_with_rel_type::v1::Request>,
) -> Result<get_relating_events_with_rel_type::v1::Response, MatrixError> {
    let body = request.body;
    let result = state
        .services
        .rooms
        .relations(
            &request.identity.user_id,
            body.room_id.as_str(),
            body.event_id.as_str(),
            &RelationsRequest {
                rel_type: Some(body.rel_type.as_str()),
                event_type: None,
                from: body.from.as_deref(),
                to: body.to.as_deref(),
                dir: direction(body.dir),
                limit: limit(body.limit),
                recurse: body.recurse,
                device: Some(request.identity.device_id.as_str()),
            },
        )
        .await?;
    respond!(get_relating_events_with_rel_type::v1::Response, result)
}

async fn relations_with_rel_type_and_event_type(
    state: AppState,
    request: Ruma<get_relating_events_with_rel_type_and_event_type::v1::Request>,
) -> Result<get_relating_events_with_rel_type_and_event_type::v1::Response, MatrixError> {
    let body = request.body;
    let event_type = body.event_type.to_string();
    let result = state
        .services
        .rooms
        .relations(
            &request.identity.user_id,
            body.room_id.as_str(),
            body.event_id.as_str(),
            &RelationsRequest {
                rel_type: Some(body.rel_type.as_str()),
                event_type: Some(&event_type),
                from: body.from.as_deref(),
                to: body.to.as_deref(),
                dir: direction(body.dir),
                limit: limit(body.limit),
                recurse: body.recurse,
                device: Some(request.identity.device_id.as_str()),
            },
        )
        .await?;
    respond!(
        get_relating_events_with_rel_type_and_event_type::v1::Response,
        result
    )
}

async fn threads(
    state: AppState,
    request: Ruma<get_threads::v1::Request>,
) -> Result<get_threads::v1::Response, MatrixError> {
    let body = request.body;
    let include = match body.include {
        IncludeThreads::All => ThreadsInclude::All,
        IncludeThreads::Participated => ThreadsInclude::Participated,
        other => {
            return Err(myelin_service::Error::InvalidParam(format!(
                "Unknown value of include: {}",
                other.as_str()
            ))
            .into());
        }
    };
    let (chunk, next_batch) = state
        .services
        .rooms
        .threads(
            &request.identity.user_id,
            body.room_id.as_str(),
            include,
            body.from.as_deref(),
            limit(body.limit),
        )
        .await?;
    let mut response =
        get_threads::v1::Response::new(chunk.into_iter().map(raw).collect::<Result<_, _>>()?);
    response.next_batch = next_batch;
    Ok(response)
}
