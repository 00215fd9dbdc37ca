//! Per-user data that needs no room: filters, account data (global and per room) with its
//! stream position, and the profiles of local users. JSON is stored as text; checking its shape
//! is the service layer's job.

use sqlx::Row;

use crate::store::BeginWrite;
use crate::{Store, StoreError, with_pool};

/// The `room_id` column value of global account data.
const GLOBAL: &str = "";

/// One account data entry as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountDataRow {
    /// `None` for global account data.
    pub room_id: Option<String>,
    pub data_type: String,
    /// The content, JSON text.
    pub content: String,
    /// Where this write sits on the account data stream.
    pub stream_position: i64,
}

/// A local user's profile. `None` fields are not set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfileRow {
    pub displayname: Option<String>,
    pub avatar_url: Option<String>,
}

/// One field of a profile, with its new value (`None` removes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileField<'a> {
    Displayname(Option<&'a str>),
    AvatarUrl(Option<&'a str>),
}

impl Store {
    /// Stores a filter for `user_id` and returns its id. Uploading a filter the user already
    /// has returns the existing id, so clients that upload the same filter on every start do
    /// not grow the table.
    pub async fn create_filter(&self, user_id: &str, filter_json: &str) -> Result<i64, StoreError> {
        let id = with_pool!(self, pool => {
            let mut tx = pool.begin_write(&self.write_gate).await?;
            let existing: Option<i64> = sqlx::query_scalar(
                "SELECT filter_id FROM filters WHERE user_id = $1 AND filter_json = $2 \
                 ORDER BY filter_id LIMIT 1",
            )
            .bind(user_id)
            .bind(filter_json)
            .fetch_optional(&mut *tx)
            .await?;
            let id = match existing {
                Some(id) => id,
                None => {
                    sqlx::query_scalar(
                        "INSERT INTO filters (user_id, filter_json) VALUES ($1, $2) \
                         RETURNING filter_id",
                    )
                    .bind(user_id)
                    .bind(filter_json)
                    .fetch_one(&mut *tx)
                    .await?
                }
            };
            tx.commit().await?;
            id
        });
        Ok(id)
    }

    /// The JSON of one of `user_id`'s filters.
    pub async fn filter(
        &self,
        user_id: &str,
        filter_id: i64,
    ) -> Result<Option<String>, StoreError> {
        let json = with_pool!(self, pool => {
            sqlx::query_scalar(
                "SELECT filter_json FROM filters WHERE user_id = $1 AND filter_id = $2",
            )
            .bind(user_id)
            .bind(filter_id)
            .fetch_optional(pool)
            .await?
        });
        Ok(json)
    }

    /// Stores account data (global when `room_id` is `None`), replacing what was there, and
    /// returns the stream position of the write.
    pub async fn set_account_data(
        &self,
        user_id: &str,
        room_id: Option<&str>,
        data_type: &str,
        content: &str,
    ) -> Result<i64, StoreError> {
        let position = with_pool!(self, pool => {
            let mut tx = pool.begin_write(&self.write_gate).await?;
            // Taking the next position locks the counter row until commit, which orders writers.
            let position: i64 = sqlx::query_scalar(
                "UPDATE account_data_stream SET position = position + 1 RETURNING position",
            )
            .fetch_one(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO account_data (user_id, room_id, data_type, content, stream_position) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (user_id, room_id, data_type) DO UPDATE \
                 SET content = excluded.content, stream_position = excluded.stream_position",
            )
            .bind(user_id)
            .bind(room_id.unwrap_or(GLOBAL))
            .bind(data_type)
            .bind(content)
            .bind(position)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            position
        });
        self.hot_account_data.invalidate();
        Ok(position)
    }

    /// [`Store::account_data`] of a global entry, cached in the process (see `cache`): for
    /// entries read on hot paths, such as the ignored-users list every visibility check reads.
    pub async fn global_account_data_cached(
        &self,
        user_id: &str,
        data_type: &str,
    ) -> Result<Option<String>, StoreError> {
        let key = (user_id.to_owned(), data_type.to_owned());
        let started = match self.hot_account_data.get(&key) {
            Ok(content) => return Ok(content),
            Err(started) => started,
        };
        let content = self.account_data(user_id, None, data_type).await?;
        self.hot_account_data.fill(started, key, content.clone());
        Ok(content)
    }

    /// The content of one account data entry (global when `room_id` is `None`).
    pub async fn account_data(
        &self,
        user_id: &str,
        room_id: Option<&str>,
        data_type: &str,
    ) -> Result<Option<String>, StoreError> {
        let content = with_pool!(self, pool => {
            sqlx::query_scalar(
                "SELECT content FROM account_data \
                 WHERE user_id = $1 AND room_id = $2 AND data_type = $3",
            )
            .bind(user_id)
            .bind(room_id.unwrap_or(GLOBAL))
            .bind(data_type)
            .fetch_optional(pool)
            .await?
        });
        Ok(content)
    }

    /// The global account data of one type for each of the users who have it:
    /// `(user_id, stream_position, content)`. The position changes with every write, so callers
    /// may cache what they derive from the content by it.
    pub async fn global_account_data_of(
        &self,
        user_ids: &[&str],
        data_type: &str,
    ) -> Result<Vec<(String, i64, String)>, StoreError> {
        let mut out = Vec::new();
        for chunk in user_ids.chunks(256) {
            let list: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 3)).collect();
            let sql = format!(
                "SELECT user_id, stream_position, content FROM account_data \
                 WHERE room_id = $1 AND data_type = $2 AND user_id IN ({})",
                list.join(", ")
            );
            let rows = with_pool!(self, pool => {
                let mut query = sqlx::query_as::<_, (String, i64, String)>(sqlx::AssertSqlSafe(sql.clone()))
                    .bind(GLOBAL)
                    .bind(data_type);
                for user in chunk {
                    query = query.bind(*user);
                }
                query.fetch_all(pool).await?
            });
            out.extend(rows);
        }
        Ok(out)
    }

    /// Every account data entry of `user_id` written after stream position `since` (0 for
    /// all), oldest write first. Each entry appears once, with its latest content.
    pub async fn account_data_since(
        &self,
        user_id: &str,
        since: i64,
    ) -> Result<Vec<AccountDataRow>, StoreError> {
        let rows = with_pool!(self, pool => {
            sqlx::query(
                "SELECT room_id, data_type, content, stream_position FROM account_data \
                 WHERE user_id = $1 AND stream_position > $2 ORDER BY stream_position",
            )
            .bind(user_id)
            .bind(since)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|row| {
                let room_id: String = row.try_get("room_id")?;
                Ok(AccountDataRow {
                    room_id: (room_id != GLOBAL).then_some(room_id),
                    data_type: row.try_get("data_type")?,
                    content: row.try_get("content")?,
                    stream_position: row.try_get("stream_position")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
        })?;
        Ok(rows)
    }

    /// The latest position of the account data stream (0 before the first write).
    pub async fn account_data_stream_position(&self) -> Result<i64, StoreError> {
        let position = with_pool!(self, pool => {
            sqlx::query_scalar("SELECT position FROM account_data_stream")
                .fetch_one(pool)
                .await?
        });
        Ok(position)
    }

    /// Creates a new account's profile with a display name (registration calls this).
    pub async fn create_profile(&self, user_id: &str, displayname: &str) -> Result<(), StoreError> {
        self.set_displayname(user_id, Some(displayname)).await
    }

    /// A local user's profile; `None` when the user has none stored.
    pub async fn profile(&self, user_id: &str) -> Result<Option<ProfileRow>, StoreError> {
        let row = with_pool!(self, pool => {
            match sqlx::query("SELECT displayname, avatar_url FROM profiles WHERE user_id = $1")
                .bind(user_id)
                .fetch_optional(pool)
                .await?
            {
                Some(row) => Some(ProfileRow {
                    displayname: row.try_get("displayname")?,
                    avatar_url: row.try_get("avatar_url")?,
                }),
                None => None,
            }
        });
        Ok(row)
    }

    /// Sets a local user's display name, leaving the avatar alone.
    pub async fn set_displayname(
        &self,
        user_id: &str,
        displayname: Option<&str>,
    ) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO profiles (user_id, displayname) VALUES ($1, $2) \
                 ON CONFLICT (user_id) DO UPDATE SET displayname = excluded.displayname",
            )
            .bind(user_id)
            .bind(displayname)
            .execute(pool)
            .await
            .map(|_| ())
        })?;
        Ok(())
    }

    /// Sets (or, with `None`, removes) one field of a local user's profile and journals the
    /// fan-out of the change into the user's rooms, in one transaction. Returns the operation id.
    pub async fn set_profile_with_operation(
        &self,
        user_id: &str,
        field: ProfileField<'_>,
        operation: &crate::NewOperation<'_>,
    ) -> Result<i64, StoreError> {
        let (sql, value) = match field {
            ProfileField::Displayname(value) => (
                "INSERT INTO profiles (user_id, displayname) VALUES ($1, $2) \
                 ON CONFLICT (user_id) DO UPDATE SET displayname = excluded.displayname",
                value,
            ),
            ProfileField::AvatarUrl(value) => (
                "INSERT INTO profiles (user_id, avatar_url) VALUES ($1, $2) \
                 ON CONFLICT (user_id) DO UPDATE SET avatar_url = excluded.avatar_url",
                value,
            ),
        };
        let operation_id = with_pool!(self, pool => {
            let mut tx = pool.begin_write(&self.write_gate).await?;
            sqlx::query(sql)
                .bind(user_id)
                .bind(value)
                .execute(&mut *tx)
                .await?;
            let operation_id = crate::operations::begin_operation!(tx, operation);
            tx.commit().await?;
            operation_id
        });
        Ok(operation_id)
    }

    /// Sets a local user's avatar URL, leaving the display name alone.
    pub async fn set_avatar_url(
        &self,
        user_id: &str,
        avatar_url: Option<&str>,
    ) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO profiles (user_id, avatar_url) VALUES ($1, $2) \
                 ON CONFLICT (user_id) DO UPDATE SET avatar_url = excluded.avatar_url",
            )
            .bind(user_id)
            .bind(avatar_url)
            .execute(pool)
            .await
            .map(|_| ())
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::{
        Store, StoreOptions,
        test_support::{TestDatabase, create_test_user, test_backends},
    };

    #[tokio::test]
    async fn account_data_changes_since_a_position() {
        for kind in test_backends() {
            let db = TestDatabase::create(kind).await;
            let store = Store::open(&db.url, &StoreOptions::default())
                .await
                .unwrap();
            let alice = create_test_user(&store, "alice").await;
            let bob = create_test_user(&store, "bob").await;
            assert_eq!(store.account_data_stream_position().await.unwrap(), 0);

            let p1 = store
                .set_account_data(&alice, None, "a", "{}")
                .await
                .unwrap();
            let p2 = store.set_account_data(&bob, None, "a", "{}").await.unwrap();
            let p3 = store
                .set_account_data(&alice, Some("!r:test"), "a", r#"{"x":1}"#)
                .await
                .unwrap();
            assert!(
                p1 < p2 && p2 < p3,
                "{kind:?}: positions increase across users"
            );
            assert_eq!(store.account_data_stream_position().await.unwrap(), p3);

            let all = store.account_data_since(&alice, 0).await.unwrap();
            assert_eq!(all.len(), 2, "{kind:?}");
            assert_eq!(
                (all[0].room_id.as_deref(), all[0].stream_position),
                (None, p1)
            );
            assert_eq!(all[1].room_id.as_deref(), Some("!r:test"));
            assert_eq!(all[1].content, r#"{"x":1}"#);

            // Rewriting an entry moves it to the new position, once.
            let p4 = store
                .set_account_data(&alice, None, "a", r#"{"v":2}"#)
                .await
                .unwrap();
            let since = store.account_data_since(&alice, p3).await.unwrap();
            assert_eq!(since.len(), 1);
            assert_eq!(
                (since[0].stream_position, since[0].content.as_str()),
                (p4, r#"{"v":2}"#)
            );
            assert!(
                store
                    .account_data_since(&alice, p4)
                    .await
                    .unwrap()
                    .is_empty()
            );
            assert_eq!(
                store
                    .account_data(&alice, None, "a")
                    .await
                    .unwrap()
                    .as_deref(),
                Some(r#"{"v":2}"#)
            );
            assert_eq!(
                store
                    .account_data(&alice, Some("!other:test"), "a")
                    .await
                    .unwrap(),
                None
            );
            store.close().await;
        }
    }

    #[tokio::test]
    async fn concurrent_writes_get_distinct_positions() {
        for kind in test_backends() {
            let db = TestDatabase::create(kind).await;
            let store = Store::open(&db.url, &StoreOptions::default())
                .await
                .unwrap();
            let alice = create_test_user(&store, "alice").await;
            let writes = (0..20).map(|i| {
                let store = store.clone();
                let alice = alice.clone();
                tokio::spawn(async move {
                    store
                        .set_account_data(&alice, None, &format!("t{i}"), "{}")
                        .await
                        .unwrap()
                })
            });
            let mut positions = Vec::new();
            for write in writes {
                positions.push(write.await.unwrap());
            }
            positions.sort_unstable();
            positions.dedup();
            assert_eq!(positions.len(), 20, "{kind:?}");
            assert_eq!(store.account_data_since(&alice, 0).await.unwrap().len(), 20);
            store.close().await;
        }
    }
}
