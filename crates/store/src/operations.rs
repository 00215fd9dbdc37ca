//! The journal of operations that take several transactions (migration 0035): room creation,
//! a profile change's fan-out into the user's rooms, account deactivation. A row is written in
//! the same transaction as the operation's first step ([`begin_operation!`], used by
//! [`Store::create_room_with_operation`], [`Store::set_profile_with_operation`] and
//! [`Store::deactivate_user`]) and deleted after its last ([`Store::finish_operation`]), so an
//! operation a crash cut short is found again and finished, by whichever process claims it.
//!
//! Claims are leases: the process running an operation holds it until `lease_until` and renews
//! that while it runs ([`Store::renew_operation`]); one whose lease has run out is claimed by a
//! conditional update ([`Store::claim_operations`]), which only one claimer wins on either
//! backend (PostgreSQL re-checks the condition on a row another transaction just changed).

use crate::store::BeginWrite;
use crate::{Store, StoreError, with_pool};

/// An operation about to start: what it is, for whom, what resuming it needs (JSON), and the
/// lease its starter takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOperation<'a> {
    pub kind: &'a str,
    pub subject: &'a str,
    pub params: &'a str,
    pub owner: &'a str,
    pub lease_until: i64,
    pub now: i64,
}

/// A journaled operation, as claimed.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PendingOperation {
    pub operation_id: i64,
    pub kind: String,
    pub subject: String,
    pub params: String,
}

/// Journals `$op` (a `&NewOperation`) inside the caller's transaction `$tx`; evaluates to its id.
macro_rules! begin_operation {
    ($tx:expr, $op:expr) => {{
        let op: &$crate::operations::NewOperation<'_> = $op;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO pending_operations (kind, subject, params, owner, lease_until, created_ts) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING operation_id",
        )
        .bind(op.kind)
        .bind(op.subject)
        .bind(op.params)
        .bind(op.owner)
        .bind(op.lease_until)
        .bind(op.now)
        .fetch_one(&mut *$tx)
        .await?;
        id
    }};
}
pub(crate) use begin_operation;

impl Store {
    /// Claims for `owner`, until `lease_until`, at most `limit` operations whose lease ran out
    /// before `now`, or whose lease an earlier boot of `owner`'s instance holds (an owner that
    /// starts with `instance_prefix` but is not `owner`: that process is dead, since one
    /// instance never runs twice at once), oldest first. A row another process claims at the
    /// same moment is left out (the update re-reads the condition).
    pub async fn claim_operations(
        &self,
        owner: &str,
        instance_prefix: &str,
        now: i64,
        lease_until: i64,
        limit: i64,
    ) -> Result<Vec<PendingOperation>, StoreError> {
        // A look first: most sweeps find nothing, and need no write transaction.
        let due: Option<i64> = with_pool!(self, pool => {
            sqlx::query_scalar(
                "SELECT operation_id FROM pending_operations WHERE lease_until < $1 OR \
                 (substr(owner, 1, length($2)) = $2 AND owner <> $3) LIMIT 1",
            )
            .bind(now)
            .bind(instance_prefix)
            .bind(owner)
            .fetch_optional(pool)
            .await?
        });
        if due.is_none() {
            return Ok(Vec::new());
        }
        let mut rows = with_pool!(self, pool => {
            let mut tx = pool.begin_write(&self.write_gate).await?;
            // Claimable: the lease ran out, or an earlier boot of this instance holds it.
            let rows: Vec<PendingOperation> = sqlx::query_as(
                "UPDATE pending_operations SET owner = $1, lease_until = $2 \
                 WHERE (lease_until < $3 OR (substr(owner, 1, length($4)) = $4 AND owner <> $1)) \
                 AND operation_id IN ( \
                     SELECT operation_id FROM pending_operations \
                     WHERE lease_until < $3 OR (substr(owner, 1, length($4)) = $4 AND owner <> $1) \
                     ORDER BY operation_id LIMIT $5) \
                 RETURNING operation_id, kind, subject, params",
            )
            .bind(owner)
            .bind(lease_until)
            .bind(now)
            .bind(instance_prefix)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            rows
        });
        rows.sort_by_key(|row| row.operation_id);
        Ok(rows)
    }

