//! Other servers' media, fetched for local users and cached: the federation endpoints first,
//! the deprecated `/_matrix/media/v3` ones for servers that do not know them (404 or 400
//! `M_UNRECOGNIZED`, or a bare 404/405/400 without a Matrix error), always through
//! `Services::federation` (so a failing server's backoff applies).
//!
//! The content is written as it arrives into the same content-addressed files as uploads,
//! counted against `media.max_remote_size` (past it: 502 `M_TOO_LARGE` and the temporary file
//! removed, nothing recorded), and recorded only once it is in place. Concurrent requests for
//! the same media (or the same thumbnail of it) share one download: the first runs it, the
//! others wait for its outcome and then read the cache (or get its error).
//!
//! Thumbnails of remote media are asked of their origin and cached per requested size and
//! method, rather than made here from the original: a thumbnail is a small fraction of its
//! original (an avatar of a large photo, the poster frame of a video this server could not
//! decode), so a client scrolling a timeline does not make this server download every
//! original in full, and the origin's thumbnailer knows its own formats.

use std::{collections::HashMap, sync::Arc, time::Duration};

use myelin_federation::{
    FederationError,
    media::{MediaEndpoint, MediaRequest, RemoteMedia},
};
use myelin_store::{RemoteMediaRow, RemoteThumbnailRow};
use ruma::ServerName;

use super::{Media, MediaContent, ThumbnailMethod};
use crate::{Error, Result, now_millis};

/// What one shared download is for: an original (`None`) or a thumbnail of it.
pub(super) type FetchKey = (String, String, Option<(u32, u32, ThumbnailMethod)>);

/// The downloads under way, each shared by whoever asks for the same thing meanwhile.
pub(super) type InFlight =
    std::sync::Mutex<HashMap<FetchKey, Arc<tokio::sync::OnceCell<Result<(), Error>>>>>;

/// A request's hold on a shared download; when it lets go, the download leaves the map once
/// it has settled (the next request reads the cache, or after a failure tries again) or once
/// no other request waits on it (its fetcher went away with nobody to take over), so that
/// abandoned downloads leave nothing behind.
struct InFlightEntry<'a> {
    in_flight: &'a InFlight,
    key: FetchKey,
    cell: Arc<tokio::sync::OnceCell<Result<(), Error>>>,
}

impl Drop for InFlightEntry<'_> {
    fn drop(&mut self) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let ours = in_flight
            .get(&self.key)
            .is_some_and(|c| Arc::ptr_eq(c, &self.cell));
        // Two holders: the map and this request.
        if ours && (self.cell.initialized() || Arc::strong_count(&self.cell) <= 2) {
            in_flight.remove(&self.key);
        }
    }
}

impl Media {
    /// Another server's media, from the cache or fetched into it.
    pub(super) async fn remote_download(
        &self,
        origin: &ServerName,
        media_id: &str,
        timeout: Duration,
    ) -> Result<MediaContent> {
        if let Some(content) = self.cached_original(origin, media_id).await? {
            return Ok(content);
        }
        let key = (origin.to_string(), media_id.to_owned(), None);
        self.single_flight(key, || self.fetch_original(origin, media_id, timeout))
            .await?;
        self.cached_original(origin, media_id)
            .await?
            .ok_or_else(|| Error::NotFound("Media not found".to_owned()))
    }

    /// A thumbnail of another server's media, from the cache or asked of that server.
    pub(super) async fn remote_thumbnail(
        &self,
        origin: &ServerName,
        media_id: &str,
        (width, height, method): (u32, u32, ThumbnailMethod),
        timeout: Duration,
    ) -> Result<MediaContent> {
        let target = (width, height, method);
        if let Some(content) = self.cached_thumbnail(origin, media_id, target).await? {
            return Ok(content);
        }
        let key = (origin.to_string(), media_id.to_owned(), Some(target));
        self.single_flight(key, || {
            self.fetch_thumbnail(origin, media_id, target, timeout)
        })
        .await?;
        self.cached_thumbnail(origin, media_id, target)
            .await?
            .ok_or_else(|| Error::NotFound("Media not found".to_owned()))
    }

