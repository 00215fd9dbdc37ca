//! The [`Store`] handle: opening a pool on either backend, applying migrations, and the
//! [`with_pool!`] macro that runs one piece of SQL on whichever backend is in use.

use std::{path::Path, str::FromStr, sync::Arc, time::Duration};

use sqlx::{
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPool, PgPoolOptions},
    sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
    },
};

use crate::{StoreError, cache::Cache};

static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("../../migrations/postgres");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("../../migrations/sqlite");

/// How long a SQLite connection waits for a lock held by another connection before failing.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// A pooled PostgreSQL connection idle for longer than this is pinged before it is handed out
/// (the server may have restarted or a firewall may have dropped it). Busier connections are
/// not: sqlx's default pings on every acquire, one more round trip per statement.
const PG_PING_AFTER_IDLE: Duration = Duration::from_secs(60);

/// The highest migration version embedded in this binary (both backends have the same pairs).
pub(crate) fn latest_known_migration() -> i64 {
    POSTGRES_MIGRATIONS
        .iter()
        .map(|m| m.version)
        .max()
        .unwrap_or(0)
}

/// Which database a URL selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseKind {
    Postgres,
    Sqlite,
}

impl DatabaseKind {
    /// Classifies a database URL by its scheme.
    pub fn of_url(url: &str) -> Result<Self, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(DatabaseKind::Postgres)
        } else if url.starts_with("sqlite:") {
            Ok(DatabaseKind::Sqlite)
        } else {
            Err(StoreError::InvalidUrl(format!(
                "`{}` is neither postgres://... nor sqlite:...",
                redact_url(url)
            )))
        }
    }
}

/// The pool behind a [`Store`]. Public only so that [`with_pool!`] can match on it.
#[derive(Debug, Clone)]
pub enum Backend {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// Connection settings that are not part of the URL.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub max_connections: u32,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: 16,
        }
    }
}

/// A write transaction, with (on SQLite) this store's write gate held until it ends.
///
/// Dereferences to the connection, so statements run on `&mut *tx` as on a plain transaction.
pub(crate) struct WriteTx<DB: sqlx::Database> {
    tx: sqlx::Transaction<'static, DB>,
    _gate: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl<DB: sqlx::Database> WriteTx<DB> {
    /// Commits; the gate opens for the next writer once the commit has returned.
    pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

impl<DB: sqlx::Database> std::ops::Deref for WriteTx<DB> {
    type Target = DB::Connection;

    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl<DB: sqlx::Database> std::ops::DerefMut for WriteTx<DB> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}

/// Starts a transaction that is going to write.
///
/// On SQLite only one connection can write at a time. Writers first queue on the store's
/// in-process gate (first come, first served), then take the write lock up front
/// (`BEGIN IMMEDIATE`): without the gate, concurrent writers fall into SQLite's busy handler,
/// which sleeps 1 to 100 ms between retries while the lock sits free, and a deferred transaction
/// that reads first and writes later fails at once with "database is locked".
pub(crate) trait BeginWrite {
    type Db: sqlx::Database;

    fn begin_write(
        &self,
        gate: &Arc<tokio::sync::Mutex<()>>,
    ) -> impl std::future::Future<Output = Result<WriteTx<Self::Db>, sqlx::Error>> + Send;
}

impl BeginWrite for PgPool {
    type Db = sqlx::Postgres;

    async fn begin_write(
        &self,
        _gate: &Arc<tokio::sync::Mutex<()>>,
    ) -> Result<WriteTx<sqlx::Postgres>, sqlx::Error> {
        // PostgreSQL locks rows, not the database: writers to different rooms run in parallel.
        Ok(WriteTx {
            tx: self.begin().await?,
            _gate: None,
        })
    }
}

impl BeginWrite for SqlitePool {
    type Db = sqlx::Sqlite;

    async fn begin_write(
        &self,
        gate: &Arc<tokio::sync::Mutex<()>>,
    ) -> Result<WriteTx<sqlx::Sqlite>, sqlx::Error> {
        let guard = gate.clone().lock_owned().await;
        Ok(WriteTx {
            tx: self.begin_with("BEGIN IMMEDIATE").await?,
            _gate: Some(guard),
        })
    }
}

/// A handle on the database. Cheap to clone: it wraps a connection pool.
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) backend: Backend,
    /// Resolved state snapshots (immutable once written), shared by every clone.
    pub(crate) state_cache: Arc<crate::state::StateCache>,
    /// Queues this process's write transactions on SQLite (see [`BeginWrite`]).
    pub(crate) write_gate: Arc<tokio::sync::Mutex<()>>,
    /// Access tokens by hash, with their account's state.
    pub(crate) tokens: Arc<Cache<Vec<u8>, crate::AccessTokenRow>>,
    /// Rooms by id.
    pub(crate) rooms: Arc<Cache<String, crate::RoomRow>>,
    /// Whether a user has http pushers, by user id (invalidated by every pusher or device
    /// write: deleting a device deletes its pushers).
    pub(crate) pusher_users: Arc<Cache<String, bool>>,
    /// Global account data read on hot paths (the ignored-users list, read by every history
    /// visibility check), by (user id, type); invalidated by every account data write.
    pub(crate) hot_account_data: Arc<Cache<(String, String), Option<String>>>,
    /// Events waiting to be committed together.
    pub(crate) group_commit: Arc<crate::group_commit::GroupCommit>,
}

