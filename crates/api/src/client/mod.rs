//! The client-server API (plain HTTP listener).

mod account;
mod account_data;
mod backup;
mod capabilities;
mod dehydrated;
mod device;
mod directory;
mod discovery;
mod ephemeral;
mod filter;
pub(crate) mod keys;
mod profile;
mod push_rules;
mod pushers;
mod relations;
mod report;
mod rooms;
mod search;
mod session;
mod spaces;
mod sync;
mod uia;
mod user_directory;
mod voip;

use axum::Router;

use crate::AppState;

pub(crate) use directory::{limit_of as page_limit, page_json as public_rooms_json};

pub(crate) fn routes() -> Router<AppState> {
    discovery::routes()
        .merge(account::routes())
        .merge(session::routes())
        .merge(device::routes())
        .merge(rooms::routes().merge(directory::routes()))
        .merge(
            relations::routes()
                .merge(report::routes())
                .merge(spaces::routes())
                .merge(search::routes()),
        )
        .merge(user_directory::routes())
        .merge(sync::routes())
        .merge(ephemeral::routes())
        .merge(
            keys::routes()
                .merge(backup::routes())
                .merge(dehydrated::routes()),
        )
        .merge(
            filter::routes()
                .merge(account_data::routes())
                .merge(push_rules::routes())
                .merge(pushers::routes()),
        )
        .merge(
            capabilities::routes()
                .merge(voip::routes())
                .merge(profile::routes()),
        )
}
