//! What other servers push to this one, as stored: the answers given to their transactions
//! (`/send/{txnId}`, so a retransmission gets the same answer without being processed again)
//! and remote users' device-list stream ids (`m.device_list_update`), plus the membership
//! reads the federation receiver asks before it accepts anything about a room or a user.

use crate::{Store, StoreError, with_pool};

/// `user_id`'s server is `server`: the part after the user id's first `:` is `server`. Compared
/// as a suffix, `$param` being `":" || server` (a shorter user id never matches: `substr` of it
/// is shorter than the suffix on both backends).
macro_rules! user_of_server {
    ($column:literal, $param:literal) => {
        concat!(
            "substr(",
            $column,
            ", length(",
            $column,
            ") - length(CAST(",
            $param,
            " AS TEXT)) + 1) = CAST(",
            $param,
            " AS TEXT)"
        )
    };
}
pub(crate) use user_of_server;

impl Store {
    /// The answer given to transaction `txn_id` of `origin`, if it was processed.
    pub async fn inbound_txn_response(
        &self,
        origin: &str,
        txn_id: &str,
    ) -> Result<Option<String>, StoreError> {
        let response = with_pool!(self, pool => {
            sqlx::query_scalar::<_, String>(
                "SELECT response FROM federation_inbound_txns WHERE origin = $1 AND txn_id = $2",
            )
            .bind(origin)
            .bind(txn_id)
            .fetch_optional(pool)
            .await?
        });
        Ok(response)
    }

    /// Records the answer to transaction `txn_id` of `origin` (the first answer stays).
    pub async fn record_inbound_txn(
        &self,
        origin: &str,
        txn_id: &str,
        response: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO federation_inbound_txns (origin, txn_id, response, received_ts) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (origin, txn_id) DO NOTHING",
            )
            .bind(origin)
            .bind(txn_id)
            .bind(response)
            .bind(now)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Forgets the answers to transactions received before `before`; returns how many.
    pub async fn prune_inbound_txns(&self, before: i64) -> Result<u64, StoreError> {
        let deleted = with_pool!(self, pool => {
            sqlx::query("DELETE FROM federation_inbound_txns WHERE received_ts < $1")
                .bind(before)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(deleted)
    }

    /// Notes that `user_id`'s server announced device-list stream id `stream_id`: what this
    /// server knows of the user's devices is stale from now on. Returns whether the stream id
    /// is newer than any heard before (an older or repeated one changes nothing).
    pub async fn note_remote_device_list(
        &self,
        user_id: &str,
        stream_id: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        let changed = with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO remote_device_lists (user_id, stream_id, stale, updated_ts) VALUES ($1, $2, TRUE, $3) \
                 ON CONFLICT (user_id) DO UPDATE SET stream_id = excluded.stream_id, stale = TRUE, \
                 updated_ts = excluded.updated_ts WHERE remote_device_lists.stream_id < excluded.stream_id",
            )
            .bind(user_id)
            .bind(stream_id)
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(changed > 0)
    }

    /// Marks what this server knows of `user_id`'s devices and keys stale (a cross-signing key
    /// update carries no stream id); the stream id stays.
    pub async fn mark_remote_device_list_stale(
        &self,
        user_id: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO remote_device_lists (user_id, stream_id, stale, updated_ts) VALUES ($1, 0, TRUE, $2) \
                 ON CONFLICT (user_id) DO UPDATE SET stale = TRUE, updated_ts = excluded.updated_ts",
            )
            .bind(user_id)
            .bind(now)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// A remote user's device-list stream id and whether it is stale, if their server ever
    /// announced one.
    pub async fn remote_device_list(
        &self,
        user_id: &str,
    ) -> Result<Option<(i64, bool)>, StoreError> {
        let row = with_pool!(self, pool => {
            sqlx::query_as::<_, (i64, bool)>(
                "SELECT stream_id, stale FROM remote_device_lists WHERE user_id = $1",
            )
            .bind(user_id)
            .fetch_optional(pool)
            .await?
        });
        Ok(row)
    }

    /// Whether a user of `server` is joined to room `room_nid` (whether `server` is in it).
    pub async fn server_in_room(&self, room_nid: i64, server: &str) -> Result<bool, StoreError> {
        let suffix = format!(":{server}");
        let found = with_pool!(self, pool => {
            sqlx::query_scalar::<_, i32>(concat!(
                "SELECT 1 FROM room_memberships WHERE room_nid = $1 AND membership = 'join' AND ",
                user_of_server!("user_id", "$2"),
                " LIMIT 1"
            ))
            .bind(room_nid)
            .bind(&suffix)
            .fetch_optional(pool)
            .await?
        });
        Ok(found.is_some())
    }

    /// Whether `user_id` is joined to a room a user of `server` is joined to (for this server:
    /// whether anyone here may hear of the user's presence or devices). A remote account counts
    /// as joined through its verified keys in account-key rooms, and a key held unverified
    /// under `server`'s name is nobody of `server` (MSC4243.md §2.7).
    pub async fn shares_room_with_server(
        &self,
        user_id: &str,
        server: &str,
    ) -> Result<bool, StoreError> {
        let suffix = format!(":{server}");
        let members = self.member_ids_of(&[user_id]).await?;
        let sql = format!(
            concat!(
                "SELECT 1 FROM room_memberships m JOIN room_memberships l ON l.room_nid = m.room_nid \
                 WHERE m.user_id IN ({}) AND m.membership = 'join' AND l.membership = 'join' AND ",
                user_of_server!("l.user_id", "$1"),
                " AND ",
                crate::account_keys::member_names_an_account!("l.user_id"),
                " LIMIT 1"
            ),
            crate::e2ee::placeholders(2, members.len())
        );
        let found = with_pool!(self, pool => {
            let mut query = sqlx::query_scalar::<_, i32>(sqlx::AssertSqlSafe(sql.clone())).bind(&suffix);
            for (member, _) in &members {
                query = query.bind(member);
            }
            query.fetch_optional(pool).await?
        });
        Ok(found.is_some())
    }

    /// The users joined to room `room_nid` (the servers in it, for asking them what the room's
    /// first choice could not answer).
    pub async fn joined_user_ids(&self, room_nid: i64) -> Result<Vec<String>, StoreError> {
        let users = with_pool!(self, pool => {
            sqlx::query_scalar::<_, String>(
                "SELECT user_id FROM room_memberships WHERE room_nid = $1 AND membership = 'join'",
            )
            .bind(room_nid)
            .fetch_all(pool)
            .await?
        });
        Ok(users)
    }
}

#[cfg(test)]
mod tests {
    use crate::{
        Store, StoreOptions,
        test_support::{TestDatabase, test_backends},
    };

