//! The client-server API (plain HTTP listener).

mod account;
mod device;
mod discovery;
mod session;
mod uia;

use axum::Router;

use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    discovery::routes()
        .merge(account::routes())
        .merge(session::routes())
        .merge(device::routes())
}
