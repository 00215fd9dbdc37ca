//! The [`Store`] handle: opening a pool on either backend, applying migrations, and the
//! [`with_pool!`] macro that runs one piece of SQL on whichever backend is in use.

use std::{path::Path, str::FromStr, time::Duration};

use sqlx::{
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPool, PgPoolOptions},
    sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
    },
};

use crate::StoreError;

static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("../../migrations/postgres");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("../../migrations/sqlite");

/// How long a SQLite connection waits for a lock held by another connection before failing.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Starts a transaction that is going to write. On SQLite it takes the write lock up front
/// (`BEGIN IMMEDIATE`): a deferred transaction that reads first and writes later cannot wait
/// for the lock and fails at once with "database is locked" under concurrent writers.
pub(crate) trait BeginWrite {
    type Db: sqlx::Database;

    fn begin_write(
        &self,
    ) -> impl std::future::Future<Output = Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>>
    + Send;
}

impl BeginWrite for PgPool {
    type Db = sqlx::Postgres;

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        self.begin().await
    }
}

impl BeginWrite for SqlitePool {
    type Db = sqlx::Sqlite;

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        self.begin_with("BEGIN IMMEDIATE").await
    }
}

/// A handle on the database. Cheap to clone: it wraps a connection pool.
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) backend: Backend,
    /// Resolved state snapshots (immutable once written), shared by every clone.
    pub(crate) state_cache: std::sync::Arc<crate::state::StateCache>,
}

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

impl Store {
    /// Connects to the database named by `url` and applies pending migrations.
    ///
    /// SQLite databases are created if missing and run in WAL mode with a busy timeout and
    /// `synchronous = FULL`, so that a commit that returned is on disk.
    pub async fn open(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let backend = match DatabaseKind::of_url(url)? {
            DatabaseKind::Postgres => {
                let connect = PgConnectOptions::from_str(url)
                    .map_err(|e| StoreError::InvalidUrl(format!("{}: {e}", redact_url(url))))?;
                let pool = PgPoolOptions::new()
                    .max_connections(options.max_connections)
                    .acquire_timeout(Duration::from_secs(30))
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
                    .connect_with(connect)
                    .await?;
                Backend::Sqlite(pool)
            }
        };
        let store = Store {
            backend,
            state_cache: Default::default(),
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