    #[tokio::test]
    async fn transaction_answers_keep_the_first_and_age_out() {
        for kind in test_backends() {
            let db = TestDatabase::create(kind).await;
            let store = Store::open(&db.url, &StoreOptions::default())
                .await
                .unwrap();
            assert_eq!(
                store.inbound_txn_response("a.test", "t1").await.unwrap(),
                None
            );
            store
                .record_inbound_txn("a.test", "t1", "first", 1_000)
                .await
                .unwrap();
            store
                .record_inbound_txn("a.test", "t1", "second", 2_000)
                .await
                .unwrap();
            store
                .record_inbound_txn("b.test", "t1", "other origin", 5_000)
                .await
                .unwrap();
            assert_eq!(
                store.inbound_txn_response("a.test", "t1").await.unwrap(),
                Some("first".to_owned()),
                "{kind:?}"
            );
            assert_eq!(store.prune_inbound_txns(2_000).await.unwrap(), 1);
            assert_eq!(
                store.inbound_txn_response("a.test", "t1").await.unwrap(),
                None
            );
            assert_eq!(
                store.inbound_txn_response("b.test", "t1").await.unwrap(),
                Some("other origin".to_owned()),
                "{kind:?}"
            );
        }
    }

    #[tokio::test]
    async fn remote_device_lists_only_move_forward() {
        for kind in test_backends() {
            let db = TestDatabase::create(kind).await;
            let store = Store::open(&db.url, &StoreOptions::default())
                .await
                .unwrap();
            let bob = "@bob:b.test";
            assert_eq!(store.remote_device_list(bob).await.unwrap(), None);
            assert!(store.note_remote_device_list(bob, 5, 1).await.unwrap());
            assert!(!store.note_remote_device_list(bob, 5, 2).await.unwrap());
            assert!(!store.note_remote_device_list(bob, 3, 3).await.unwrap());
            assert_eq!(
                store.remote_device_list(bob).await.unwrap(),
                Some((5, true)),
                "{kind:?}"
            );
            assert!(store.note_remote_device_list(bob, 6, 4).await.unwrap());
            store
                .mark_remote_device_list_stale("@carol:b.test", 5)
                .await
                .unwrap();
            assert_eq!(
                store.remote_device_list("@carol:b.test").await.unwrap(),
                Some((0, true))
            );
            assert_eq!(
                store.remote_device_list(bob).await.unwrap(),
                Some((6, true))
            );
        }
    }
}
