//! Memberships of local users in rooms this server is not in (issue 16): an invite another
//! server sent through `/invite`, and the leave that rejects it (through the inviting server's
//! `make_leave`/`send_leave`, or out of band). Such a room has no state here: what is stored is
//! the room's row (its id and version, so the rest of the server can name it), the membership
//! event as an outlier, the user's membership row at a live position of the events stream (so
//! an incremental `/sync` sees it), and for an invite the stripped state the inviting server
//! sent, which is what the invitee's clients are shown (`invite_room_state`).
//!
//! A room row that exists only for this is not one the server is in: nobody local is joined
//! (so `server_in_room` says no) and it has no current state.

use crate::graph::OutlierEvent;
use crate::store::BeginWrite;
use crate::{Store, StoreError, with_pool};

/// A local user's membership in a room this server is not in ([`Store::persist_outside_membership`]).
#[derive(Debug, Clone)]
pub struct OutsideMembership<'a> {
    pub room_id: &'a str,
    /// For the room row, if the room is new here.
    pub room_version: &'a str,
    /// For the room row, if the room is new here: the room's creator as far as is known.
    pub creator: &'a str,
    /// The membership event, stored as an outlier.
    pub event: OutlierEvent<'a>,
    /// The local user (the event's state key) and their membership.
    pub user_id: &'a str,
    pub membership: &'a str,
    /// For an invite: the events shown to the invitee's clients, as a JSON array.
    pub invite_room_state: Option<&'a str>,
    pub now: i64,
}

/// Where [`Store::persist_outside_membership`] put the membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutsidePersisted {
    pub room_nid: i64,
    pub event_nid: i64,
    /// The membership's position in the events stream (unchanged if the same event was the
    /// user's membership already: a repeated `/invite`).
    pub stream_ordering: i64,
}

