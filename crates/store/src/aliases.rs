//! Room aliases on this server and the room directory: which alias points at which room, who
//! created it, whether a room is published, and the published rooms with the state the
//! directory shows.

use std::collections::HashMap;

use sqlx::Row;

use crate::store::BeginWrite;
use crate::{Store, StoreError, with_pool};

/// A local alias as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AliasRow {
    pub alias: String,
    pub room_nid: i64,
    pub room_id: String,
    pub creator: String,
}

/// A room published in the directory, with its joined member count and the current state events
/// (empty state key) of the types asked for, as `type → event JSON`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedRoom {
    pub room_nid: i64,
    pub room_id: String,
    pub joined_members: i64,
    pub state: HashMap<String, String>,
}

/// Points alias `$1` at room `$2` (`$3` creator, `$4` time) unless it is taken: the alias when
/// it was free, no row when taken.
pub(crate) const ALIAS_INSERT: &str = "INSERT INTO room_aliases (alias, room_nid, creator, created_ts) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (alias) DO NOTHING RETURNING alias";

impl Store {
    /// Points `alias` at a room. Returns `false`, changing nothing, if the alias is taken.
    pub async fn create_alias(
        &self,
        alias: &str,
        room_nid: i64,
        creator: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let created = with_pool!(self, pool => {
            sqlx::query_scalar::<_, String>(ALIAS_INSERT)
            .bind(alias)
            .bind(room_nid)
            .bind(creator)
            .bind(now)
            .fetch_optional(pool)
            .await
        })?;
        Ok(created.is_some())
    }

    /// The room an alias points at.
    pub async fn alias(&self, alias: &str) -> Result<Option<AliasRow>, StoreError> {
        let row = with_pool!(self, pool => {
            match sqlx::query(
                "SELECT a.alias, a.room_nid, r.room_id, a.creator FROM room_aliases a \
                 JOIN rooms r ON r.room_nid = a.room_nid WHERE a.alias = $1",
            )
            .bind(alias)
            .fetch_optional(pool)
            .await?
            {
                Some(row) => Some(AliasRow {
                    alias: row.try_get("alias")?,
                    room_nid: row.try_get("room_nid")?,
                    room_id: row.try_get("room_id")?,
                    creator: row.try_get("creator")?,
                }),
                None => None,
            }
        });
        Ok(row)
    }

    /// Removes an alias. Returns whether it existed.
    pub async fn delete_alias(&self, alias: &str) -> Result<bool, StoreError> {
        let deleted = with_pool!(self, pool => {
            sqlx::query("DELETE FROM room_aliases WHERE alias = $1")
                .bind(alias)
                .execute(pool)
                .await
                .map(|done| done.rows_affected() > 0)
        })?;
        Ok(deleted)
    }

    /// The local aliases of a room, sorted.
    pub async fn room_aliases(&self, room_nid: i64) -> Result<Vec<String>, StoreError> {
        let aliases = with_pool!(self, pool => {
            sqlx::query_scalar::<_, String>(
                "SELECT alias FROM room_aliases WHERE room_nid = $1 ORDER BY alias",
            )
            .bind(room_nid)
            .fetch_all(pool)
            .await
        })?;
        Ok(aliases)
    }

    /// A room upgrade's directory move, in one transaction: every local alias of the room
    /// `from_nid` now points at `to_nid`, and if `from_nid` was published, `to_nid` is published
    /// in its place and `from_nid` withdrawn. Returns the moved aliases, sorted, and whether the
    /// publication moved.
    pub async fn move_directory_entries(
        &self,
        from_nid: i64,
        to_nid: i64,
    ) -> Result<(Vec<String>, bool), StoreError> {
        let moved = with_pool!(self, pool => {
            let mut tx = pool.begin_write(&self.write_gate).await?;
            let mut aliases = sqlx::query_scalar::<_, String>(
                "UPDATE room_aliases SET room_nid = $2 WHERE room_nid = $1 RETURNING alias",
            )
            .bind(from_nid)
            .bind(to_nid)
            .fetch_all(&mut *tx)
            .await?;
            aliases.sort();
            let was_public = sqlx::query_scalar::<_, i64>(
                "UPDATE rooms SET is_public = FALSE WHERE room_nid = $1 AND is_public RETURNING room_nid",
            )
            .bind(from_nid)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
            if was_public {
                sqlx::query("UPDATE rooms SET is_public = TRUE WHERE room_nid = $1")
                    .bind(to_nid)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            (aliases, was_public)
        });
        // Cached rooms carry `is_public` (see `cache`).
        self.rooms.invalidate();
        Ok(moved)
    }

    /// Publishes a room in the directory, or withdraws it.
    pub async fn set_room_public(&self, room_nid: i64, public: bool) -> Result<(), StoreError> {
        let result = with_pool!(self, pool => {
            sqlx::query("UPDATE rooms SET is_public = $2 WHERE room_nid = $1")
                .bind(room_nid)
                .bind(public)
                .execute(pool)
                .await
                .map(|_| ())
        });
        // Cached rooms carry `is_public` (see `cache`).
        self.rooms.invalidate();
        result?;
        Ok(())
    }

    /// Every published room with its joined member count and its current state events of
    /// `state_types` (empty state key only), ordered by joined members descending, then room id.
    pub async fn published_rooms(
        &self,
        state_types: &[&str],
    ) -> Result<Vec<PublishedRoom>, StoreError> {
        let placeholders: Vec<String> = (0..state_types.len())
            .map(|i| format!("${}", i + 1))
            .collect();
        let state_sql = format!(
            "SELECT c.room_nid, c.event_type, e.json FROM rooms r \
             JOIN current_state c ON c.room_nid = r.room_nid \
             JOIN events e ON e.event_nid = c.event_nid \
             WHERE r.is_public AND c.state_key = '' AND c.event_type IN ({})",
            placeholders.join(", ")
        );
        let rooms = with_pool!(self, pool => {
            let mut rooms = Vec::new();
            // Members that name no account (keys of account-key rooms held unverified or
            // erased) are not counted: clients are never shown them.
            for row in sqlx::query(concat!(
                "SELECT r.room_nid, r.room_id, \
                 (SELECT COUNT(*) FROM room_memberships m WHERE m.room_nid = r.room_nid AND m.membership = 'join' AND ",
                crate::account_keys::member_names_an_account!("m.user_id"),
                ") AS joined FROM rooms r WHERE r.is_public ORDER BY joined DESC, r.room_id",
            ))
            .fetch_all(pool)
            .await?
            {
                rooms.push(PublishedRoom {
                    room_nid: row.try_get("room_nid")?,
                    room_id: row.try_get("room_id")?,
                    joined_members: row.try_get("joined")?,
                    state: HashMap::new(),
                });
            }
            if !state_types.is_empty() {
                let by_nid: HashMap<i64, usize> =
                    rooms.iter().enumerate().map(|(i, r)| (r.room_nid, i)).collect();
                let mut query = sqlx::query(sqlx::AssertSqlSafe(state_sql.clone()));
                for event_type in state_types {
                    query = query.bind(*event_type);
                }
                for row in query.fetch_all(pool).await? {
                    let room_nid: i64 = row.try_get("room_nid")?;
                    // A room published between the two reads is left for the next request.
                    if let Some(index) = by_nid.get(&room_nid) {
                        rooms[*index]
                            .state
                            .insert(row.try_get("event_type")?, row.try_get("json")?);
                    }
                }
            }
            rooms
        });
        Ok(rooms)
    }
}
