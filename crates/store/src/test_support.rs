//! Throwaway databases for tests, on both backends.
//!
//! Every test that touches storage runs once per backend in [`test_backends`]: SQLite always, and
//! PostgreSQL when `MYELIN_TEST_DATABASE_URL` names a server (the README's test command starts a
//! throwaway cluster and sets it). Without it the PostgreSQL run is skipped loudly, or fails when
//! `MYELIN_REQUIRE_POSTGRES=1`. Each [`TestDatabase`] is a fresh database of its own, so tests run
//! in parallel without seeing each other.

use std::path::PathBuf;

use sqlx::{AssertSqlSafe, Connection, Executor};

use crate::DatabaseKind;

/// The environment variable naming a PostgreSQL server for tests (any database on it; the tests
/// create their own).
pub const TEST_DATABASE_URL_VAR: &str = "MYELIN_TEST_DATABASE_URL";
/// Set to `1` to make a missing PostgreSQL an error instead of a skip.
pub const REQUIRE_POSTGRES_VAR: &str = "MYELIN_REQUIRE_POSTGRES";

/// The backends tests should run on, in order.
pub fn test_backends() -> Vec<DatabaseKind> {
    let mut kinds = vec![DatabaseKind::Sqlite];
    if std::env::var(TEST_DATABASE_URL_VAR).is_ok_and(|v| !v.is_empty()) {
        kinds.push(DatabaseKind::Postgres);
    } else if std::env::var(REQUIRE_POSTGRES_VAR).is_ok_and(|v| v == "1") {
        panic!("{REQUIRE_POSTGRES_VAR}=1 but {TEST_DATABASE_URL_VAR} is not set");
    } else {
        eprintln!(
            "WARNING: {TEST_DATABASE_URL_VAR} is not set; SKIPPING the PostgreSQL half of this \
             test (run scripts/test to get a throwaway PostgreSQL)"
        );
    }
    kinds
}

/// A fresh, empty database for one test. Dropping it removes it.
#[derive(Debug)]
pub struct TestDatabase {
    /// The URL to open it with.
    pub url: String,
    pub kind: DatabaseKind,
    // SQLite: the directory holding the file. PostgreSQL: the admin URL and database name.
    _dir: Option<tempfile::TempDir>,
    postgres: Option<(String, String)>,
}

impl TestDatabase {
    /// Creates a new empty database on `kind`.
    pub async fn create(kind: DatabaseKind) -> Self {
        match kind {
            DatabaseKind::Sqlite => {
                let dir = tempfile::tempdir().expect("create temp dir");
                let path: PathBuf = dir.path().join("test.db");
                TestDatabase {
                    url: crate::Store::sqlite_url(&path),
                    kind,
                    _dir: Some(dir),
                    postgres: None,
                }
            }
            DatabaseKind::Postgres => {
                let admin_url = std::env::var(TEST_DATABASE_URL_VAR)
                    .expect("MYELIN_TEST_DATABASE_URL must be set for PostgreSQL tests");
                let name = format!("myelin_test_{:016x}", rand::random::<u64>());
                let mut conn = sqlx::PgConnection::connect(&admin_url)
                    .await
                    .expect("connect to MYELIN_TEST_DATABASE_URL");
                // The name is ours (hex digits), never input.
                conn.execute(AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .await
                    .expect("create test database");
                let _ = conn.close().await;
                TestDatabase {
                    url: with_database_name(&admin_url, &name),
                    kind,
                    _dir: None,
                    postgres: Some((admin_url, name)),
                }
            }
        }
    }
}

/// The admin URL with another database name.
fn with_database_name(admin_url: &str, name: &str) -> String {
    let mut url = url::Url::parse(admin_url).expect("MYELIN_TEST_DATABASE_URL is a URL");
    url.set_path(&format!("/{name}"));
    url.to_string()
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some((admin_url, name)) = self.postgres.take() else {
            return;
        };
        // Drop runs outside async; a short-lived runtime on its own thread does the cleanup.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin_url).await {
                    let _ = conn
                        .execute(AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .await;
                    let _ = conn.close().await;
                }
            });
        })
        .join();
    }
}

/// Creates a local account `@localpart:test` with no password; returns its user id.
pub async fn create_test_user(store: &crate::Store, localpart: &str) -> String {
    let user_id = format!("@{localpart}:test");
    store
        .create_user(&crate::UserRow {
            user_id: user_id.clone(),
            localpart: localpart.to_owned(),
            password_hash: None,
            is_admin: false,
            created_ts: 0,
            deactivated_ts: None,
        })
        .await
        .expect("create a test user");
    user_id
}

/// Pretends a newer Myelin applied migration `version` (to test the schema-version guard).
pub async fn record_future_migration(store: &crate::Store, version: i64) {
    crate::with_pool!(store, pool => {
        sqlx::query(
            "INSERT INTO _sqlx_migrations \
             (version, description, success, checksum, execution_time) \
             VALUES ($1, 'from the future', TRUE, $2, 0)",
        )
        .bind(version)
        .bind(vec![0u8; 48])
        .execute(pool)
        .await
        .map(|_| ())
    })
    .expect("record a future migration");
}

/// SQLite's `journal_mode` for this store's connections.
pub async fn sqlite_journal_mode(store: &crate::Store) -> String {
    match &store.backend {
        crate::Backend::Sqlite(pool) => {
            let (mode,): (String,) = sqlx::query_as("PRAGMA journal_mode")
                .fetch_one(pool)
                .await
                .expect("pragma");
            mode
        }
        crate::Backend::Postgres(_) => panic!("not a SQLite store"),
    }
}

/// Persists `events` in one transaction, as group commit would, without waiting for a batch to
/// form: for building large rooms quickly in tests and benchmarks.
pub async fn persist_batch(
    store: &crate::Store,
    events: &[crate::NewEvent<'_>],
) -> Result<Vec<crate::Persisted>, crate::StoreError> {
    store.persist_events(events).await
}

/// Makes every cached key of `server` due for a refetch, as if its cache lifetime had passed
/// (to test that expired keys are fetched again).
pub async fn expire_remote_server_keys(store: &crate::Store, server: &str) {
    crate::with_pool!(store, pool => {
        sqlx::query("UPDATE remote_server_keys SET cache_until_ts = 0 WHERE server_name = $1")
            .bind(server)
            .execute(pool)
            .await
            .map(|_| ())
    })
    .expect("expire cached remote keys");
}
