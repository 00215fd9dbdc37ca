//! Reports users make about events, rooms and users (`/report`), kept for the server's admins.

use crate::{Store, StoreError, with_pool};

/// One report as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewReport<'a> {
    pub reporter: &'a str,
    pub room_id: Option<&'a str>,
    pub event_id: Option<&'a str>,
    pub user_id: Option<&'a str>,
    pub reason: Option<&'a str>,
    pub received_ts: i64,
}

/// A stored report.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ReportRow {
    pub report_id: i64,
    pub reporter: String,
    pub room_id: Option<String>,
    pub event_id: Option<String>,
    pub user_id: Option<String>,
    pub reason: Option<String>,
    pub received_ts: i64,
}

impl Store {
    /// Stores a report; durable when this returns.
    pub async fn add_report(&self, report: &NewReport<'_>) -> Result<i64, StoreError> {
        let id = with_pool!(self, pool => {
            sqlx::query_scalar::<_, i64>(
                "INSERT INTO reports (reporter, room_id, event_id, user_id, reason, received_ts) \
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING report_id",
            )
            .bind(report.reporter)
            .bind(report.room_id)
            .bind(report.event_id)
            .bind(report.user_id)
            .bind(report.reason)
            .bind(report.received_ts)
            .fetch_one(pool)
            .await?
        });
        Ok(id)
    }

    /// The newest reports first, at most `limit`.
    pub async fn reports(&self, limit: i64) -> Result<Vec<ReportRow>, StoreError> {
        let rows = with_pool!(self, pool => {
            sqlx::query_as::<_, ReportRow>(
                "SELECT report_id, reporter, room_id, event_id, user_id, reason, received_ts \
                 FROM reports ORDER BY report_id DESC LIMIT $1",
            )
            .bind(limit)
            .fetch_all(pool)
            .await?
        });
        Ok(rows)
    }
}
