//! `GET /room_summary/{roomIdOrAlias}` (spec v1.15): the alias resolved (this server's
//! directory, or the alias's server), then the room's summary (`Rooms::room_summary`: this
//! server's state, or another server's federation `/hierarchy` answer).

use ruma::{RoomAliasId, UserId};
use serde_json::Value;

use crate::{Error, Result, Services};

impl Services {
    /// The summary of the room `room_id_or_alias` names for `user` (`None`: anonymous), asking
    /// `via` about a room this server does not hold.
    pub async fn room_summary(
        &self,
        user: Option<&UserId>,
        room_id_or_alias: &str,
        via: &[String],
    ) -> Result<Value> {
        let (room_id, via) = match RoomAliasId::parse(room_id_or_alias) {
            Ok(alias) => {
                // Anonymous readers never make this server ask another.
                if user.is_none() && alias.server_name() != self.config.server_name {
                    return Err(Error::NotFound("Room not found".to_owned()));
                }
                let (room_id, servers) = self.resolve_alias(&alias).await.map_err(|err| {
                    tracing::debug!(%alias, %err, "room summary: alias not resolved");
                    Error::NotFound("Room not found".to_owned())
                })?;
                let mut via = via.to_vec();
                via.extend(servers.iter().map(ToString::to_string));
                (room_id, via)
            }
            Err(_) => (room_id_or_alias.to_owned(), via.to_vec()),
        };
        self.rooms.room_summary(user, &room_id, &via).await
    }
}
