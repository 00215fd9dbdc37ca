//! Directories of other servers, for local clients: a room alias of another server resolved
//! through its `/query/directory`, and its public room list (`/publicRooms?server=`) through
//! its federation `/publicRooms`. This server answers other servers from its own directory
//! only (`crate::directory`), never relaying.

use ruma::{
    OwnedServerName, RoomAliasId, UInt,
    api::federation::{directory::get_public_rooms_filtered, query::get_room_information},
    directory::{Filter, RoomNetwork},
};

use crate::{
    Result, Services,
    directory::{PublicRoomsPage, PublicRoomsQuery},
    remote_membership::remote_error,
};

/// The largest `/query/directory` answer read.
const ALIAS_ANSWER_BYTES: usize = 64 * 1024;
/// The largest `/publicRooms` answer read.
const PUBLIC_ROOMS_ANSWER_BYTES: usize = 4 * 1024 * 1024;

impl Services {
    /// The room an alias names and servers to join it through: this server's directory for
    /// its own aliases, the alias's server for others'.
    pub async fn resolve_alias(
        &self,
        alias: &RoomAliasId,
    ) -> Result<(String, Vec<OwnedServerName>)> {
        if alias.server_name() == self.config.server_name {
            return self.directory.resolve(alias).await;
        }
        let answer = self
            .federation
            .send_limited(
                alias.server_name(),
                get_room_information::v1::Request::new(alias.to_owned()),
                ALIAS_ANSWER_BYTES,
            )
            .await
            .map_err(|err| remote_error(alias.server_name(), err))?;
        let mut servers = answer.servers;
        if !servers.iter().any(|s| s == alias.server_name()) {
            servers.push(alias.server_name().to_owned());
        }
        Ok((answer.room_id.to_string(), servers))
    }

    /// `GET`/`POST /publicRooms`: this server's directory, or (`server` naming another) that
    /// server's, asked with the same page, search and filters.
    pub async fn public_rooms(&self, query: PublicRoomsQuery) -> Result<PublicRoomsPage> {
        let server = match &query.server {
            Some(server) if *server != self.config.server_name => server.clone(),
            _ => return self.directory.public_rooms(query).await,
        };
        let mut request = get_public_rooms_filtered::v1::Request::new();
        request.limit = query
            .limit
            .and_then(|limit| UInt::try_from(limit as u64).ok());
        request.since = query.since;
        let mut filter = Filter::new();
        filter.generic_search_term = query.search_term;
        filter.room_types = query.room_types;
        request.filter = filter;
        if query.third_party {
            // No bridge here to name a network; another server's third-party lists are theirs.
            request.room_network = RoomNetwork::All;
        }
        let answer = self
            .federation
            .send_limited(&server, request, PUBLIC_ROOMS_ANSWER_BYTES)
            .await
            .map_err(|err| remote_error(&server, err))?;
        Ok(PublicRoomsPage {
            total_room_count_estimate: answer
                .total_room_count_estimate
                .map_or(answer.chunk.len(), |n| {
                    usize::try_from(u64::from(n)).unwrap_or(usize::MAX)
                }),
            chunk: answer.chunk,
            next_batch: answer.next_batch,
            prev_batch: answer.prev_batch,
        })
    }
}
