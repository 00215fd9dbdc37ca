//! `/user/{userId}/filter`: upload a filter, read one back.

use axum::Router;
use ruma::api::client::filter::{create_filter, get_filter};

use crate::{AppState, MatrixError, Ruma, ruma_bridge::RumaRouterExt};

pub(crate) fn routes() -> Router<AppState> {
    Router::new().ruma(create).ruma(get)
}

async fn create(
    state: AppState,
    request: Ruma<create_filter::v3::Request>,
) -> Result<create_filter::v3::Response, MatrixError> {
    let body = request.body;
    let filter_id = state
        .services
        .user_data
        .create_filter(&request.identity, &body.user_id, &body.filter)
        .await?;
    Ok(create_filter::v3::Response::new(filter_id))
}

async fn get(
    state: AppState,
    request: Ruma<get_filter::v3::Request>,
) -> Result<get_filter::v3::Response, MatrixError> {
    let body = request.body;
    let filter = state
        .services
        .user_data
        .filter(&request.identity, &body.user_id, &body.filter_id)
        .await?;
    Ok(get_filter::v3::Response::new(filter))
}