    /// Extends `owner`'s lease on an operation it is running. `false`: it is no longer
    /// `owner`'s (finished, or claimed by another process after the lease ran out).
    pub async fn renew_operation(
        &self,
        owner: &str,
        operation_id: i64,
        lease_until: i64,
    ) -> Result<bool, StoreError> {
        let updated = with_pool!(self, pool => {
            sqlx::query(
                "UPDATE pending_operations SET lease_until = $3 \
                 WHERE operation_id = $1 AND owner = $2",
            )
            .bind(operation_id)
            .bind(owner)
            .bind(lease_until)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(updated > 0)
    }

    /// Ends `owner`'s leases on its operations but those in `running`, so that another
    /// process (or this server after a restart) may claim them at once.
    pub async fn release_operations(&self, owner: &str, running: &[i64]) -> Result<(), StoreError> {
        let held: Vec<i64> = with_pool!(self, pool => {
            sqlx::query_scalar("SELECT operation_id FROM pending_operations WHERE owner = $1")
                .bind(owner)
                .fetch_all(pool)
                .await?
        });
        for operation_id in held.into_iter().filter(|id| !running.contains(id)) {
            with_pool!(self, pool => {
                sqlx::query(
                    "UPDATE pending_operations SET lease_until = 0 \
                     WHERE operation_id = $1 AND owner = $2",
                )
                .bind(operation_id)
                .bind(owner)
                .execute(pool)
                .await
                .map(|_| ())
            })?;
        }
        Ok(())
    }

    /// An operation is over: its row goes.
    pub async fn finish_operation(&self, operation_id: i64) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            sqlx::query("DELETE FROM pending_operations WHERE operation_id = $1")
                .bind(operation_id)
                .execute(pool)
                .await
                .map(|_| ())
        })?;
        Ok(())
    }

    /// The journaled operations of `kind` for `subject` (tests, and the admin's view).
    pub async fn pending_operations(
        &self,
        kind: &str,
        subject: &str,
    ) -> Result<Vec<PendingOperation>, StoreError> {
        let rows = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT operation_id, kind, subject, params FROM pending_operations \
                 WHERE kind = $1 AND subject = $2 ORDER BY operation_id",
            )
            .bind(kind)
            .bind(subject)
            .fetch_all(pool)
            .await?
        });
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use crate::{
        NewOperation, Store, StoreOptions,
        test_support::{TestDatabase, test_backends},
    };

    fn operation(owner: &str, lease_until: i64) -> NewOperation<'_> {
        NewOperation {
            kind: "create_room",
            subject: "@a:test",
            params: "{}",
            owner,
            lease_until,
            now: 0,
        }
    }

    /// Two processes (two stores on one database) race to claim an operation whose lease ran
    /// out: exactly one gets it, and it is nobody else's until that one hands it back.
    #[tokio::test]
    async fn an_unfinished_operation_is_claimed_by_one_process_at_a_time() {
        for kind in test_backends() {
            let db = TestDatabase::create(kind).await;
            let one = Store::open(&db.url, &StoreOptions::default())
                .await
                .unwrap();
            let two = Store::open(&db.url, &StoreOptions::default())
                .await
                .unwrap();
            let (_, held) = one
                .create_room_with_operation(
                    "!held:test",
                    "12",
                    "@a:test",
                    false,
                    0,
                    None,
                    &operation("dead", 10_000),
                )
                .await
                .unwrap()
                .unwrap();
            let (_, expired) = one
                .create_room_with_operation(
                    "!expired:test",
                    "12",
                    "@a:test",
                    false,
                    0,
                    None,
                    &operation("dead", 100),
                )
                .await
                .unwrap()
                .unwrap();

            let (a, b) = tokio::join!(
                one.claim_operations("one", "elsewhere/", 1_000, 61_000, 10),
                two.claim_operations("two", "elsewhere/", 1_000, 61_000, 10),
            );
            let (a, b) = (a.unwrap(), b.unwrap());
            let claimed: Vec<i64> = a.iter().chain(&b).map(|op| op.operation_id).collect();
            assert_eq!(
                claimed,
                [expired],
                "{kind:?}: one claim wins, the held lease is left"
            );
            let (winner, loser) = if a.is_empty() {
                ("two", "one")
            } else {
                ("one", "two")
            };

            assert!(
                one.claim_operations(loser, "elsewhere/", 2_000, 62_000, 10)
                    .await
                    .unwrap()
                    .is_empty(),
                "{kind:?}: a claimed operation is not claimable while its lease lasts"
            );
            assert!(!one.renew_operation(loser, expired, 90_000).await.unwrap());
            assert!(one.renew_operation(winner, expired, 90_000).await.unwrap());

            // Handed back (a graceful shutdown), it is claimable at once; one still running is
            // not handed back.
            one.release_operations(winner, &[]).await.unwrap();
            let reclaimed = two
                .claim_operations(loser, "elsewhere/", 3_000, 63_000, 10)
                .await
                .unwrap();
            assert_eq!(reclaimed.len(), 1, "{kind:?}");
            assert_eq!(reclaimed[0].operation_id, expired);
            two.release_operations(loser, &[expired]).await.unwrap();
            assert!(
                one.claim_operations(winner, "elsewhere/", 4_000, 64_000, 10)
                    .await
                    .unwrap()
                    .is_empty()
            );

            // The held one's lease runs out in its turn.
            let late = one
                .claim_operations(winner, "elsewhere/", 70_000, 130_000, 10)
                .await
                .unwrap();
            let late: Vec<i64> = late.iter().map(|op| op.operation_id).collect();
            assert_eq!(late, [held, expired], "{kind:?}");

            one.finish_operation(held).await.unwrap();
            one.finish_operation(expired).await.unwrap();
            assert!(
                one.pending_operations("create_room", "@a:test")
                    .await
                    .unwrap()
                    .is_empty()
            );
        }
    }

    /// Leases are owned by `<instance>/<boot>`: a new boot of an instance claims at once what
    /// an earlier boot of it holds (that process is dead), while another instance (and another
    /// boot's leases of other instances) wait for the lease to run out.
    #[tokio::test]
    async fn an_earlier_boot_of_the_same_instance_is_claimed_at_once() {
        for kind in test_backends() {
            let db = TestDatabase::create(kind).await;
            let store = Store::open(&db.url, &StoreOptions::default())
                .await
                .unwrap();
            let mut ids = Vec::new();
            for (room, owner) in [
                ("!mine:test", "main/boot1"),
                ("!theirs:test", "other/boot1"),
                // A prefix of this instance's name is another instance.
                ("!prefix:test", "mai/boot1"),
                ("!longer:test", "main2/boot1"),
            ] {
                let (_, id) = store
                    .create_room_with_operation(
                        room,
                        "12",
                        "@a:test",
                        false,
                        0,
                        None,
                        &operation(owner, 10_000),
                    )
                    .await
                    .unwrap()
                    .unwrap();
                ids.push(id);
            }
            let [mine, theirs, prefix, longer] = ids[..] else {
                unreachable!()
            };

            // Another instance's process, at once: nothing (every lease lasts until 10 000).
            assert!(
                store
                    .claim_operations("third/boot1", "third/", 1_000, 61_000, 10)
                    .await
                    .unwrap()
                    .is_empty(),
                "{kind:?}"
            );
            // The same boot of `main` (a sweep of the process that holds it): nothing.
            assert!(
                store
                    .claim_operations("main/boot1", "main/", 1_000, 61_000, 10)
                    .await
                    .unwrap()
                    .is_empty(),
                "{kind:?}"
            );
            // A new boot of `main`: its earlier boot's operation at once, nobody else's.
            let claimed = store
                .claim_operations("main/boot2", "main/", 1_000, 61_000, 10)
                .await
                .unwrap();
            let claimed: Vec<i64> = claimed.iter().map(|op| op.operation_id).collect();
            assert_eq!(claimed, [mine], "{kind:?}");
            assert!(
                store
                    .renew_operation("main/boot2", mine, 70_000)
                    .await
                    .unwrap()
            );
            assert!(
                !store
                    .renew_operation("main/boot1", mine, 70_000)
                    .await
                    .unwrap()
            );

            // Once the leases run out, anyone claims the rest.
            let late = store
                .claim_operations("third/boot1", "third/", 20_000, 80_000, 10)
                .await
                .unwrap();
            let late: Vec<i64> = late.iter().map(|op| op.operation_id).collect();
            assert_eq!(late, [theirs, prefix, longer], "{kind:?}");
        }
    }

    /// A room created with an alias takes the alias in the room row's transaction: an alias
    /// taken already (by a concurrent request) writes nothing at all, no room row, no journal
    /// entry; a free one points at the new room from the start.
    #[tokio::test]
    async fn a_taken_alias_writes_no_room_row_and_no_journal_entry() {
        for kind in test_backends() {
            let db = TestDatabase::create(kind).await;
            let store = Store::open(&db.url, &StoreOptions::default())
                .await
                .unwrap();
            let (nid, _) = store
                .create_room_with_operation(
                    "!first:test",
                    "12",
                    "@a:test",
                    false,
                    0,
                    Some("#taken:test"),
                    &operation("main/boot", 10_000),
                )
                .await
                .unwrap()
                .expect("a free alias");
            assert_eq!(
                store
                    .alias("#taken:test")
                    .await
                    .unwrap()
                    .map(|row| row.room_nid),
                Some(nid),
                "{kind:?}"
            );
            let second = store
                .create_room_with_operation(
                    "!second:test",
                    "12",
                    "@a:test",
                    false,
                    0,
                    Some("#taken:test"),
                    &operation("main/boot", 10_000),
                )
                .await
                .unwrap();
            assert_eq!(second, None, "{kind:?}");
            assert_eq!(
                store.rooms_created_by("@a:test").await.unwrap(),
                ["!first:test"],
                "{kind:?}: no second room row"
            );
            assert!(store.room("!second:test").await.unwrap().is_none());
            assert_eq!(
                store
                    .pending_operations("create_room", "@a:test")
                    .await
                    .unwrap()
                    .len(),
                1,
                "{kind:?}: the first room's entry only"
            );
            assert_eq!(
                store
                    .alias("#taken:test")
                    .await
                    .unwrap()
                    .map(|row| row.room_nid),
                Some(nid)
            );
        }
    }
}
