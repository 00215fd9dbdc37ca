//! History this server lacks, fetched from the other servers of a room (the spec's backfill):
//! when a client's `/messages` walking backwards reaches the start of what is stored, and the
//! room's history goes on before it (its backward extremities: the prev events of a join
//! through another server, and what earlier backfills stopped at), a `/backfill` request asks
//! a server of the room for the events before them (a few in turn for a page larger than one
//! answer).
//!
//! The answer goes through the receive pipeline as history (`Placement::Backfilled`: below
//! every live stream position, so `/sync` never shows it as new; placed by depth for
//! `/messages`), events whose prev events are out of reach placed on the state the server
//! gives for them. An answer with more events than asked, or with an event of another room, is
//! not used (the next server is asked). Each server answers only what its history visibility
//! lets this server see; `/messages` then applies this server's rules for the reader.

use std::time::Duration;

use myelin_room_version::{RoomVersion, receipt};
use myelin_store::Placement;
use ruma::{
    OwnedEventId, OwnedRoomId, OwnedServerName, UInt, UserId,
    api::federation::backfill::get_backfill,
};

use crate::{
    Error, Result, Services,
    federation_receiver::{FetchBudget, MAX_FETCHED_EVENTS, MAX_PDU_BYTES},
    rooms::{BACKFILL_MAX, Direction, MessagesPage, PageRequest, Received},
};

/// Backfills one `/messages` page may take (each at most 100 events).
const BACKFILL_ROUNDS: usize = 5;
/// Backward extremities named in one request.
const EXTREMITIES_ASKED: i64 = 20;
/// Servers of the room asked in turn.
const SERVERS_ASKED: usize = 3;
/// How long one backfill may spend fetching (the answer and what its events lack).
const BACKFILL_TIME: Duration = Duration::from_secs(10);
/// Room for the answer's envelope around its events.
const ENVELOPE_BYTES: usize = 4 * 1024;

impl Services {
    /// `GET /rooms/{roomId}/messages`: the page as stored; a backwards page that reaches the
    /// start of the stored history backfills and is read again, until it is full, a backfill
    /// brings nothing, or [`BACKFILL_ROUNDS`] have gone (a page larger than one backfill, at
    /// most 100 events, takes several).
    pub async fn room_messages(
        &self,
        user: &UserId,
        room_id: &str,
        page: &PageRequest<'_>,
    ) -> Result<MessagesPage> {
        let mut read = self.rooms.messages(user, room_id, page).await?;
        if page.dir != Direction::Backward {
            return Ok(with_end_on_events(read));
        }
        let mut more_remote = false;
        for _ in 0..BACKFILL_ROUNDS {
            if read.end.is_some() {
                break;
            }
            more_remote = false;
            match self.backfill(room_id, page.limit).await {
                Ok(0) => break,
                Ok(stored) => {
                    tracing::debug!(%room_id, stored, "backfilled history for /messages");
                    read = self.rooms.messages(user, room_id, page).await?;
                    more_remote = true;
                }
                Err(err) => {
                    tracing::warn!(%room_id, %err, "backfill failed");
                    break;
                }
            }
        }
        // The rounds ran out with history still coming: the client is told to read on (its
        // next page backfills again) rather than that the room starts here.
        if read.end.is_none() && more_remote {
            read.end = read.resume.clone();
        }
        Ok(with_end_on_events(read))
    }

    /// Fetches up to `limit` (at most 100) events of room `room_id` from before its backward
    /// extremities from one of its servers (see the module docs). Returns how many events were
    /// stored; 0 when the room has no history to fetch, this server is not in it, or no
    /// server gave a usable answer.
    pub async fn backfill(&self, room_id: &str, limit: usize) -> Result<usize> {
        let Some(room) = self.store.room(room_id).await? else {
            return Ok(0);
        };
        let ours = self.config.server_name.as_str();
        if !self.store.server_in_room(room.room_nid, ours).await? {
            return Ok(0);
        }
        let extremities: Vec<OwnedEventId> = self
            .store
            .backward_extremities(room.room_nid, EXTREMITIES_ASKED)
            .await?
            .into_iter()
            .filter_map(|id| OwnedEventId::try_from(id).ok())
            .collect();
        if extremities.is_empty() {
            return Ok(0);
        }
        let version = RoomVersion::get(&room.room_version)
            .map_err(|_| Error::Internal(format!("room {room_id} has an unknown version")))?;
        let parsed_room = OwnedRoomId::try_from(room_id)
            .map_err(|e| Error::Internal(format!("stored room id {room_id}: {e}")))?;
        let limit = limit.clamp(1, BACKFILL_MAX as usize);
        for server in self.servers_of_room(room.room_nid).await? {
            let request = get_backfill::v1::Request::new(
                parsed_room.clone(),
                extremities.clone(),
                UInt::try_from(limit as u64).unwrap_or(UInt::MIN),
            );
            let answer = match self
                .federation
                .send_limited(
                    &server,
                    request,
                    limit * (MAX_PDU_BYTES + 1) + ENVELOPE_BYTES,
                )
                .await
            {
                Ok(answer) => answer,
                Err(err) => {
                    tracing::info!(%room_id, %server, %err, "a server did not answer backfill");
                    continue;
                }
            };
            if answer.pdus.len() > limit {
                tracing::info!(%room_id, %server, events = answer.pdus.len(), limit, "ignored a backfill answer with more events than asked");
                continue;
            }
            let pdus: Vec<&[u8]> = answer.pdus.iter().map(|pdu| pdu.get().as_bytes()).collect();
            let foreign = pdus.iter().any(|bytes| {
                receipt::check_format(version, bytes)
                    .is_ok_and(|pdu| pdu.room_id_or_own() != room_id)
            });
            if foreign {
                tracing::info!(%room_id, %server, "ignored a backfill answer with events of another room");
                continue;
            }
            if pdus.is_empty() {
                continue;
            }
            let mut budget = FetchBudget::of(MAX_FETCHED_EVENTS, BACKFILL_TIME);
            let outcomes = self
                .receive_room_pdus(&server, &room, &pdus, &mut budget, Placement::Backfilled)
                .await?;
            let stored = outcomes
                .iter()
                .filter(|o| {
                    matches!(
                        o.outcome,
                        Received::Accepted | Received::SoftFailed | Received::Rejected(_)
                    )
                })
                .count();
            if stored > 0 {
                return Ok(stored);
            }
        }
        Ok(0)
    }

    /// Up to [`SERVERS_ASKED`] other servers with users joined to the room.
    async fn servers_of_room(&self, room_nid: i64) -> Result<Vec<OwnedServerName>> {
        let mut servers: Vec<OwnedServerName> = Vec::new();
        for user in self.store.joined_user_ids(room_nid).await? {
            if let Ok(user) = UserId::parse(user.as_str())
                && user.server_name() != self.config.server_name
                && !servers.iter().any(|s| s == user.server_name())
            {
                servers.push(user.server_name().to_owned());
            }
        }
        servers.truncate(SERVERS_ASKED);
        Ok(servers)
    }
}

/// A page that holds events always carries `end`, as Synapse gives it and clients (and
/// Complement's `TestRoomImageRoundtrip`) expect: the page after the last events is empty and
/// has none, which is where the spec's "no further events" omission then applies.
fn with_end_on_events(mut read: MessagesPage) -> MessagesPage {
    if read.end.is_none() && !read.chunk.is_empty() {
        read.end = read.resume.clone();
    }
    read
}
