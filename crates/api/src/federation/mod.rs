//! The server-server and key APIs (TLS listener).

mod account_keys;
mod bans;
mod discovery;
mod events;
mod hierarchy;
mod invites;
mod keys;
mod media;
mod membership;
mod query;
mod transactions;
mod user_keys;

use axum::Router;

use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    discovery::routes()
        .merge(account_keys::routes())
        .merge(bans::routes())
        .merge(keys::routes())
        .merge(query::routes())
        .merge(events::routes())
        .merge(hierarchy::routes())
        .merge(membership::routes())
        .merge(invites::routes())
        .merge(transactions::routes())
        .merge(media::routes())
        .merge(user_keys::routes())
}