/// How many tokens (and users' pusher flags) and rooms the caches hold before they start over.
const TOKEN_CACHE_CAPACITY: usize = 10_000;
const ROOM_CACHE_CAPACITY: usize = 10_000;

/// Runs `$body` with `$pool` bound to the backend's pool. The body is expanded once per backend,
/// so the same SQL text and the same binds compile against each driver's native types.
#[macro_export]
macro_rules! with_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.backend {
            $crate::Backend::Postgres($pool) => $body,
            $crate::Backend::Sqlite($pool) => $body,
        }
    };
}

/// The statement taking the next `count` positions of the events stream (`count` is its
/// placeholder), returning the last one taken. Its row lock orders the stream's writers until
/// the transaction (or the lone statement) that ran it commits. Every writer of the stream takes
/// its positions through it: [`take_event_positions!`] in a transaction, and a lone message's
/// statement as its first part (`event_write::Position::TakenHere`).
pub(crate) fn take_event_positions_sql(count: &str) -> String {
    format!(
        "UPDATE stream_positions SET position = position + {count} WHERE stream = 'events' RETURNING position"
    )
}

/// Takes the next `$count` positions of the events stream inside the caller's transaction
/// `$tx` ([`take_event_positions_sql`]); evaluates to the last one taken, so they are
/// `last - count + 1 ..= last`.
macro_rules! take_event_positions {
    ($tx:expr, $count:expr) => {{
        let count: i64 = $count;
        let last: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(
            $crate::store::take_event_positions_sql("$1"),
        ))
        .bind(count)
        .fetch_one(&mut *$tx)
        .await?;
        last
    }};
}
pub(crate) use take_event_positions;

/// Prepared statements kept per PostgreSQL connection (see [`Store::open`]).
const PG_STATEMENTS_PER_CONNECTION: usize = 400;

