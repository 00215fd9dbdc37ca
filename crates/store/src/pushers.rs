//! Pushers: where each local user's push notifications go, keyed by `(user_id, app_id,
//! pushkey)`, and the total unread count a notification carries. The `data` object is stored as
//! JSON text; checking its shape is the service layer's job.

use sqlx::Row;

use crate::store::BeginWrite;
use crate::{Store, StoreError, with_pool};

/// Pushers whose `user_id` is bound per statement when reading many users' pushers.
const USERS_PER_STATEMENT: usize = 256;

/// One pusher as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PusherRow {
    pub user_id: String,
    pub app_id: String,
    pub pushkey: String,
    pub kind: String,
    pub app_display_name: String,
    pub device_display_name: String,
    pub profile_tag: Option<String>,
    pub lang: String,
    /// The `data` object, JSON text.
    pub data: String,
    /// The device that set it; its deletion deletes the pusher.
    pub device_id: Option<String>,
    /// When the pushkey was last set, in milliseconds.
    pub created_ts: i64,
}

const PUSHER_COLUMNS: &str = "user_id, app_id, pushkey, kind, app_display_name, \
     device_display_name, profile_tag, lang, data, device_id, created_ts";

fn pusher_from_row<R: Row>(row: &R) -> Result<PusherRow, sqlx::Error>
where
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'v> String: sqlx::Decode<'v, R::Database> + sqlx::Type<R::Database>,
    for<'v> Option<String>: sqlx::Decode<'v, R::Database> + sqlx::Type<R::Database>,
    for<'v> i64: sqlx::Decode<'v, R::Database> + sqlx::Type<R::Database>,
{
    Ok(PusherRow {
        user_id: row.try_get("user_id")?,
        app_id: row.try_get("app_id")?,
        pushkey: row.try_get("pushkey")?,
        kind: row.try_get("kind")?,
        app_display_name: row.try_get("app_display_name")?,
        device_display_name: row.try_get("device_display_name")?,
        profile_tag: row.try_get("profile_tag")?,
        lang: row.try_get("lang")?,
        data: row.try_get("data")?,
        device_id: row.try_get("device_id")?,
        created_ts: row.try_get("created_ts")?,
    })
}

impl Store {
    /// Inserts a pusher or replaces the one with the same `(user_id, app_id, pushkey)`. Unless
    /// `append`, the same `(app_id, pushkey)` is removed from every other user in the same
    /// transaction (the spec's default: a pushkey belongs to one user).
    pub async fn set_pusher(&self, pusher: &PusherRow, append: bool) -> Result<(), StoreError> {
        let result = self.write_pusher(pusher, append).await;
        // Once the write is over (a failed one changed nothing; see `cache`).
        self.pusher_users.invalidate();
        result
    }

    async fn write_pusher(&self, pusher: &PusherRow, append: bool) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            let mut tx = pool.begin_write(&self.write_gate).await?;
            if !append {
                sqlx::query(
                    "DELETE FROM pushers WHERE app_id = $1 AND pushkey = $2 AND user_id <> $3",
                )
                .bind(&pusher.app_id)
                .bind(&pusher.pushkey)
                .bind(&pusher.user_id)
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query(
                "INSERT INTO pushers (user_id, app_id, pushkey, kind, app_display_name, \
                 device_display_name, profile_tag, lang, data, device_id, created_ts) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
                 ON CONFLICT (user_id, app_id, pushkey) DO UPDATE SET \
                 kind = excluded.kind, app_display_name = excluded.app_display_name, \
                 device_display_name = excluded.device_display_name, \
                 profile_tag = excluded.profile_tag, lang = excluded.lang, data = excluded.data, \
                 device_id = excluded.device_id, created_ts = excluded.created_ts",
            )
            .bind(&pusher.user_id)
            .bind(&pusher.app_id)
            .bind(&pusher.pushkey)
            .bind(&pusher.kind)
            .bind(&pusher.app_display_name)
            .bind(&pusher.device_display_name)
            .bind(&pusher.profile_tag)
            .bind(&pusher.lang)
            .bind(&pusher.data)
            .bind(&pusher.device_id)
            .bind(pusher.created_ts)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Deletes one of `user_id`'s pushers; whether there was one.
    pub async fn delete_pusher(
        &self,
        user_id: &str,
        app_id: &str,
        pushkey: &str,
    ) -> Result<bool, StoreError> {
        let result = with_pool!(self, pool => {
            sqlx::query("DELETE FROM pushers WHERE user_id = $1 AND app_id = $2 AND pushkey = $3")
                .bind(user_id)
                .bind(app_id)
                .bind(pushkey)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        });
        self.pusher_users.invalidate();
        Ok(result? > 0)
    }

    /// A user's pushers, oldest first.
    pub async fn pushers(&self, user_id: &str) -> Result<Vec<PusherRow>, StoreError> {
        let sql = format!(
            "SELECT {PUSHER_COLUMNS} FROM pushers WHERE user_id = $1 \
             ORDER BY created_ts, app_id, pushkey"
        );
        let rows = with_pool!(self, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(user_id)
                .fetch_all(pool)
                .await?
                .iter()
                .map(pusher_from_row)
                .collect::<Result<Vec<_>, sqlx::Error>>()
        })?;
        Ok(rows)
    }

