//! `POST /user_directory/search`.

use axum::Router;
use ruma::{OwnedUserId, api::client::user_directory::search_users};

use crate::{AppState, MatrixError, Ruma, ruma_bridge::RumaRouterExt};

pub(crate) fn routes() -> Router<AppState> {
    Router::new().ruma(search)
}

async fn search(
    state: AppState,
    request: Ruma<search_users::v3::Request>,
) -> Result<search_users::v3::Response, MatrixError> {
    let body = request.body;
    let limit = usize::try_from(u64::from(body.limit)).unwrap_or(usize::MAX);
    let (rows, limited) = state
        .services
        .rooms
        .search_users(&request.identity.user_id, &body.search_term, limit)
        .await?;
    let results = rows
        .into_iter()
        .filter_map(|(user_id, display_name, avatar_url)| {
            let mut user = search_users::v3::User::new(OwnedUserId::try_from(user_id).ok()?);
            user.display_name = display_name;
            user.avatar_url = avatar_url.map(Into::into);
            Some(user)
        })
        .collect();
    Ok(search_users::v3::Response::new(results, limited))
}