impl Store {
    /// Connects to the database named by `url` and applies pending migrations.
    ///
    /// SQLite databases are created if missing and run in WAL mode with a busy timeout and
    /// `synchronous = FULL`, so that a commit that returned is on disk.
    pub async fn open(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let backend = match DatabaseKind::of_url(url)? {
            DatabaseKind::Postgres => {
                let connect = PgConnectOptions::from_str(url)
                    .map_err(|e| StoreError::InvalidUrl(format!("{}: {e}", redact_url(url))))?
                    // Our statements are prepared once per connection and look rows up by key
                    // (ids, nids, positions, each behind an index), so one plan fits every
                    // parameter value. PostgreSQL would otherwise plan many of them afresh on
                    // each run (0.4-0.7 ms apiece for the sync and send reads, longer than
                    // running them).
                    .options([("plan_cache_mode", "force_generic_plan")])
                    // Prepared once, kept: sqlx's default of 100 statements per connection is
                    // fewer than a server that sends, syncs and federates runs (about 120 in a
                    // send and sync benchmark), and each one evicted is parsed and planned again
                    // the next time its connection runs it (0.1-1.8 ms apiece for the sync
                    // reads' generic plans).
                    .statement_cache_capacity(PG_STATEMENTS_PER_CONNECTION);
                let pool = PgPoolOptions::new()
                    .max_connections(options.max_connections)
                    .acquire_timeout(Duration::from_secs(30))
                    .test_before_acquire(false)
                    .before_acquire(|conn, meta| {
                        Box::pin(async move {
                            if meta.idle_for > PG_PING_AFTER_IDLE {
                                sqlx::Connection::ping(conn).await?;
                            }
                            Ok(true)
                        })
                    })
                    .connect_with(connect)
                    .await?;
                Backend::Postgres(pool)
            }
            DatabaseKind::Sqlite => {
                let connect = SqliteConnectOptions::from_str(url)
                    .map_err(|e| StoreError::InvalidUrl(format!("{url}: {e}")))?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(SQLITE_BUSY_TIMEOUT)
                    .foreign_keys(true);
                let pool = SqlitePoolOptions::new()
                    .max_connections(options.max_connections)
                    .acquire_timeout(Duration::from_secs(30))
                    // A connection to a local file cannot drop; sqlx's default ping on every
                    // acquire costs a hand-off to the connection's thread per statement.
                    .test_before_acquire(false)
                    .connect_with(connect)
                    .await?;
                Backend::Sqlite(pool)
            }
        };
        let store = Store {
            backend,
            state_cache: Default::default(),
            write_gate: Default::default(),
            tokens: Arc::new(Cache::new(TOKEN_CACHE_CAPACITY)),
            rooms: Arc::new(Cache::new(ROOM_CACHE_CAPACITY)),
            pusher_users: Arc::new(Cache::new(TOKEN_CACHE_CAPACITY)),
            hot_account_data: Arc::new(Cache::new(TOKEN_CACHE_CAPACITY)),
            group_commit: Default::default(),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// The SQLite URL for a database file at `path`.
    pub fn sqlite_url(path: &Path) -> String {
        format!("sqlite://{}", path.display())
    }

    /// Applies the embedded migrations that the database does not have yet.
    async fn migrate(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Postgres(pool) => POSTGRES_MIGRATIONS.run(pool).await?,
            Backend::Sqlite(pool) => SQLITE_MIGRATIONS.run(pool).await?,
        }
        Ok(())
    }

    /// Which backend this store runs on.
    pub fn kind(&self) -> DatabaseKind {
        match self.backend {
            Backend::Postgres(_) => DatabaseKind::Postgres,
            Backend::Sqlite(_) => DatabaseKind::Sqlite,
        }
    }

    /// Checks that the database answers (used by `/health`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        with_pool!(self, pool => sqlx::query("SELECT 1").execute(pool).await.map(|_| ()))?;
        Ok(())
    }

    /// Forgets the cached rows that account writes change: access tokens, and (devices own
    /// pushers) which users have pushers. Called once such a write is over (see `cache`).
    pub(crate) fn account_changed(&self) {
        self.tokens.invalidate();
        self.pusher_users.invalidate();
    }

    /// Closes every connection; pending writes have completed when this returns.
    pub async fn close(&self) {
        match &self.backend {
            Backend::Postgres(pool) => pool.close().await,
            Backend::Sqlite(pool) => pool.close().await,
        }
    }
}

/// A database URL with any password replaced, fit for logs and error messages.
pub(crate) fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::test_support::TestDatabase;

    /// A second SQLite writer queues on the gate while the first transaction is open, starts
    /// once it has committed, and sees its write; it never errors with "database is locked".
    #[tokio::test]
    async fn sqlite_writers_queue_on_the_gate_until_the_open_transaction_commits() {
        let db = TestDatabase::create(DatabaseKind::Sqlite).await;
        let store = Store::open(&db.url, &StoreOptions::default())
            .await
            .unwrap();
        let Backend::Sqlite(pool) = &store.backend else {
            unreachable!("a SQLite test database")
        };
        let mut first = pool.begin_write(&store.write_gate).await.unwrap();
        sqlx::query("UPDATE stream_positions SET position = position + 1 WHERE stream = 'events'")
            .execute(&mut *first)
            .await
            .unwrap();

        let second = {
            let (pool, gate) = (pool.clone(), store.write_gate.clone());
            tokio::spawn(async move {
                let mut tx = pool.begin_write(&gate).await.unwrap();
                let seen: i64 = sqlx::query_scalar(
                    "UPDATE stream_positions SET position = position + 1 WHERE stream = 'events' RETURNING position",
                )
                .fetch_one(&mut *tx)
                .await
                .unwrap();
                tx.commit().await.unwrap();
                seen
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !second.is_finished(),
            "the second writer waits for the first"
        );
        assert!(
            store.write_gate.try_lock().is_err(),
            "the gate is held by the open transaction"
        );
        first.commit().await.unwrap();
        assert_eq!(
            second.await.unwrap(),
            2,
            "the second writer ran after the first committed"
        );
        assert!(
            store.write_gate.try_lock().is_ok(),
            "the gate opens after the last commit"
        );
    }
}
