//! The client-server API (plain HTTP listener).

mod discovery;

use axum::Router;

use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    discovery::routes()
}
