//! Reports of content and rooms (`/rooms/{roomId}/report[/{eventId}]`): stored for the server's
//! admins once the reporter is allowed to know what they report.

use myelin_store::NewReport;
use ruma::UserId;

use super::Rooms;
use crate::{Error, Result, now_millis};

/// The longest reason kept, in bytes: a report is a note to an admin, not a document.
pub const MAX_REPORT_REASON_BYTES: usize = 4096;

/// Refuses a reason longer than [`MAX_REPORT_REASON_BYTES`].
pub(crate) fn check_reason(reason: Option<&str>) -> Result<()> {
    match reason {
        Some(reason) if reason.len() > MAX_REPORT_REASON_BYTES => Err(Error::InvalidParam(
            format!("The reason is longer than {MAX_REPORT_REASON_BYTES} bytes"),
        )),
        _ => Ok(()),
    }
}

impl Rooms {
    /// `POST /rooms/{roomId}/report/{eventId}`: only an event the reporter may see can be
    /// reported; anything else is `M_NOT_FOUND`, whether or not it exists.
    pub async fn report_event(
        &self,
        reporter: &UserId,
        room_id: &str,
        event_id: &str,
        reason: Option<&str>,
    ) -> Result<()> {
        check_reason(reason)?;
        self.event(reporter, None, room_id, event_id)
            .await
            .map_err(|error| match error {
                Error::Forbidden(_) | Error::NotFound(_) => {
                    Error::NotFound("Event not found".to_owned())
                }
                other => other,
            })?;
        self.store
            .add_report(&NewReport {
                reporter: reporter.as_str(),
                room_id: Some(room_id),
                event_id: Some(event_id),
                user_id: None,
                reason,
                received_ts: now_millis(),
            })
            .await?;
        tracing::info!(%reporter, room_id, event_id, "content reported");
        Ok(())
    }

    /// `POST /rooms/{roomId}/report`: a room this server knows (`M_NOT_FOUND` otherwise).
    pub async fn report_room(&self, reporter: &UserId, room_id: &str, reason: &str) -> Result<()> {
        check_reason(Some(reason))?;
        if self.store.room(room_id).await?.is_none() {
            return Err(Error::NotFound("Room not found".to_owned()));
        }
        self.store
            .add_report(&NewReport {
                reporter: reporter.as_str(),
                room_id: Some(room_id),
                event_id: None,
                user_id: None,
                reason: Some(reason),
                received_ts: now_millis(),
            })
            .await?;
        tracing::info!(%reporter, room_id, "room reported");
        Ok(())
    }
}
