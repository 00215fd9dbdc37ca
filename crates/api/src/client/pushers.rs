//! `/pushers`: listing the user's pushers and setting or deleting one (`/pushers/set`).

use axum::Router;
use ruma::api::client::push::{get_pushers, set_pusher};

use crate::{AppState, MatrixError, Ruma, ruma_bridge::RumaRouterExt};

pub(crate) fn routes() -> Router<AppState> {
    Router::new().ruma(list).ruma(set)
}

async fn list(
    state: AppState,
    request: Ruma<get_pushers::v3::Request>,
) -> Result<get_pushers::v3::Response, MatrixError> {
    let pushers = state
        .services
        .pushers
        .list(request.identity.user_id.as_str())
        .await?;
    Ok(get_pushers::v3::Response::new(pushers))
}

async fn set(
    state: AppState,
    request: Ruma<set_pusher::v3::Request>,
) -> Result<set_pusher::v3::Response, MatrixError> {
    let user_id = request.identity.user_id.as_str();
    let pushers = &state.services.pushers;
    match request.body.action {
        set_pusher::v3::PusherAction::Post(post) => {
            pushers
                .set(
                    user_id,
                    Some(request.identity.device_id.as_str()),
                    post.pusher,
                    post.append,
                    myelin_service::now_millis(),
                )
                .await?
        }
        set_pusher::v3::PusherAction::Delete(ids) => pushers.delete(user_id, &ids).await?,
        _ => {
            return Err(MatrixError::from(myelin_service::Error::InvalidParam(
                "Unsupported pusher action".to_owned(),
            )));
        }
    }
    Ok(set_pusher::v3::Response::new())
}
