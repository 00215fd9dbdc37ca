//! Device lists across servers, as stored: what the device-list sender reads of local users'
//! changes (the device-list stream's `device` and `cross_signing` rows) and the outbox rows it
//! writes with its position, and remote users' devices and cross-signing keys cached while this
//! server shares a room with them (`remote_devices`, `remote_cross_signing_keys`, with the
//! bookkeeping of `remote_device_lists`: the newest stream id heard, stale or not, and when the
//! cache was filled).

use crate::store::BeginWrite;
use crate::{Store, StoreError, with_pool};

/// A local change of the device-list stream that other servers hear of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceListChange {
    pub position: i64,
    pub user_id: String,
    /// The device (`kind` "device").
    pub device_id: Option<String>,
    /// "device", "device_on_join" (an unchanged device announced again after a join) or
    /// "cross_signing".
    pub kind: String,
}

/// A device as other servers see it: its keys (if it uploaded some) and its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederatedDevice {
    pub user_id: String,
    pub device_id: String,
    pub keys_json: Option<String>,
    pub display_name: Option<String>,
}

/// What this server knows of a remote user's device list (`remote_device_lists`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteListState {
    /// The newest stream id heard (from an EDU or a fetched list).
    pub stream_id: i64,
    /// What is cached (if anything) is older than `stream_id`.
    pub stale: bool,
    /// The events stream position when the cache was filled; `None`: nothing cached.
    pub cached_at: Option<i64>,
    /// When the row last changed (ms): a fetch compares it to tell whether an update came in
    /// while it ran.
    pub updated_ts: i64,
}

impl RemoteListState {
    /// Whether the cached devices are as new as the newest stream id heard.
    pub fn fresh(&self) -> bool {
        self.cached_at.is_some() && !self.stale
    }
}

/// An `m.device_list_update` as the cache applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteDeviceUpdate<'a> {
    pub user_id: &'a str,
    pub device_id: &'a str,
    pub stream_id: i64,
    pub prev_ids: &'a [i64],
    pub deleted: bool,
    pub keys_json: Option<&'a str>,
    pub display_name: Option<&'a str>,
}

/// What became of an `m.device_list_update`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteUpdateOutcome {
    /// Not newer than the newest stream id heard: nothing changed.
    Old,
    /// It followed on from the cached list and was applied to it.
    Applied,
    /// It did not (a `prev_id` this server never saw, or nothing cached): the list is marked
    /// stale at its stream id. `had_cache`: something was cached (now out of date).
    Gap { had_cache: bool },
}

/// A remote user's list as fetched (`/user/devices`): devices `(device id, keys JSON, name)`
/// and cross-signing keys `(type, JSON)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchedDeviceList {
    pub stream_id: i64,
    pub devices: Vec<(String, Option<String>, Option<String>)>,
    pub cross_signing: Vec<(String, String)>,
}

impl Store {
    // ----- outbound: local users' changes -----

    /// How far the device-list sender has read the device-list stream.
    pub async fn device_list_fanout_position(&self) -> Result<i64, StoreError> {
        let position = with_pool!(self, pool => {
            sqlx::query_scalar::<_, i64>("SELECT position FROM federation_device_list_fanout WHERE id = 0")
                .fetch_one(pool)
                .await?
        });
        Ok(position)
    }