    /// Whether every one of these users is known (cached) to have no http pushers: then
    /// [`Store::http_pushers_of`] would answer nothing without asking the database.
    pub fn known_without_pushers(&self, user_ids: &[&str]) -> bool {
        user_ids
            .iter()
            .all(|user| matches!(self.pusher_users.get(*user), Ok(false)))
    }

    /// The `http` pushers of any of `user_ids`.
    pub async fn http_pushers_of(&self, user_ids: &[&str]) -> Result<Vec<PusherRow>, StoreError> {
        // Most users have no pushers (web clients), and every notifying event asks: users known
        // to have none are not asked about again until a pusher or device changes.
        let mut started = None;
        let mut to_read = Vec::new();
        for user in user_ids {
            match self.pusher_users.get(*user) {
                Ok(false) => {}
                Ok(true) => to_read.push(*user),
                Err(generation) => {
                    started.get_or_insert(generation);
                    to_read.push(*user);
                }
            }
        }
        let mut out = Vec::new();
        for chunk in to_read.chunks(USERS_PER_STATEMENT) {
            let list: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 1)).collect();
            let sql = format!(
                "SELECT {PUSHER_COLUMNS} FROM pushers WHERE kind = 'http' AND user_id IN ({})",
                list.join(", ")
            );
            let rows = with_pool!(self, pool => {
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.clone()));
                for user in chunk {
                    query = query.bind(*user);
                }
                query
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(pusher_from_row)
                    .collect::<Result<Vec<_>, sqlx::Error>>()
            })?;
            out.extend(rows);
        }
        if let Some(started) = started {
            for user in to_read {
                let has = out.iter().any(|p| p.user_id == user);
                self.pusher_users.fill(started, user.to_owned(), has);
            }
        }
        Ok(out)
    }

    /// A user's unread notifications over every room they are joined to (the push gateway's
    /// `counts.unread`): notifying events after their read position in each room.
    pub async fn unread_notifications_total(&self, user_id: &str) -> Result<i64, StoreError> {
        let read_position = crate::rooms::read_position_sql(self.kind(), "a.room_nid", "$1");
        let sql = format!(
            "SELECT COUNT(*) FROM event_push_actions a \
             JOIN events e ON e.event_nid = a.event_nid AND {} \
             WHERE a.user_id = $1 AND a.notify \
             AND a.room_nid IN (SELECT m.room_nid FROM room_memberships m \
                                WHERE m.user_id = $1 AND m.membership = 'join') \
             AND a.stream_ordering > {read_position}",
            crate::rooms::IN_TIMELINE
        );
        let total = with_pool!(self, pool => {
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.clone()))
                .bind(user_id)
                .fetch_one(pool)
                .await?
        });
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::PusherRow;
    use crate::{
        NewSession, Store, StoreOptions,
        test_support::{TestDatabase, create_test_user, test_backends},
    };

    /// A user with a session on device `DEV` (pushers belong to a device).
    async fn user(store: &Store, localpart: &str) -> String {
        let user_id = create_test_user(store, localpart).await;
        store
            .create_session(&NewSession {
                user_id: &user_id,
                device_id: "DEV",
                display_name: None,
                access_token_hash: localpart.as_bytes(),
                expires_ts: None,
                refresh_token_hash: None,
                now: 0,
            })
            .await
            .unwrap()
            .unwrap();
        user_id
    }

    fn pusher(user_id: &str, pushkey: &str, url: &str) -> PusherRow {
        PusherRow {
            user_id: user_id.to_owned(),
            app_id: "app".to_owned(),
            pushkey: pushkey.to_owned(),
            kind: "http".to_owned(),
            app_display_name: "App".to_owned(),
            device_display_name: "Phone".to_owned(),
            profile_tag: None,
            lang: "en".to_owned(),
            data: format!(r#"{{"url":"{url}"}}"#),
            device_id: Some("DEV".to_owned()),
            created_ts: 1,
        }
    }

    #[tokio::test]
    async fn set_replace_append_delete_and_device_cascade() {
        for kind in test_backends() {
            let db = TestDatabase::create(kind).await;
            let store = Store::open(&db.url, &StoreOptions::default())
                .await
                .unwrap();
            let alice = user(&store, "alice").await;
            let bob = user(&store, "bob").await;
            // Nobody has pushers yet (and the store remembers it): a new pusher still shows.
            assert!(
                store
                    .http_pushers_of(&[&alice, &bob])
                    .await
                    .unwrap()
                    .is_empty()
            );
            assert!(store.known_without_pushers(&[&alice, &bob]), "{kind:?}");

            store
                .set_pusher(&pusher(&alice, "k1", "a"), false)
                .await
                .unwrap();
            assert!(
                !store.known_without_pushers(&[&alice]),
                "{kind:?}: forgotten"
            );
            assert!(
                !store.known_without_pushers(&[&bob]),
                "{kind:?}: all forgotten"
            );
            // Same key: replaced, not duplicated.
            store
                .set_pusher(&pusher(&alice, "k1", "b"), false)
                .await
                .unwrap();
            let rows = store.pushers(&alice).await.unwrap();
            assert_eq!(rows, vec![pusher(&alice, "k1", "b")], "{kind:?}");

            // Bob appends the same key: both keep it.
            store
                .set_pusher(&pusher(&bob, "k1", "c"), true)
                .await
                .unwrap();
            assert_eq!(store.pushers(&alice).await.unwrap().len(), 1);
            let both = store.http_pushers_of(&[&alice, &bob]).await.unwrap();
            assert_eq!(both.len(), 2);
            // Without append, the key leaves every other user.
            store
                .set_pusher(&pusher(&bob, "k1", "d"), false)
                .await
                .unwrap();
            assert!(store.pushers(&alice).await.unwrap().is_empty(), "{kind:?}");
            assert_eq!(store.pushers(&bob).await.unwrap().len(), 1);

            assert!(store.delete_pusher(&bob, "app", "k1").await.unwrap());
            assert!(!store.delete_pusher(&bob, "app", "k1").await.unwrap());

            // Deleting the device deletes its pushers.
            store
                .set_pusher(&pusher(&alice, "k3", "f"), false)
                .await
                .unwrap();
            assert_eq!(store.http_pushers_of(&[&alice]).await.unwrap().len(), 1);
            assert!(store.delete_device(&alice, "DEV").await.unwrap());
            assert!(store.pushers(&alice).await.unwrap().is_empty(), "{kind:?}");
            assert!(
                store.http_pushers_of(&[&alice]).await.unwrap().is_empty(),
                "{kind:?}: the device's deletion reached the users-with-pushers cache"
            );
            assert_eq!(store.unread_notifications_total(&alice).await.unwrap(), 0);
            store.close().await;
        }
    }
}