    async fn cached_original(
        &self,
        origin: &ServerName,
        media_id: &str,
    ) -> Result<Option<MediaContent>> {
        let Some(row) = self.store.remote_media(origin.as_str(), media_id).await? else {
            return Ok(None);
        };
        let (file, size) = self.open_content(&row.sha256).await?;
        Ok(Some(MediaContent {
            file,
            size,
            content_type: row.content_type,
            filename: row.filename,
        }))
    }

    async fn cached_thumbnail(
        &self,
        origin: &ServerName,
        media_id: &str,
        (width, height, method): (u32, u32, ThumbnailMethod),
    ) -> Result<Option<MediaContent>> {
        let Some(row) = self
            .store
            .remote_thumbnail(
                origin.as_str(),
                media_id,
                i64::from(width),
                i64::from(height),
                method.as_str(),
            )
            .await?
        else {
            return Ok(None);
        };
        let (file, size) = self.open_content(&row.sha256).await?;
        Ok(Some(MediaContent {
            file,
            size,
            content_type: Some(row.content_type),
            filename: None,
        }))
    }

    /// Runs `fetch` unless the same download is under way, in which case its outcome is
    /// awaited instead. A fetch whose caller went away is taken over by the next waiter.
    async fn single_flight<F, Fut>(&self, key: FetchKey, fetch: F) -> Result<()>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let cell = self
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        let entry = InFlightEntry {
            in_flight: &self.in_flight,
            key,
            cell,
        };
        match entry.cell.get_or_init(fetch).await {
            Ok(()) => Ok(()),
            Err(err) => Err(replay(err)),
        }
    }

    fn outbound(&self) -> Result<&crate::federation::Outbound> {
        self.federation
            .as_deref()
            .ok_or_else(|| Error::NotFound("Media not found".to_owned()))
    }

    /// The largest remote media fetched.
    fn max_remote_size(&self) -> u64 {
        self.config
            .max_remote_size
            .unwrap_or(self.config.max_upload_size)
    }

    /// Asks `origin` through the federation endpoint, then the deprecated one if it does not
    /// know the first.
    async fn ask(&self, origin: &ServerName, request: &MediaRequest<'_>) -> Result<RemoteMedia> {
        let outbound = self.outbound()?;
        match outbound
            .get_media(origin, request, MediaEndpoint::Federation)
            .await
        {
            Ok(media) => Ok(media),
            Err(err) if endpoint_unknown(&err) => {
                tracing::debug!(%origin, %err, "no federation media endpoint: trying the legacy one");
                outbound
                    .get_media(origin, request, MediaEndpoint::Legacy)
                    .await
                    .map_err(|err| remote_error(origin, err))
            }
            Err(err) => Err(remote_error(origin, err)),
        }
    }

    async fn fetch_original(
        &self,
        origin: &ServerName,
        media_id: &str,
        timeout: Duration,
    ) -> Result<()> {
        // Another request may have filled the cache between its check and this download.
        if self
            .store
            .remote_media(origin.as_str(), media_id)
            .await?
            .is_some()
        {
            return Ok(());
        }
        let request = MediaRequest::Download {
            media_id,
            timeout_ms: duration_ms(timeout),
        };
        let media = self.ask(origin, &request).await?;
        let content_type = media.content_type.clone();
        let filename = media.content_disposition.as_deref().and_then(filename_of);
        let (tmp, sha256, size) = self.receive(origin, media).await?;
        let row = RemoteMediaRow {
            origin: origin.to_string(),
            media_id: media_id.to_owned(),
            sha256: sha256.clone(),
            size: i64::try_from(size).unwrap_or(i64::MAX),
            content_type,
            filename,
            fetched_ts: now_millis(),
        };
        let _guard = self.lock_content().await?;
        self.place(tmp, &sha256).await?;
        if let Err(err) = self.store.insert_remote_media(&row).await {
            self.forget_if_unreferenced(&sha256).await;
            return Err(err.into());
        }
        Ok(())
    }

    async fn fetch_thumbnail(
        &self,
        origin: &ServerName,
        media_id: &str,
        (width, height, method): (u32, u32, ThumbnailMethod),
        timeout: Duration,
    ) -> Result<()> {
        let (req_width, req_height) = (i64::from(width), i64::from(height));
        if self
            .store
            .remote_thumbnail(
                origin.as_str(),
                media_id,
                req_width,
                req_height,
                method.as_str(),
            )
            .await?
            .is_some()
        {
            return Ok(());
        }
        let request = MediaRequest::Thumbnail {
            media_id,
            width,
            height,
            method: method.as_str(),
            animated: None,
            timeout_ms: duration_ms(timeout),
        };
        let media = self.ask(origin, &request).await?;
        let content_type = media
            .content_type
            .clone()
            .unwrap_or_else(|| "application/octet-stream".to_owned());
        let (tmp, sha256, size) = self.receive(origin, media).await?;
        let row = RemoteThumbnailRow {
            origin: origin.to_string(),
            media_id: media_id.to_owned(),
            req_width,
            req_height,
            method: method.as_str().to_owned(),
            content_type,
            sha256: sha256.clone(),
            size: i64::try_from(size).unwrap_or(i64::MAX),
            fetched_ts: now_millis(),
        };
        let _guard = self.lock_content().await?;
        self.place(tmp, &sha256).await?;
        if let Err(err) = self.store.insert_remote_thumbnail(&row).await {
            self.forget_if_unreferenced(&sha256).await;
            return Err(err.into());
        }
        Ok(())
    }

    /// Writes the content to a temporary file as it arrives, within `max_remote_size`.
    async fn receive(
        &self,
        origin: &ServerName,
        mut media: RemoteMedia,
    ) -> Result<(super::TempPath, String, u64)> {
        let limit = self.max_remote_size();
        let too_large = || {
            Error::RemoteTooLarge(format!(
                "The media is larger than the limit of {limit} bytes this server fetches"
            ))
        };
        if media.declared_length.is_some_and(|len| len > limit) {
            return Err(too_large());
        }
        let mut writer = self.writer(limit).await?;
        loop {
            let chunk = media
                .chunk()
                .await
                .map_err(|err| remote_error(origin, err))?;
            let Some(chunk) = chunk else { break };
            writer.write(&chunk).await.map_err(|err| match err {
                Error::TooLarge(_) => too_large(),
                other => other,
            })?;
        }
        writer.finish().await
    }

    /// Deletes cached remote media `(origin, media id)` with their cached thumbnails, and
    /// every file nothing names any more. How many media ids had anything cached.
    pub async fn delete_remote(&self, ids: &[(String, String)]) -> Result<u64> {
        let _guard = self.lock_content().await?;
        let deleted = self.store.delete_remote_media(ids).await?;
        self.remove_unreferenced(&deleted.unreferenced).await;
        Ok(deleted.media)
    }

    /// Deletes the cached remote media of which anything was fetched before `before_ts`
    /// (milliseconds). How many.
    pub async fn delete_remote_fetched_before(&self, before_ts: i64) -> Result<u64> {
        let mut total = 0;
        loop {
            let batch = self
                .store
                .remote_media_fetched_before(before_ts, 500)
                .await?;
            if batch.is_empty() {
                return Ok(total);
            }
            total += self.delete_remote(&batch).await?;
        }
    }

    /// The remote media cache's size, for `/metrics`.
    pub async fn remote_totals(&self) -> Result<myelin_store::RemoteMediaTotals> {
        Ok(self.store.remote_media_totals().await?)
    }
}

