//! The server-server and key APIs (TLS listener).

mod discovery;

use axum::Router;

use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    discovery::routes()
}
