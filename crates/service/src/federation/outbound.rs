//! [`Outbound`]: the one door for requests to other servers. Every request asks the
//! per-destination [`Backoff`] first (a destination that is backing off gets no request: the
//! caller gets [`FederationError::NotRetrying`] at once), then goes through the signed
//! [`FederationClient`], and its outcome feeds the backoff: an answer (even an error status
//! about the request) means the destination is up; an unreachable or failing destination
//! (transport errors, refused addresses, 5xx, 429) waits longer.

use std::sync::Arc;

use myelin_federation::{
    FederationClient, FederationError,
    media::{MediaEndpoint, MediaRequest, RemoteMedia},
};
use ruma::{
    ServerName,
    api::{OutgoingRequest, path_builder::SinglePath},
};

use super::backoff::Backoff;
use crate::now_millis;

/// Signed requests to other servers, through their backoff.
#[derive(Debug)]
pub struct Outbound {
    client: Arc<FederationClient>,
    backoff: Arc<Backoff>,
}

impl Outbound {
    pub fn new(client: Arc<FederationClient>, backoff: Arc<Backoff>) -> Self {
        Outbound { client, backoff }
    }

    /// This server's name (the X-Matrix origin).
    pub fn server_name(&self) -> &ServerName {
        self.client.server_name()
    }

    /// The per-destination backoff every request consults.
    pub fn backoff(&self) -> &Arc<Backoff> {
        &self.backoff
    }

    /// Sends `request` to `destination`, signed, unless the destination is backing off, and
    /// records the outcome in its backoff.
    pub async fn send<R>(
        &self,
        destination: &ServerName,
        request: R,
    ) -> Result<R::IncomingResponse, FederationError>
    where
        R: OutgoingRequest<PathBuilder = SinglePath>,
    {
        self.send_bounded(destination, request, None).await
    }

    /// [`Self::send`] reading at most `limit` bytes of the answer (see
    /// `FederationClient::send_limited`): for answers with a known bound, so that a peer cannot
    /// make this server buffer and parse more.
    pub async fn send_limited<R>(
        &self,
        destination: &ServerName,
        request: R,
        limit: usize,
    ) -> Result<R::IncomingResponse, FederationError>
    where
        R: OutgoingRequest<PathBuilder = SinglePath>,
    {
        self.send_bounded(destination, request, Some(limit)).await
    }

    /// Asks `destination` for its media (see `FederationClient::get_media`), through its
    /// backoff like every other request. The content is read by the caller afterwards: a
    /// failure while reading it does not count against the destination.
    pub async fn get_media(
        &self,
        destination: &ServerName,
        request: &MediaRequest<'_>,
        endpoint: MediaEndpoint,
    ) -> Result<RemoteMedia, FederationError> {
        let started = now_millis();
        if let Err(retry_at_ms) = self.backoff.admit(destination, started) {
            return Err(FederationError::NotRetrying { retry_at_ms });
        }
        let result = self.client.get_media(destination, request, endpoint).await;
        match &result {
            // The media's own state (a pending upload, a file too large for the origin to
            // serve), answered with a 5xx: the destination is up.
            Err(FederationError::Status { body, .. })
                if body.contains("M_NOT_YET_UPLOADED") || body.contains("M_TOO_LARGE") =>
            {
                self.backoff.answered(destination).await;
            }
            _ => {
                self.record(destination, started, result.as_ref().err())
                    .await;
            }
        }
        result
    }

    /// Feeds a request's outcome to the destination's backoff.
    async fn record(
        &self,
        destination: &ServerName,
        started: i64,
        error: Option<&FederationError>,
    ) {
        match error {
            None => self.backoff.answered(destination).await,
            Some(err) if err.is_destination_failure() => {
                self.backoff
                    .failed(destination, started, &err.to_string())
                    .await;
            }
            Some(
                FederationError::Status { .. }
                | FederationError::TooLarge(_)
                | FederationError::Response(_),
            ) => self.backoff.answered(destination).await,
            // Failures of this side (building the request) say nothing about the destination.
            Some(_) => {}
        }
    }

    async fn send_bounded<R>(
        &self,
        destination: &ServerName,
        request: R,
        limit: Option<usize>,
    ) -> Result<R::IncomingResponse, FederationError>
    where
        R: OutgoingRequest<PathBuilder = SinglePath>,
    {
        let started = now_millis();
        if let Err(retry_at_ms) = self.backoff.admit(destination, started) {
            return Err(FederationError::NotRetrying { retry_at_ms });
        }
        let result = match limit {
            Some(limit) => self.client.send_limited(destination, request, limit).await,
            None => self.client.send(destination, request).await,
        };
        self.record(destination, started, result.as_ref().err())
            .await;
        result
    }
}