fn duration_ms(timeout: Duration) -> u64 {
    u64::try_from(timeout.min(super::MAX_DOWNLOAD_WAIT).as_millis()).unwrap_or(u64::MAX)
}

/// The `errcode` of a Matrix error body, if it is one.
fn errcode(body: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(body).ok()?;
    value.get("errcode")?.as_str().map(str::to_owned)
}

/// Whether the server does not know the federation media endpoints (it predates them): the
/// spec's 404 `M_UNRECOGNIZED` (some answer 400 with it), or a bare 404, 405 or 400 that is
/// no Matrix error at all (a proxy in front of an old server).
fn endpoint_unknown(err: &FederationError) -> bool {
    let FederationError::Status { status, body } = err else {
        return false;
    };
    match errcode(body).as_deref() {
        Some("M_UNRECOGNIZED") => true,
        Some(_) => false,
        None => matches!(status, 400 | 404 | 405),
    }
}

/// What the client is told about a failed fetch: the origin's "not found" and "not yet
/// uploaded" and "too large" as the spec's errors, anything else 502.
fn remote_error(origin: &ServerName, err: FederationError) -> Error {
    if let FederationError::Status { status, body } = &err {
        match (status, errcode(body).as_deref()) {
            (404, _) => return Error::NotFound("Media not found".to_owned()),
            (_, Some("M_NOT_YET_UPLOADED")) => {
                return Error::NotYetUploaded("Media has not been uploaded yet".to_owned());
            }
            (_, Some("M_TOO_LARGE")) => {
                return Error::RemoteTooLarge(format!("{origin} says the media is too large"));
            }
            _ => {}
        }
    }
    Error::BadGateway(format!("Could not fetch the media from {origin}: {err}"))
}