    /// The device-list stream's rows after `after` that other servers hear of (`device` and
    /// `cross_signing` rows, of any user: the caller keeps local users'), oldest first, at most
    /// `limit`; and the stream position they were read up to (past rows of no interest too).
    pub async fn device_list_changes_after(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<(Vec<DeviceListChange>, i64), StoreError> {
        let (rows, head) = with_pool!(self, pool => {
            let head = sqlx::query_scalar::<_, i64>(
                "SELECT position FROM stream_positions WHERE stream = 'device_lists'",
            )
            .fetch_one(pool)
            .await?;
            let rows: Vec<(i64, String, Option<String>, String)> = sqlx::query_as(
                "SELECT stream_position, user_id, device_id, kind FROM device_list_changes \
                 WHERE stream_position > $1 AND stream_position <= $2 AND kind <> 'user' \
                 ORDER BY stream_position LIMIT $3",
            )
            .bind(after)
            .bind(head)
            .bind(limit)
            .fetch_all(pool)
            .await?;
            (rows, head)
        });
        // A full page ends at its last row; a short one covers everything up to the head.
        let read_to = if rows.len() as i64 == limit {
            rows.last().map_or(head, |row| row.0)
        } else {
            head
        };
        let changes = rows
            .into_iter()
            .map(|(position, user_id, device_id, kind)| DeviceListChange {
                position,
                user_id,
                device_id,
                kind,
            })
            .collect();
        Ok((changes, read_to))
    }

    /// The position of `user_id`'s last device row (`device` or `device_on_join`) before
    /// `before` (the `prev_id` of an `m.device_list_update`), if any.
    pub async fn previous_device_change(
        &self,
        user_id: &str,
        before: i64,
    ) -> Result<Option<i64>, StoreError> {
        let position = with_pool!(self, pool => {
            sqlx::query_scalar::<_, Option<i64>>(
                "SELECT MAX(stream_position) FROM device_list_changes \
                 WHERE user_id = $1 AND kind IN ('device', 'device_on_join') AND stream_position < $2",
            )
            .bind(user_id)
            .bind(before)
            .fetch_one(pool)
            .await?
        });
        Ok(position)
    }

    /// A local user's device-list stream id as other servers know it: the position of their last
    /// `device` row (0 if none).
    pub async fn device_list_stream_id(&self, user_id: &str) -> Result<i64, StoreError> {
        Ok(self
            .previous_device_change(user_id, i64::MAX)
            .await?
            .unwrap_or(0))
    }

    /// One device of a local user as other servers see it, if it exists.
    pub async fn federated_device(
        &self,
        user_id: &str,
        device_id: &str,
    ) -> Result<Option<FederatedDevice>, StoreError> {
        let row: Option<(Option<String>, Option<String>)> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT k.key_json, d.display_name FROM devices d \
                 LEFT JOIN e2e_device_keys k ON k.user_id = d.user_id AND k.device_id = d.device_id \
                 WHERE d.user_id = $1 AND d.device_id = $2",
            )
            .bind(user_id)
            .bind(device_id)
            .fetch_optional(pool)
            .await?
        });
        Ok(row.map(|(keys_json, display_name)| FederatedDevice {
            user_id: user_id.to_owned(),
            device_id: device_id.to_owned(),
            keys_json,
            display_name,
        }))
    }

    /// Puts EDUs `(destination, type, content)` in the federation outbox and moves the
    /// device-list sender's position from `from` to `to`, in one transaction: false (nothing
    /// written) when the position is no longer `from` (another process moved it).
    pub async fn enqueue_device_list_edus(
        &self,
        edus: &[(String, &str, String)],
        from: i64,
        to: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        let moved = with_pool!(self, pool => {
            let mut tx = pool.begin_write(&self.write_gate).await?;
            let moved = sqlx::query(
                "UPDATE federation_device_list_fanout SET position = $2 WHERE id = 0 AND position = $1",
            )
            .bind(from)
            .bind(to)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                > 0;
            if moved {
                for (destination, edu_type, content) in edus {
                    sqlx::query(
                        "INSERT INTO federation_edu_outbox (destination, edu_type, content, created_ts) \
                         VALUES ($1, $2, $3, $4)",
                    )
                    .bind(destination)
                    .bind(*edu_type)
                    .bind(content)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
            }
            moved
        });
        Ok(moved)
    }

    /// The users joined to a room `user_id` is joined to (the servers that hear of the user's
    /// devices), `user_id` included.
    pub async fn room_mates_joined(&self, user_id: &str) -> Result<Vec<String>, StoreError> {
        let users = with_pool!(self, pool => {
            sqlx::query_scalar::<_, String>(
                "SELECT DISTINCT m.user_id FROM room_memberships mine \
                 JOIN room_memberships m ON m.room_nid = mine.room_nid \
                 WHERE mine.user_id = $1 AND mine.membership = 'join' AND m.membership = 'join'",
            )
            .bind(user_id)
            .fetch_all(pool)
            .await?
        });
        Ok(users)
    }

    // ----- inbound: remote users' cached lists -----

    /// What this server knows of a remote user's device list.
    pub async fn remote_list_state(
        &self,
        user_id: &str,
    ) -> Result<Option<RemoteListState>, StoreError> {
        let row: Option<(i64, bool, Option<i64>, i64)> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT stream_id, stale, cached_at, updated_ts FROM remote_device_lists WHERE user_id = $1",
            )
            .bind(user_id)
            .fetch_optional(pool)
            .await?
        });
        Ok(row.map(
            |(stream_id, stale, cached_at, updated_ts)| RemoteListState {
                stream_id,
                stale,
                cached_at,
                updated_ts,
            },
        ))
    }

    /// Whether a membership changed, after events position `since`, in a room `user_id` is or
    /// was in: theirs, or that of a user of `server` (this server may have stopped sharing a
    /// room with them for a while and missed their updates). A remote account's verified keys
    /// in account-key rooms are its memberships too.
    pub async fn shared_rooms_changed_since(
        &self,
        user_id: &str,
        server: &str,
        since: i64,
    ) -> Result<bool, StoreError> {
        let suffix = format!(":{server}");
        let members = self.member_ids_of(&[user_id]).await?;
        let list = crate::e2ee::placeholders(3, members.len());
        let sql = format!(
            concat!(
                "SELECT 1 FROM room_memberships r JOIN room_memberships m ON m.room_nid = r.room_nid \
                 WHERE r.user_id IN ({list}) AND m.stream_ordering > $1 AND (m.user_id IN ({list}) OR ",
                crate::federation_inbound::user_of_server!("m.user_id", "$2"),
                ") LIMIT 1"
            ),
            list = list
        );
        let found = with_pool!(self, pool => {
            let mut query = sqlx::query_scalar::<_, i32>(sqlx::AssertSqlSafe(sql.clone()))
                .bind(since)
                .bind(&suffix);
            for (member, _) in &members {
                query = query.bind(member);
            }
            query.fetch_optional(pool).await?
        });
        Ok(found.is_some())
    }

    /// The cached devices of remote users.
    pub async fn remote_cached_devices(
        &self,
        user_ids: &[&str],
    ) -> Result<Vec<FederatedDevice>, StoreError> {
        let mut out = Vec::new();
        for user_id in user_ids {
            let rows: Vec<(String, Option<String>, Option<String>)> = with_pool!(self, pool => {
                sqlx::query_as(
                    "SELECT device_id, keys_json, display_name FROM remote_devices \
                     WHERE user_id = $1 ORDER BY device_id",
                )
                .bind(*user_id)
                .fetch_all(pool)
                .await?
            });
            out.extend(
                rows.into_iter()
                    .map(|(device_id, keys_json, display_name)| FederatedDevice {
                        user_id: (*user_id).to_owned(),
                        device_id,
                        keys_json,
                        display_name,
                    }),
            );
        }
        Ok(out)
    }

    /// The cached cross-signing keys of a remote user: `(type, JSON)`.
    pub async fn remote_cached_cross_signing(
        &self,
        user_id: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let rows = with_pool!(self, pool => {
            sqlx::query_as::<_, (String, String)>(
                "SELECT key_type, key_json FROM remote_cross_signing_keys WHERE user_id = $1 ORDER BY key_type",
            )
            .bind(user_id)
            .fetch_all(pool)
            .await?
        });
        Ok(rows)
    }

    /// Replaces the cached list of a remote user with one just fetched, filled at events
    /// position `cached_at`. It is fresh only if nothing was announced while it was fetched
    /// (the row's `updated_ts` is still `seen_updated_ts`, `None` for no row) or it is at least
    /// as new as everything announced; else it is stored stale. Returns whether it is fresh.
    pub async fn fill_remote_device_list(
        &self,
        user_id: &str,
        list: &FetchedDeviceList,
        cached_at: i64,
        seen_updated_ts: Option<i64>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let fresh = with_pool!(self, pool => {
            let mut tx = pool.begin_write(&self.write_gate).await?;
            let row: Option<(i64, i64)> = sqlx::query_as(
                "SELECT stream_id, updated_ts FROM remote_device_lists WHERE user_id = $1",
            )
            .bind(user_id)
            .fetch_optional(&mut *tx)
            .await?;
            let fresh = match row {
                None => true,
                Some((stream_id, updated_ts)) => {
                    Some(updated_ts) == seen_updated_ts || list.stream_id >= stream_id
                }
            };
            sqlx::query("DELETE FROM remote_devices WHERE user_id = $1")
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM remote_cross_signing_keys WHERE user_id = $1")
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
            for (device_id, keys_json, display_name) in &list.devices {
                sqlx::query(
                    "INSERT INTO remote_devices (user_id, device_id, keys_json, display_name) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (user_id, device_id) DO NOTHING",
                )
                .bind(user_id)
                .bind(device_id)
                .bind(keys_json)
                .bind(display_name)
                .execute(&mut *tx)
                .await?;
            }
            for (key_type, key_json) in &list.cross_signing {
                sqlx::query(
                    "INSERT INTO remote_cross_signing_keys (user_id, key_type, key_json) VALUES ($1, $2, $3) \
                     ON CONFLICT (user_id, key_type) DO UPDATE SET key_json = excluded.key_json",
                )
                .bind(user_id)
                .bind(key_type)
                .bind(key_json)
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query(
                "INSERT INTO remote_device_lists (user_id, stream_id, stale, updated_ts, cached_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (user_id) DO UPDATE SET \
                 stream_id = CASE WHEN remote_device_lists.stream_id > excluded.stream_id \
                 THEN remote_device_lists.stream_id ELSE excluded.stream_id END, \
                 stale = excluded.stale, updated_ts = excluded.updated_ts, cached_at = excluded.cached_at",
            )
            .bind(user_id)
            .bind(list.stream_id)
            .bind(!fresh)
            .bind(now)
            .bind(cached_at)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            fresh
        });
        Ok(fresh)
    }

    /// Applies an `m.device_list_update` to the cached list when it follows on from it (every
    /// `prev_id` at or below the cached stream id, and the list fresh); otherwise marks the list
    /// stale at its stream id. One transaction.
    pub async fn apply_remote_device_update(
        &self,
        update: &RemoteDeviceUpdate<'_>,
        now: i64,
    ) -> Result<RemoteUpdateOutcome, StoreError> {
        let outcome = with_pool!(self, pool => {
            let mut tx = pool.begin_write(&self.write_gate).await?;
            let row: Option<(i64, bool, Option<i64>)> = sqlx::query_as(
                "SELECT stream_id, stale, cached_at FROM remote_device_lists WHERE user_id = $1",
            )
            .bind(update.user_id)
            .fetch_optional(&mut *tx)
            .await?;
            let outcome = match row {
                Some((stream_id, _, _)) if update.stream_id <= stream_id => RemoteUpdateOutcome::Old,
                Some((stream_id, false, Some(_)))
                    if !update.prev_ids.is_empty()
                        && update.prev_ids.iter().all(|prev| *prev <= stream_id) =>
                {
                    RemoteUpdateOutcome::Applied
                }
                Some((_, _, cached_at)) => RemoteUpdateOutcome::Gap {
                    had_cache: cached_at.is_some(),
                },
                None => RemoteUpdateOutcome::Gap { had_cache: false },
            };
            match outcome {
                RemoteUpdateOutcome::Old => {}
                RemoteUpdateOutcome::Applied => {
                    if update.deleted {
                        sqlx::query("DELETE FROM remote_devices WHERE user_id = $1 AND device_id = $2")
                            .bind(update.user_id)
                            .bind(update.device_id)
                            .execute(&mut *tx)
                            .await?;
                    } else {
                        sqlx::query(
                            "INSERT INTO remote_devices (user_id, device_id, keys_json, display_name) \
                             VALUES ($1, $2, $3, $4) ON CONFLICT (user_id, device_id) DO UPDATE SET \
                             keys_json = excluded.keys_json, display_name = excluded.display_name",
                        )
                        .bind(update.user_id)
                        .bind(update.device_id)
                        .bind(update.keys_json)
                        .bind(update.display_name)
                        .execute(&mut *tx)
                        .await?;
                    }
                    sqlx::query(
                        "UPDATE remote_device_lists SET stream_id = $2, updated_ts = $3 WHERE user_id = $1",
                    )
                    .bind(update.user_id)
                    .bind(update.stream_id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                RemoteUpdateOutcome::Gap { .. } => {
                    sqlx::query(
                        "INSERT INTO remote_device_lists (user_id, stream_id, stale, updated_ts) VALUES ($1, $2, TRUE, $3) \
                         ON CONFLICT (user_id) DO UPDATE SET stream_id = excluded.stream_id, stale = TRUE, \
                         updated_ts = excluded.updated_ts",
                    )
                    .bind(update.user_id)
                    .bind(update.stream_id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            tx.commit().await?;
            outcome
        });
        Ok(outcome)
    }

    /// Applies an `m.signing_key_update` (`(type, JSON)` of the keys it carries) to a fresh
    /// cached list; otherwise marks the list stale. Returns whether it was applied.
    pub async fn apply_remote_signing_keys(
        &self,
        user_id: &str,
        keys: &[(&str, String)],
        now: i64,
    ) -> Result<bool, StoreError> {
        let applied = with_pool!(self, pool => {
            let mut tx = pool.begin_write(&self.write_gate).await?;
            let row: Option<(bool, Option<i64>)> = sqlx::query_as(
                "SELECT stale, cached_at FROM remote_device_lists WHERE user_id = $1",
            )
            .bind(user_id)
            .fetch_optional(&mut *tx)
            .await?;
            let applied = matches!(row, Some((false, Some(_))));
            if applied {
                for (key_type, key_json) in keys {
                    sqlx::query(
                        "INSERT INTO remote_cross_signing_keys (user_id, key_type, key_json) VALUES ($1, $2, $3) \
                         ON CONFLICT (user_id, key_type) DO UPDATE SET key_json = excluded.key_json",
                    )
                    .bind(user_id)
                    .bind(*key_type)
                    .bind(key_json)
                    .execute(&mut *tx)
                    .await?;
                }
                sqlx::query("UPDATE remote_device_lists SET updated_ts = $2 WHERE user_id = $1")
                    .bind(user_id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            } else {
                sqlx::query(
                    "INSERT INTO remote_device_lists (user_id, stream_id, stale, updated_ts) VALUES ($1, 0, TRUE, $2) \
                     ON CONFLICT (user_id) DO UPDATE SET stale = TRUE, updated_ts = excluded.updated_ts",
                )
                .bind(user_id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            applied
        });
        Ok(applied)
    }

    /// Drops the cached list of a remote user (this server shares no room with them any more):
    /// their devices and keys, and the mark that anything is cached.
    pub async fn forget_remote_device_list(&self, user_id: &str) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            let mut tx = pool.begin_write(&self.write_gate).await?;
            sqlx::query("DELETE FROM remote_devices WHERE user_id = $1")
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM remote_cross_signing_keys WHERE user_id = $1")
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE remote_device_lists SET cached_at = NULL, stale = TRUE WHERE user_id = $1")
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        StoreOptions,
        test_support::{TestDatabase, test_backends},
    };

    fn update<'a>(stream_id: i64, prev_ids: &'a [i64], device: &'a str) -> RemoteDeviceUpdate<'a> {
        RemoteDeviceUpdate {
            user_id: "@bob:b.test",
            device_id: device,
            stream_id,
            prev_ids,
            deleted: false,
            keys_json: Some("{\"k\":1}"),
            display_name: None,
        }
    }

    async fn cached(store: &Store) -> Vec<String> {
        store
            .remote_cached_devices(&["@bob:b.test"])
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.device_id)
            .collect()
    }

    #[tokio::test]
    async fn updates_apply_only_when_they_follow_on_from_the_cached_list() {
        for kind in test_backends() {
            let db = TestDatabase::create(kind).await;
            let store = Store::open(&db.url, &StoreOptions::default())
                .await
                .unwrap();
            let bob = "@bob:b.test";
            // Nothing cached: a gap, the list stale at the update's stream id.
            let outcome = store
                .apply_remote_device_update(&update(5, &[4], "A"), 1)
                .await
                .unwrap();
            assert_eq!(outcome, RemoteUpdateOutcome::Gap { had_cache: false });
            let state = store.remote_list_state(bob).await.unwrap().unwrap();
            assert!(!state.fresh() && state.stream_id == 5, "{kind:?}");

            // Filled from a fetch that nothing overtook: fresh.
            let list = FetchedDeviceList {
                stream_id: 5,
                devices: vec![("A".to_owned(), Some("{}".to_owned()), None)],
                cross_signing: vec![("master".to_owned(), "{\"m\":1}".to_owned())],
            };
            let seen = Some(state.updated_ts);
            assert!(
                store
                    .fill_remote_device_list(bob, &list, 10, seen, 2)
                    .await
                    .unwrap()
            );
            let state = store.remote_list_state(bob).await.unwrap().unwrap();
            assert!(state.fresh() && state.cached_at == Some(10), "{kind:?}");

            // Following on (prev 5): applied; an old or repeated one changes nothing.
            let outcome = store
                .apply_remote_device_update(&update(6, &[5], "B"), 3)
                .await
                .unwrap();
            assert_eq!(outcome, RemoteUpdateOutcome::Applied, "{kind:?}");
            assert_eq!(cached(&store).await, ["A", "B"]);
            let outcome = store
                .apply_remote_device_update(&update(6, &[5], "C"), 4)
                .await
                .unwrap();
            assert_eq!(outcome, RemoteUpdateOutcome::Old);
            let deleted = RemoteDeviceUpdate {
                deleted: true,
                ..update(7, &[6], "A")
            };
            assert_eq!(
                store.apply_remote_device_update(&deleted, 5).await.unwrap(),
                RemoteUpdateOutcome::Applied
            );
            assert_eq!(cached(&store).await, ["B"], "{kind:?}");

            // A prev id never seen: a gap; the cache is stale until fetched again.
            let outcome = store
                .apply_remote_device_update(&update(9, &[8], "D"), 6)
                .await
                .unwrap();
            assert_eq!(outcome, RemoteUpdateOutcome::Gap { had_cache: true });
            assert_eq!(cached(&store).await, ["B"], "{kind:?}: not applied");
            let state = store.remote_list_state(bob).await.unwrap().unwrap();
            assert!(!state.fresh(), "{kind:?}");

            // A fetch overtaken by an announcement is stored stale.
            let older = FetchedDeviceList {
                stream_id: 8,
                ..list.clone()
            };
            assert!(
                !store
                    .fill_remote_device_list(bob, &older, 11, Some(state.updated_ts - 1), 7)
                    .await
                    .unwrap()
            );
            let state = store.remote_list_state(bob).await.unwrap().unwrap();
            assert!(state.stale && state.stream_id == 9, "{kind:?}: {state:?}");

            // Signing keys apply to a fresh list only.
            assert!(
                !store
                    .apply_remote_signing_keys(bob, &[("master", "{\"m\":2}".to_owned())], 8)
                    .await
                    .unwrap()
            );
            assert!(
                store
                    .fill_remote_device_list(bob, &list, 12, Some(8), 9)
                    .await
                    .unwrap()
            );
            assert!(
                store
                    .apply_remote_signing_keys(bob, &[("master", "{\"m\":2}".to_owned())], 10)
                    .await
                    .unwrap()
            );
            assert_eq!(
                store.remote_cached_cross_signing(bob).await.unwrap(),
                [("master".to_owned(), "{\"m\":2}".to_owned())],
                "{kind:?}"
            );

            // Forgotten: nothing cached.
            store.forget_remote_device_list(bob).await.unwrap();
            assert!(cached(&store).await.is_empty());
            assert!(
                store
                    .remote_cached_cross_signing(bob)
                    .await
                    .unwrap()
                    .is_empty()
            );
            let state = store.remote_list_state(bob).await.unwrap().unwrap();
            assert_eq!(state.cached_at, None, "{kind:?}");
            store.close().await;
        }
    }
}
