//! The store's error type: what went wrong below the service layer, without HTTP in sight.

/// Errors from the store. Callers see a database failure as an internal error; the variants
/// exist so that start-up can explain itself and so that conflicts can be told apart.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL could not be understood.
    #[error("invalid database url: {0}")]
    InvalidUrl(String),

    /// The database holds migrations this binary does not know: it was written by a newer Myelin.
    #[error(
        "the database was written by a newer version of Myelin (it has schema migration {found}, \
         this binary knows up to {known}); refusing to start. Run a Myelin at least as new as the \
         one that last used this database"
    )]
    SchemaTooNew { found: i64, known: i64 },

    /// An applied migration differs from the one embedded in this binary.
    #[error(
        "schema migration {0} in the database differs from the one in this binary; the database \
         was written by a different build of Myelin"
    )]
    SchemaMismatch(i64),

    /// A migration failed to apply.
    #[error("database migration failed: {0}")]
    Migration(#[source] sqlx::migrate::MigrateError),

    /// A unique constraint was violated (for example, a key id that already exists).
    #[error("conflict: {0}")]
    Conflict(String),

    /// The state after an event was asked for, and the event is an outlier: it has none.
    #[error("event {0} is an outlier: it has no room state")]
    Outlier(String),

    /// Any other database failure.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &err
            && db.is_unique_violation()
        {
            return StoreError::Conflict(db.message().to_owned());
        }
        StoreError::Database(err)
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(err: sqlx::migrate::MigrateError) -> Self {
        use sqlx::migrate::MigrateError;
        match err {
            MigrateError::VersionMissing(found) => StoreError::SchemaTooNew {
                found,
                known: crate::store::latest_known_migration(),
            },
            MigrateError::VersionMismatch(version) => StoreError::SchemaMismatch(version),
            other => StoreError::Migration(other),
        }
    }
}