/// The same error again, for each request that shared a failed download.
fn replay(err: &Error) -> Error {
    match err {
        Error::NotFound(m) => Error::NotFound(m.clone()),
        Error::NotYetUploaded(m) => Error::NotYetUploaded(m.clone()),
        Error::RemoteTooLarge(m) => Error::RemoteTooLarge(m.clone()),
        Error::BadGateway(m) => Error::BadGateway(m.clone()),
        other => Error::Internal(other.to_string()),
    }
}

/// The file name a `Content-Disposition` header gives (`filename*` decoded), if any.
fn filename_of(header: &str) -> Option<String> {
    header
        .parse::<ruma::http_headers::ContentDisposition>()
        .ok()?
        .filename
        .filter(|name| !name.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_servers_are_told_from_unknown_media() {
        let status = |status, body: &str| FederationError::Status {
            status,
            body: body.to_owned(),
        };
        assert!(endpoint_unknown(&status(
            404,
            r#"{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}"#
        )));
        assert!(endpoint_unknown(&status(
            400,
            r#"{"errcode":"M_UNRECOGNIZED"}"#
        )));
        assert!(endpoint_unknown(&status(404, "404 page not found")));
        assert!(endpoint_unknown(&status(405, "")));
        assert!(!endpoint_unknown(&status(
            404,
            r#"{"errcode":"M_NOT_FOUND"}"#
        )));
        assert!(!endpoint_unknown(&status(500, "")));
        assert!(!endpoint_unknown(&FederationError::Transport("x".into())));
        let origin = <&ServerName>::try_from("hs2.test").unwrap();
        assert!(matches!(
            remote_error(origin, status(404, r#"{"errcode":"M_NOT_FOUND"}"#)),
            Error::NotFound(_)
        ));
        assert!(matches!(
            remote_error(origin, status(504, r#"{"errcode":"M_NOT_YET_UPLOADED"}"#)),
            Error::NotYetUploaded(_)
        ));
        assert!(matches!(
            remote_error(origin, status(500, "")),
            Error::BadGateway(_)
        ));
    }

    #[tokio::test]
    async fn shared_downloads_leave_nothing_behind() {
        let in_flight = InFlight::default();
        let key: FetchKey = ("hs2.test".into(), "m".into(), None);
        let cell = in_flight
            .lock()
            .unwrap()
            .entry(key.clone())
            .or_default()
            .clone();
        // A fetcher that went away before finishing, with nobody waiting: the entry goes.
        drop(InFlightEntry {
            in_flight: &in_flight,
            key: key.clone(),
            cell,
        });
        assert!(in_flight.lock().unwrap().is_empty());
        // One that went away while another waits: the entry stays for the other.
        let cell = in_flight
            .lock()
            .unwrap()
            .entry(key.clone())
            .or_default()
            .clone();
        let waiter = cell.clone();
        drop(InFlightEntry {
            in_flight: &in_flight,
            key: key.clone(),
            cell,
        });
        assert_eq!(in_flight.lock().unwrap().len(), 1);
        // Settled: the entry goes.
        waiter.set(Ok(())).unwrap();
        drop(InFlightEntry {
            in_flight: &in_flight,
            key,
            cell: waiter,
        });
        assert!(in_flight.lock().unwrap().is_empty());
    }

    #[test]
    fn file_names_come_from_the_disposition() {
        assert_eq!(
            filename_of("attachment; filename*=utf-8''gr%C3%B6%C3%9Fe%20bild.png").as_deref(),
            Some("größe bild.png")
        );
        assert_eq!(
            filename_of("inline; filename=\"plain.txt\"").as_deref(),
            Some("plain.txt")
        );
        assert_eq!(filename_of("inline"), None);
    }
}