impl Store {
    /// Stores a local user's membership in a room this server is not in, in one transaction
    /// (see the module documentation): the room row if it is new, the event as an outlier
    /// (an event stored already is kept as it is), the membership row at the next position of
    /// the events stream, and the invite's stripped state (dropped for any other membership).
    /// The same event handed in again (the inviting server retrying) changes nothing.
    pub async fn persist_outside_membership(
        &self,
        membership: &OutsideMembership<'_>,
    ) -> Result<OutsidePersisted, StoreError> {
        let event = &membership.event;
        let persisted = with_pool!(self, pool => {
            let mut tx = pool.begin_write(&self.write_gate).await?;
            sqlx::query(
                "INSERT INTO rooms (room_id, room_version, creator, created_ts, is_public) \
                 VALUES ($1, $2, $3, $4, FALSE) ON CONFLICT (room_id) DO NOTHING",
            )
            .bind(membership.room_id)
            .bind(membership.room_version)
            .bind(membership.creator)
            .bind(membership.now)
            .execute(&mut *tx)
            .await?;
            let room_nid: i64 = sqlx::query_scalar("SELECT room_nid FROM rooms WHERE room_id = $1")
                .bind(membership.room_id)
                .fetch_one(&mut *tx)
                .await?;
            let stored: Option<i64> = sqlx::query_scalar("SELECT event_nid FROM events WHERE event_id = $1")
                .bind(event.event_id)
                .fetch_optional(&mut *tx)
                .await?;
            let event_nid = match stored {
                Some(nid) => nid,
                None => {
                    let position: i64 = sqlx::query_scalar(
                        "UPDATE stream_positions SET position = position - 1 WHERE stream = 'backfill' RETURNING position",
                    )
                    .fetch_one(&mut *tx)
                    .await?;
                    let nid: i64 = sqlx::query_scalar(
                        "INSERT INTO events (event_id, room_nid, stream_ordering, depth, event_type, state_key, sender, \
                         origin_server_ts, json, state_group, state_group_before, status, rejection_reason, \
                         prev_state_nid, topological_ordering) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, NULL, 'outlier', NULL, NULL, $4) \
                         RETURNING event_nid",
                    )
                    .bind(event.event_id)
                    .bind(room_nid)
                    .bind(position)
                    .bind(event.depth)
                    .bind(event.event_type)
                    .bind(event.state_key)
                    .bind(event.sender)
                    .bind(event.origin_server_ts)
                    .bind(event.json)
                    .fetch_one(&mut *tx)
                    .await?;
                    for (kind, cited) in event
                        .prev_event_ids
                        .iter()
                        .map(|id| (0i32, id))
                        .chain(event.auth_event_ids.iter().map(|id| (1i32, id)))
                    {
                        sqlx::query(
                            "INSERT INTO event_edges (event_nid, kind, cited_event_id, cited_event_nid) \
                             VALUES ($1, $2, $3, (SELECT c.event_nid FROM events c WHERE c.event_id = $3)) \
                             ON CONFLICT DO NOTHING",
                        )
                        .bind(nid)
                        .bind(kind)
                        .bind(cited.as_str())
                        .execute(&mut *tx)
                        .await?;
                    }
                    nid
                }
            };
            let current: Option<(i64, i64)> = sqlx::query_as(
                "SELECT event_nid, stream_ordering FROM room_memberships WHERE room_nid = $1 AND user_id = $2",
            )
            .bind(room_nid)
            .bind(membership.user_id)
            .fetch_optional(&mut *tx)
            .await?;
            let stream_ordering = match current {
                Some((nid, position)) if nid == event_nid => position,
                _ => {
                    let position = crate::store::take_event_positions!(tx, 1);
                    sqlx::query(
                        "INSERT INTO room_memberships (room_nid, user_id, membership, event_nid, stream_ordering, forgotten) \
                         VALUES ($1, $2, $3, $4, $5, FALSE) \
                         ON CONFLICT (room_nid, user_id) DO UPDATE SET membership = excluded.membership, \
                         event_nid = excluded.event_nid, stream_ordering = excluded.stream_ordering, forgotten = FALSE",
                    )
                    .bind(room_nid)
                    .bind(membership.user_id)
                    .bind(membership.membership)
                    .bind(event_nid)
                    .bind(position)
                    .execute(&mut *tx)
                    .await?;
                    match membership.invite_room_state {
                        Some(events) => {
                            sqlx::query(
                                "INSERT INTO invite_room_state (room_nid, user_id, event_nid, events) VALUES ($1, $2, $3, $4) \
                                 ON CONFLICT (room_nid, user_id) DO UPDATE SET event_nid = excluded.event_nid, events = excluded.events",
                            )
                            .bind(room_nid)
                            .bind(membership.user_id)
                            .bind(event_nid)
                            .bind(events)
                            .execute(&mut *tx)
                            .await?;
                        }
                        None => {
                            sqlx::query("DELETE FROM invite_room_state WHERE room_nid = $1 AND user_id = $2")
                                .bind(room_nid)
                                .bind(membership.user_id)
                                .execute(&mut *tx)
                                .await?;
                        }
                    }
                    position
                }
            };
            tx.commit().await?;
            OutsidePersisted { room_nid, event_nid, stream_ordering }
        });
        Ok(persisted)
    }

    /// Replaces the stored JSON of the event `event_id` with `json`, the same event with more
    /// signatures (the caller checked that only `signatures` differ and that the result verifies):
    /// an invite of a local user in an account-key room, stored as this server co-signed it
    /// before its sender signed it (MSC4243.md §2.5 item 32), completed by the copy the inviter
    /// sent on. Whether a row was changed.
    pub async fn complete_event_signatures(
        &self,
        event_id: &str,
        json: &str,
    ) -> Result<bool, StoreError> {
        let changed = with_pool!(self, pool => {
            let mut tx = pool.begin_write(&self.write_gate).await?;
            let changed = sqlx::query("UPDATE events SET json = $2 WHERE event_id = $1")
                .bind(event_id)
                .bind(json)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            changed
        });
        Ok(changed > 0)
    }

    /// The stripped state stored with a user's invite to a room this server is not in, if the
    /// invite event `event_nid` is the one it came with: a JSON array.
    pub async fn invite_room_state(
        &self,
        room_nid: i64,
        user_id: &str,
        event_nid: i64,
    ) -> Result<Option<String>, StoreError> {
        let events = with_pool!(self, pool => {
            sqlx::query_scalar::<_, String>(
                "SELECT events FROM invite_room_state WHERE room_nid = $1 AND user_id = $2 AND event_nid = $3",
            )
            .bind(room_nid)
            .bind(user_id)
            .bind(event_nid)
            .fetch_optional(pool)
            .await?
        });
        Ok(events)
    }
}
