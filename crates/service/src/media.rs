//! The media repository: local uploads (direct and asynchronous), downloads, thumbnails, and
//! deleting media. Owns the content directory on disk; the store holds the metadata.
//!
//! Content is named by its SHA-256 (`content/ab/cd/abcd…`), so identical uploads share one
//! file. An upload is written to `tmp/`, flushed to disk, and renamed into place before its row
//! is written: a crash at any point leaves at worst a file that no media id names (reused by
//! the next identical upload), never a media id naming a missing or half-written file. Files
//! are deleted only when the store says no media id or thumbnail names their hash; placing
//! content and deleting it take the same lock, so a deletion can never remove a file that an
//! upload has just decided to reuse. That lock is a mutex in the process and a file lock on
//! `lock` in the media directory, so `myelin delete-media` run beside a running server takes
//! turns with it; each process writes uploads in a `tmp/` directory of its own, file-locked
//! while it lives, so a starting process clears only what dead ones left.
//!
//! Thumbnails are stored like uploads (same directory, same reference counting), made on first
//! request and, for the sizes clients ask most, in the background right after an image upload.
//!
//! Other servers' media is fetched over federation for local users and cached beside local
//! media ([`remote`]); other servers are served only this server's own media.

use std::{
    io::Cursor,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use myelin_store::{CreatePending, MediaRow, Store, ThumbnailRow};
use ruma::{OwnedMxcUri, ServerName};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::{Error, Result, config::MediaConfig, federation::Outbound, now_millis};

mod remote;

/// Characters of a media id this server makes (the spec allows `[A-Za-z0-9_-]`).
const MEDIA_ID_LENGTH: usize = 24;
/// The longest media id accepted in a request.
const MAX_MEDIA_ID_LENGTH: usize = 255;
/// How much of an upload is gathered before it is written to its file.
const WRITE_BUFFER: usize = 256 * 1024;
/// The longest wait for a pending upload a client may ask for (`timeout_ms`).
const MAX_DOWNLOAD_WAIT: Duration = Duration::from_secs(120);
/// The thumbnails made at upload: the sizes the spec suggests servers prepare (and clients
/// ask for: avatars, timeline images).
const PREGENERATED_THUMBNAILS: &[(u32, u32, ThumbnailMethod)] = &[
    (32, 32, ThumbnailMethod::Crop),
    (96, 96, ThumbnailMethod::Crop),
    (320, 240, ThumbnailMethod::Scale),
    (640, 480, ThumbnailMethod::Scale),
    (800, 600, ThumbnailMethod::Scale),
];
/// The largest thumbnail side a client may ask for; larger requests are clamped.
const MAX_THUMBNAIL_SIDE: u32 = 1920;

/// The types browsers may render in place. Everything else is sent as an attachment, so that
/// uploaded HTML, SVG or scripts never run in the server's origin.
const INLINE_CONTENT_TYPES: &[&str] = &[
    "text/plain",
    "image/jpeg",
    "image/gif",
    "image/png",
    "image/apng",
    "image/webp",
    "image/avif",
    "video/mp4",
    "video/webm",
    "video/ogg",
    "video/quicktime",
    "audio/mp4",
    "audio/webm",
    "audio/aac",
    "audio/mpeg",
    "audio/ogg",
    "audio/wave",
    "audio/wav",
    "audio/x-wav",
    "audio/x-pn-wav",
    "audio/flac",
    "audio/x-flac",
];

/// Whether content of this type may be shown inline (parameters such as `charset` ignored).
pub fn is_inline_content_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    INLINE_CONTENT_TYPES.contains(&essence.as_str())
}

/// Whether `media_id` is a well-formed media id (also what keeps it out of paths: it is never
/// used as one, but nothing with `/` or `.` gets that far).
pub fn is_valid_media_id(media_id: &str) -> bool {
    !media_id.is_empty()
        && media_id.len() <= MAX_MEDIA_ID_LENGTH
        && media_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// How a thumbnail is fitted to the requested size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ThumbnailMethod {
    /// Exactly the requested size (never larger than the original), cropped to fill it.
    Crop,
    /// Within the requested size, aspect ratio kept.
    Scale,
}

impl ThumbnailMethod {
    fn as_str(self) -> &'static str {
        match self {
            ThumbnailMethod::Crop => "crop",
            ThumbnailMethod::Scale => "scale",
        }
    }
}

/// A file ready to be streamed to a client.
#[derive(Debug)]
pub struct MediaContent {
    pub file: tokio::fs::File,
    pub size: u64,
    pub content_type: Option<String>,
    pub filename: Option<String>,
}

/// A reserved media id for an asynchronous upload.
#[derive(Debug, Clone)]
pub struct PendingMedia {
    pub content_uri: OwnedMxcUri,
    pub expires_ts: i64,
}

/// An upload being written: a temporary file, its hash and size so far. Dropped before
/// [`Media::upload`] or [`Media::upload_pending`] takes it, the temporary file is removed.
#[derive(Debug)]
pub struct ContentWriter {
    /// Buffered: request bodies arrive in frames of a few KiB, and every write to a tokio file
    /// is a trip to the blocking pool.
    file: tokio::io::BufWriter<tokio::fs::File>,
    tmp: TempPath,
    hasher: Sha256,
    size: u64,
    limit: u64,
}

impl ContentWriter {
    /// Appends a chunk; `TooLarge` (and nothing kept) past the upload size limit.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<()> {
        let size = self.size.saturating_add(chunk.len() as u64);
        if size > self.limit {
            return Err(too_large(self.limit));
        }
        self.file.write_all(chunk).await.map_err(io_error)?;
        self.hasher.update(chunk);
        self.size = size;
        Ok(())
    }

    /// Flushes the content to disk; its hash (hex) and size.
    async fn finish(mut self) -> Result<(TempPath, String, u64)> {
        self.file.flush().await.map_err(io_error)?;
        self.file.get_mut().sync_all().await.map_err(io_error)?;
        let hash = hex::encode(self.hasher.finalize());
        Ok((self.tmp, hash, self.size))
    }
}

/// The content lock, held (see [`Media::lock_content`]).
struct ContentGuard<'a> {
    _guard: tokio::sync::MutexGuard<'a, ()>,
    file: std::fs::File,
}

impl Drop for ContentGuard<'_> {
    fn drop(&mut self) {
        // The lock belongs to the open file, which this process keeps open: release it here.
        let _ = self.file.unlock();
    }
}

/// A file in `tmp/`, removed when dropped unless it has been renamed away.
#[derive(Debug)]
struct TempPath(Option<PathBuf>);

impl Drop for TempPath {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn too_large(limit: u64) -> Error {
    Error::TooLarge(format!("Upload is larger than the limit of {limit} bytes"))
}

fn io_error(err: std::io::Error) -> Error {
    Error::Internal(format!("media storage: {err}"))
}

/// The media repository (see the module documentation).
#[derive(Debug)]
pub struct Media {
    store: Store,
    server_name: ruma::OwnedServerName,
    config: MediaConfig,
    root: PathBuf,
    /// This process's directory for uploads being written, and the lock that says it is alive.
    tmp: PathBuf,
    _tmp_lock: std::fs::File,
    /// Held while content is placed and its row written, and while rows are deleted and their
    /// unreferenced files removed (with `lock_file` locked, for other processes).
    content_lock: tokio::sync::Mutex<()>,
    lock_file: std::fs::File,
    /// Woken whenever a pending upload completes (downloads waiting on one re-check).
    uploaded: tokio::sync::Notify,
    /// Bounds how many thumbnails are decoded at once (each can take up to
    /// `max_thumbnail_source_pixels` × 4 bytes).
    thumbnailers: Arc<tokio::sync::Semaphore>,
    /// Where other servers' media is fetched through; `None`: remote media is not found.
    federation: Option<Arc<Outbound>>,
    /// Downloads of remote media under way, shared by concurrent requests.
    in_flight: remote::InFlight,
}

impl Media {
    /// Opens the media directory under `root`, creating it if needed, and removes temporary
    /// files that crashed processes left behind (uploads that never finished).
    ///
    /// Each process writes its uploads in a directory of its own under `tmp/`, file-locked
    /// (`tmp/<name>.lock`) for as long as the process lives, so that `myelin delete-media`
    /// starting beside a running server never removes that server's uploads in progress.
    pub fn open(
        store: Store,
        server_name: ruma::OwnedServerName,
        config: MediaConfig,
        root: PathBuf,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(root.join("content"))?;
        let tmp_root = root.join("tmp");
        std::fs::create_dir_all(&tmp_root)?;
        remove_abandoned_uploads(&tmp_root)?;
        let tmp_name: String = rand::Rng::sample_iter(rand::rng(), rand::distr::Alphanumeric)
            .take(16)
            .map(char::from)
            .collect();
        let tmp_lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(tmp_root.join(format!("{tmp_name}.lock")))?;
        tmp_lock.lock()?;
        let tmp = tmp_root.join(tmp_name);
        std::fs::create_dir_all(&tmp)?;
        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(root.join("lock"))?;
        let parallelism = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Media {
            store,
            server_name,
            config,
            root,
            tmp,
            _tmp_lock: tmp_lock,
            content_lock: tokio::sync::Mutex::new(()),
            lock_file,
            uploaded: tokio::sync::Notify::new(),
            thumbnailers: Arc::new(tokio::sync::Semaphore::new(parallelism)),
            federation: None,
            in_flight: Default::default(),
        })
    }

    /// Fetches other servers' media through `outbound` (else remote media is not found).
    pub fn with_federation(mut self, outbound: Arc<Outbound>) -> Self {
        self.federation = Some(outbound);
        self
    }

    /// Takes the content lock: this process's mutex, then the file lock other processes take.
    async fn lock_content(&self) -> Result<ContentGuard<'_>> {
        let _guard = self.content_lock.lock().await;
        let file = self.lock_file.try_clone().map_err(io_error)?;
        let file = tokio::task::spawn_blocking(move || file.lock().map(|()| file))
            .await
            .map_err(|err| Error::Internal(err.to_string()))?
            .map_err(io_error)?;
        Ok(ContentGuard { _guard, file })
    }

    /// The upload size limit, in bytes.
    pub fn max_upload_size(&self) -> u64 {
        self.config.max_upload_size
    }

    /// Whether the deprecated unauthenticated endpoints are served.
    pub fn legacy_endpoints(&self) -> bool {
        self.config.legacy_endpoints
    }

    /// Where the content with this hash lives. Hashes come from this process or the store,
    /// never from a request; one that is not 64 hex digits (a damaged row) is an error, never a
    /// path.
    fn content_path(&self, sha256: &str) -> Result<PathBuf> {
        content_path_in(&self.root, sha256)
            .ok_or_else(|| Error::Internal(format!("malformed content hash `{sha256}`")))
    }

    /// Starts writing an upload to a temporary file.
    pub async fn begin_upload(&self) -> Result<ContentWriter> {
        self.writer(self.config.max_upload_size).await
    }

    async fn writer(&self, limit: u64) -> Result<ContentWriter> {
        let name: String = rand::Rng::sample_iter(rand::rng(), rand::distr::Alphanumeric)
            .take(32)
            .map(char::from)
            .collect();
        let path = self.tmp.join(name);
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(io_error)?;
        Ok(ContentWriter {
            file: tokio::io::BufWriter::with_capacity(WRITE_BUFFER, file),
            tmp: TempPath(Some(path)),
            hasher: Sha256::new(),
            size: 0,
            limit,
        })
    }

    /// Moves finished content into place under its hash (unless the same content is already
    /// there). Call with `content_lock` held.
    async fn place(&self, mut tmp: TempPath, sha256: &str) -> Result<()> {
        let target = self.content_path(sha256)?;
        if tokio::fs::try_exists(&target).await.map_err(io_error)? {
            return Ok(()); // Deduplicated: `tmp` is removed on drop.
        }
        let dir = target
            .parent()
            .ok_or_else(|| Error::Internal("content path has no parent".to_owned()))?
            .to_path_buf();
        tokio::fs::create_dir_all(&dir).await.map_err(io_error)?;
        let from = tmp
            .0
            .take()
            .ok_or_else(|| Error::Internal("temporary file already placed".to_owned()))?;
        if let Err(err) = tokio::fs::rename(&from, &target).await {
            let _ = tokio::fs::remove_file(&from).await;
            return Err(io_error(err));
        }
        // The rename is durable only once the directory holding the new name is on disk.
        tokio::task::spawn_blocking(move || std::fs::File::open(&dir)?.sync_all())
            .await
            .map_err(|err| Error::Internal(err.to_string()))?
            .map_err(io_error)?;
        Ok(())
    }

    /// Removes content nothing names after a failed row write (call with `content_lock`
    /// held). Best effort: a leftover file is harmless.
    async fn forget_if_unreferenced(&self, sha256: &str) {
        if let Ok(false) = self.store.content_referenced(sha256).await
            && let Ok(path) = self.content_path(sha256)
        {
            let _ = tokio::fs::remove_file(path).await;
        }
    }

    /// Refuses an upload of `size` bytes that would take `user_id` past
    /// `media.max_bytes_per_user` (403 `M_FORBIDDEN`, as the spec gives quotas). Called with the
    /// content lock held, so this process's uploads are counted one after another.
    async fn check_quota(&self, user_id: &str, size: u64) -> Result<()> {
        let Some(quota) = self.config.max_bytes_per_user else {
            return Ok(());
        };
        let used = u64::try_from(self.store.media_bytes_of_user(user_id).await?).unwrap_or(0);
        if used.saturating_add(size) > quota {
            return Err(Error::Forbidden(format!(
                "Media quota exceeded: {used} of {quota} bytes used, this upload is {size}"
            )));
        }
        Ok(())
    }

    fn new_media_id() -> String {
        rand::Rng::sample_iter(rand::rng(), rand::distr::Alphanumeric)
            .take(MEDIA_ID_LENGTH)
            .map(char::from)
            .collect()
    }

    fn mxc(&self, media_id: &str) -> OwnedMxcUri {
        OwnedMxcUri::from(format!("mxc://{}/{media_id}", self.server_name))
    }

    /// Stores a finished upload under a new media id and returns its `mxc://` URI. Images get
    /// their most asked-for thumbnails made in the background (`media.thumbnails_at_upload`).
    pub async fn upload(
        self: &Arc<Self>,
        user_id: &str,
        content_type: Option<&str>,
        filename: Option<&str>,
        writer: ContentWriter,
    ) -> Result<OwnedMxcUri> {
        let (tmp, sha256, size) = writer.finish().await?;
        let now = now_millis();
        let row = MediaRow {
            media_id: Self::new_media_id(),
            user_id: user_id.to_owned(),
            sha256: Some(sha256.clone()),
            size: Some(i64::try_from(size).unwrap_or(i64::MAX)),
            content_type: content_type.map(str::to_owned),
            filename: filename.map(str::to_owned),
            created_ts: now,
            expires_ts: None,
            uploaded_ts: Some(now),
        };
        {
            let _guard = self.lock_content().await?;
            self.check_quota(user_id, size).await?;
            self.place(tmp, &sha256).await?;
            if let Err(err) = self.store.insert_media(&row).await {
                self.forget_if_unreferenced(&sha256).await;
                return Err(err.into());
            }
        }
        self.thumbnails_at_upload(&row);
        Ok(self.mxc(&row.media_id))
    }

    fn thumbnails_at_upload(self: &Arc<Self>, row: &MediaRow) {
        let is_image = row
            .content_type
            .as_deref()
            .is_some_and(|t| t.to_ascii_lowercase().starts_with("image/"));
        if !self.config.thumbnails_at_upload || !is_image {
            return;
        }
        let Some(sha256) = row.sha256.clone() else {
            return;
        };
        let (media, media_id, size) = (self.clone(), row.media_id.clone(), row.size);
        tokio::spawn(async move {
            media.pregenerate_thumbnails(&media_id, &sha256, size).await;
        });
    }

    /// Reserves a media id for `user_id` to upload to later (`POST /create`).
    pub async fn create_pending(&self, user_id: &str) -> Result<PendingMedia> {
        let now = now_millis();
        let lifetime = i64::try_from(self.config.pending_upload_expiry_secs.saturating_mul(1000))
            .unwrap_or(i64::MAX);
        let expires_ts = now.saturating_add(lifetime);
        let media_id = Self::new_media_id();
        match self
            .store
            .create_pending_media(
                &media_id,
                user_id,
                now,
                expires_ts,
                self.config.max_pending_uploads,
            )
            .await?
        {
            CreatePending::Created => Ok(PendingMedia {
                content_uri: self.mxc(&media_id),
                expires_ts,
            }),
            CreatePending::TooManyPending { earliest_expiry_ts } => Err(Error::LimitExceeded {
                retry_after_ms: u64::try_from(earliest_expiry_ts.saturating_sub(now)).unwrap_or(0),
            }),
        }
    }

    /// Checks that `user_id` may upload to this pending media id, before its body is read.
    pub async fn check_pending(
        &self,
        user_id: &str,
        server_name: &ServerName,
        media_id: &str,
    ) -> Result<()> {
        if server_name != self.server_name || !is_valid_media_id(media_id) {
            return Err(Error::NotFound("Unknown media id".to_owned()));
        }
        let row = self.store.media(media_id).await?;
        pending_upload_allowed(row.as_ref(), user_id, now_millis())
    }

    /// Fills a pending media id with a finished upload (`PUT /upload/{serverName}/{mediaId}`).
    pub async fn upload_pending(
        self: &Arc<Self>,
        user_id: &str,
        server_name: &ServerName,
        media_id: &str,
        content_type: Option<&str>,
        filename: Option<&str>,
        writer: ContentWriter,
    ) -> Result<()> {
        self.check_pending(user_id, server_name, media_id).await?;
        let (tmp, sha256, size) = writer.finish().await?;
        let guard = self.lock_content().await?;
        self.check_quota(user_id, size).await?;
        self.place(tmp, &sha256).await?;
        let now = now_millis();
        let completed = self
            .store
            .complete_pending_media(
                media_id,
                user_id,
                &sha256,
                i64::try_from(size).unwrap_or(i64::MAX),
                content_type,
                filename,
                now,
            )
            .await;
        match completed {
            Ok(true) => {
                drop(guard);
                self.uploaded.notify_waiters();
                if let Ok(Some(row)) = self.store.media(media_id).await {
                    self.thumbnails_at_upload(&row);
                }
                Ok(())
            }
            Ok(false) => {
                // Someone else's upload won the race (or it expired meanwhile): say why.
                self.forget_if_unreferenced(&sha256).await;
                drop(guard);
                let row = self.store.media(media_id).await?;
                pending_upload_allowed(row.as_ref(), user_id, now)?;
                Err(Error::CannotOverwriteMedia(
                    "Media has already been uploaded".to_owned(),
                ))
            }
            Err(err) => {
                self.forget_if_unreferenced(&sha256).await;
                Err(err.into())
            }
        }
    }

    /// The row of an uploaded local media id, waiting up to `timeout` for a pending upload.
    async fn uploaded_row(
        &self,
        server_name: &ServerName,
        media_id: &str,
        timeout: Duration,
    ) -> Result<(MediaRow, String)> {
        if server_name != self.server_name || !is_valid_media_id(media_id) {
            return Err(Error::NotFound("Media not found".to_owned()));
        }
        let deadline = tokio::time::Instant::now() + timeout.min(MAX_DOWNLOAD_WAIT);
        loop {
            // Registered before the read, so an upload finishing in between still wakes us.
            let notified = self.uploaded.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let Some(row) = self.store.media(media_id).await? else {
                return Err(Error::NotFound("Media not found".to_owned()));
            };
            if let Some(sha256) = row.sha256.clone() {
                return Ok((row, sha256));
            }
            if row.expires_ts.is_some_and(|ts| ts <= now_millis()) {
                return Err(Error::NotFound("Media not found".to_owned()));
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(Error::NotYetUploaded(
                    "Media has not been uploaded yet".to_owned(),
                ));
            }
        }
    }

    async fn open_content(&self, sha256: &str) -> Result<(tokio::fs::File, u64)> {
        let file = match tokio::fs::File::open(self.content_path(sha256)?).await {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                tracing::error!(sha256, "media content missing from the media directory");
                return Err(Error::NotFound("Media not found".to_owned()));
            }
            Err(err) => return Err(io_error(err)),
        };
        let size = file.metadata().await.map_err(io_error)?.len();
        Ok((file, size))
    }

    /// A media id's content, for download: this server's, or (unless `allow_remote` is off)
    /// another server's, from the cache or fetched into it.
    pub async fn download(
        &self,
        server_name: &ServerName,
        media_id: &str,
        timeout: Duration,
        allow_remote: bool,
    ) -> Result<MediaContent> {
        if server_name != self.server_name {
            if !allow_remote || !is_valid_media_id(media_id) {
                return Err(Error::NotFound("Media not found".to_owned()));
            }
            return self.remote_download(server_name, media_id, timeout).await;
        }
        let (row, sha256) = self.uploaded_row(server_name, media_id, timeout).await?;
        let (file, size) = self.open_content(&sha256).await?;
        Ok(MediaContent {
            file,
            size,
            content_type: row.content_type,
            filename: row.filename,
        })
    }

    /// A thumbnail: of a local image, made on first request and kept; of another server's
    /// media (unless `allow_remote` is off), asked of that server and cached.
    #[allow(clippy::too_many_arguments)]
    pub async fn thumbnail(
        &self,
        server_name: &ServerName,
        media_id: &str,
        width: u32,
        height: u32,
        method: ThumbnailMethod,
        timeout: Duration,
        allow_remote: bool,
    ) -> Result<MediaContent> {
        if width == 0 || height == 0 {
            return Err(Error::Unknown(
                "Thumbnail width and height must be positive".to_owned(),
            ));
        }
        let (width, height) = (
            width.min(MAX_THUMBNAIL_SIDE),
            height.min(MAX_THUMBNAIL_SIDE),
        );
        if server_name != self.server_name {
            if !allow_remote || !is_valid_media_id(media_id) {
                return Err(Error::NotFound("Media not found".to_owned()));
            }
            return self
                .remote_thumbnail(server_name, media_id, (width, height, method), timeout)
                .await;
        }
        let (row, sha256) = self.uploaded_row(server_name, media_id, timeout).await?;
        let (req_width, req_height) = (i64::from(width), i64::from(height));
        let thumb = match self
            .store
            .thumbnail(media_id, req_width, req_height, method.as_str())
            .await?
        {
            Some(thumb) => thumb,
            None => {
                let made = self
                    .make_thumbnails(&sha256, vec![(width, height, method)], row.size)
                    .await?
                    .pop()
                    .ok_or_else(|| Error::Internal("no thumbnail made".to_owned()))?;
                self.store_thumbnail(media_id, (width, height, method), &made)
                    .await?
            }
        };
        let (file, size) = self.open_content(&thumb.sha256).await?;
        Ok(MediaContent {
            file,
            size,
            content_type: Some(thumb.content_type),
            filename: None,
        })
    }

    /// Writes a made thumbnail into the content directory and records it (the row that was
    /// there first wins a race).
    async fn store_thumbnail(
        &self,
        media_id: &str,
        (req_width, req_height, method): (u32, u32, ThumbnailMethod),
        made: &Thumbnail,
    ) -> Result<ThumbnailRow> {
        let mut writer = self.writer(u64::MAX).await?;
        writer.write(&made.bytes).await?;
        let (tmp, thumb_hash, size) = writer.finish().await?;
        let _guard = self.lock_content().await?;
        self.place(tmp, &thumb_hash).await?;
        let inserted = self
            .store
            .insert_thumbnail(&ThumbnailRow {
                media_id: media_id.to_owned(),
                req_width: i64::from(req_width),
                req_height: i64::from(req_height),
                method: method.as_str().to_owned(),
                width: i64::from(made.width),
                height: i64::from(made.height),
                content_type: made.content_type.to_owned(),
                sha256: thumb_hash.clone(),
                size: i64::try_from(size).unwrap_or(i64::MAX),
                created_ts: now_millis(),
            })
            .await;
        match inserted {
            Ok(thumb) => Ok(thumb),
            Err(err) => {
                self.forget_if_unreferenced(&thumb_hash).await;
                Err(err.into())
            }
        }
    }

    /// Makes the thumbnails clients ask for most of a new upload, decoding it once, so the
    /// first request after an upload finds them ready. Failures only mean they are made on
    /// request (or, for what is not an image, refused then).
    async fn pregenerate_thumbnails(&self, media_id: &str, sha256: &str, size: Option<i64>) {
        let targets = PREGENERATED_THUMBNAILS.to_vec();
        let made = match self.make_thumbnails(sha256, targets.clone(), size).await {
            Ok(made) => made,
            Err(err) => {
                tracing::debug!(media_id, %err, "no thumbnails made at upload");
                return;
            }
        };
        for (target, thumb) in targets.into_iter().zip(made) {
            if let Err(err) = self.store_thumbnail(media_id, target, &thumb).await {
                tracing::debug!(media_id, %err, "thumbnail made at upload not stored");
                return;
            }
        }
    }

    async fn make_thumbnails(
        &self,
        sha256: &str,
        targets: Vec<(u32, u32, ThumbnailMethod)>,
        size: Option<i64>,
    ) -> Result<Vec<Thumbnail>> {
        // The whole original is read into memory to decode it; uploads are bounded by
        // `max_upload_size`, and the decoded image by `max_thumbnail_source_pixels`.
        if size.is_some_and(|s| u64::try_from(s).unwrap_or(u64::MAX) > self.config.max_upload_size)
        {
            return Err(Error::Unknown(
                "The original is too large to thumbnail".to_owned(),
            ));
        }
        let bytes = tokio::fs::read(self.content_path(sha256)?)
            .await
            .map_err(io_error)?;
        let max_pixels = self.config.max_thumbnail_source_pixels;
        let _permit = self
            .thumbnailers
            .clone()
            .acquire_owned()
            .await
            .map_err(|err| Error::Internal(err.to_string()))?;
        tokio::task::spawn_blocking(move || make_thumbnails(&bytes, &targets, max_pixels))
            .await
            .map_err(|err| Error::Internal(format!("thumbnailer: {err}")))?
    }

    /// Deletes local media ids (and their thumbnails) and every file nothing names any more.
    /// How many media ids there were.
    pub async fn delete(&self, media_ids: &[String]) -> Result<u64> {
        let _guard = self.lock_content().await?;
        let deleted = self.store.delete_media(media_ids).await?;
        self.remove_unreferenced(&deleted.unreferenced).await;
        Ok(deleted.media)
    }

    /// Removes the content files of these hashes (nothing names them any more). Call with the
    /// content lock held.
    async fn remove_unreferenced(&self, hashes: &[String]) {
        for sha256 in hashes {
            let removed = match self.content_path(sha256) {
                Ok(path) => tokio::fs::remove_file(path).await,
                Err(err) => {
                    tracing::warn!(sha256, %err, "not removing media content");
                    continue;
                }
            };
            match removed {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => tracing::warn!(sha256, %err, "could not remove media content"),
            }
        }
    }

    /// Deletes every local media id created before `before_ts` (milliseconds). How many.
    pub async fn delete_created_before(&self, before_ts: i64) -> Result<u64> {
        let mut total = 0;
        loop {
            let batch = self.store.media_created_before(before_ts, 500).await?;
            if batch.is_empty() {
                return Ok(total);
            }
            total += self.delete(&batch).await?;
        }
    }

    /// Uploaded media ids and their bytes, for `/metrics`.
    pub async fn totals(&self) -> Result<(i64, i64)> {
        Ok(self.store.media_totals().await?)
    }
}

/// Removes what dead processes left in `tmp/`: directories whose `.lock` nobody holds, and
/// loose files.
fn remove_abandoned_uploads(tmp_root: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(tmp_root)? {
        let path = entry?.path();
        if path.is_dir() {
            let lock_path = path.with_extension("lock");
            let abandoned = match std::fs::OpenOptions::new().write(true).open(&lock_path) {
                Ok(lock) => lock.try_lock().is_ok(),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => true,
                Err(err) => return Err(err),
            };
            if abandoned {
                std::fs::remove_dir_all(&path)?;
                let _ = std::fs::remove_file(&lock_path);
            }
        } else if path.extension().is_none_or(|ext| ext != "lock") {
            std::fs::remove_file(&path)?;
        } else if !path.with_extension("").exists() {
            // A lock whose directory is gone: take it to be sure its owner is dead.
            if let Ok(lock) = std::fs::OpenOptions::new().write(true).open(&path)
                && lock.try_lock().is_ok()
            {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    Ok(())
}

/// Whether `user_id` may upload to this (pending) media row now, and the spec's error if not.
fn pending_upload_allowed(row: Option<&MediaRow>, user_id: &str, now: i64) -> Result<()> {
    let Some(row) = row else {
        return Err(Error::NotFound("Unknown media id".to_owned()));
    };
    if row.sha256.is_some() {
        return Err(Error::CannotOverwriteMedia(
            "Media has already been uploaded".to_owned(),
        ));
    }
    if row.user_id != user_id {
        return Err(Error::Forbidden(
            "Only the creator of a media id may upload to it".to_owned(),
        ));
    }
    if row.expires_ts.is_some_and(|ts| ts <= now) {
        return Err(Error::NotFound("The media id has expired".to_owned()));
    }
    Ok(())
}

/// A made thumbnail.
struct Thumbnail {
    bytes: Vec<u8>,
    width: u32,
    height: u32,
    content_type: &'static str,
}

/// The thumbnail size for an original of `orig` asked to fit `want`: never larger than the
/// original; `crop` gives the requested size (clamped to the original), `scale` fits within it
/// keeping the aspect ratio.
pub fn thumbnail_dimensions(
    orig: (u32, u32),
    want: (u32, u32),
    method: ThumbnailMethod,
) -> (u32, u32) {
    let (ow, oh) = (orig.0.max(1), orig.1.max(1));
    match method {
        ThumbnailMethod::Crop => (want.0.min(ow).max(1), want.1.min(oh).max(1)),
        ThumbnailMethod::Scale => {
            let ratio = (f64::from(want.0) / f64::from(ow))
                .min(f64::from(want.1) / f64::from(oh))
                .min(1.0);
            let fit = |side: u32| ((f64::from(side) * ratio).round() as u32).clamp(1, side);
            (fit(ow), fit(oh))
        }
    }
}

/// An image's width and height read from its header alone (nothing is decoded), or `None`
/// when the bytes are not an image this server reads.
pub fn image_dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .ok()?
        .into_dimensions()
        .ok()
}

/// Decodes an image (PNG, JPEG, GIF's first frame, WebP) once, bounded to `max_pixels`, and
/// makes a thumbnail of it for each target.
fn make_thumbnails(
    bytes: &[u8],
    targets: &[(u32, u32, ThumbnailMethod)],
    max_pixels: u64,
) -> Result<Vec<Thumbnail>> {
    use image::{ImageFormat, ImageReader};

    let cannot = |why: String| Error::Unknown(format!("Cannot thumbnail this media: {why}"));
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|err| cannot(err.to_string()))?;
    let format = match reader.format() {
        Some(f @ (ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::Gif | ImageFormat::WebP)) => {
            f
        }
        _ => return Err(cannot("not a PNG, JPEG, GIF or WebP image".to_owned())),
    };
    // The header's dimensions first: a bomb is refused before anything is allocated for it.
    let (ow, oh) = ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|err| cannot(err.to_string()))?;
    let pixels = u64::from(ow) * u64::from(oh);
    if pixels > max_pixels {
        return Err(cannot(format!(
            "the image is {ow}×{oh} pixels, more than the limit of {max_pixels}"
        )));
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    // Also bound what the decoder may allocate (frames, buffers), in case the header lied.
    limits.max_image_width = Some(ow);
    limits.max_image_height = Some(oh);
    limits.max_alloc = Some(max_pixels.saturating_mul(8).max(1 << 20));
    reader.limits(limits);
    let image = reader.decode().map_err(|err| cannot(err.to_string()))?;

    targets
        .iter()
        .map(|&(width, height, method)| render_thumbnail(&image, format, width, height, method))
        .collect()
}

/// One thumbnail of a decoded image: JPEG for JPEG originals, PNG otherwise (keeps
/// transparency).
fn render_thumbnail(
    image: &image::DynamicImage,
    format: image::ImageFormat,
    width: u32,
    height: u32,
    method: ThumbnailMethod,
) -> Result<Thumbnail> {
    use image::{ImageFormat, imageops::FilterType};

    let (tw, th) = thumbnail_dimensions((image.width(), image.height()), (width, height), method);
    let thumb = match method {
        ThumbnailMethod::Crop => image.resize_to_fill(tw, th, FilterType::Triangle),
        ThumbnailMethod::Scale => image.resize_exact(tw, th, FilterType::Triangle),
    };
    let mut out = Vec::new();
    let content_type = if format == ImageFormat::Jpeg {
        let rgb = thumb.to_rgb8();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85)
            .encode_image(&rgb)
            .map_err(|err| Error::Internal(format!("thumbnail encoding: {err}")))?;
        "image/jpeg"
    } else {
        thumb
            .write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .map_err(|err| Error::Internal(format!("thumbnail encoding: {err}")))?;
        "image/png"
    };
    Ok(Thumbnail {
        bytes: out,
        width: thumb.width(),
        height: thumb.height(),
        content_type,
    })
}

/// Where content with this hash lives under a media directory `root`; `None` unless the hash
/// is 64 lowercase hex digits.
pub fn content_path_in(root: &Path, sha256: &str) -> Option<PathBuf> {
    if sha256.len() != 64
        || !sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    Some(
        root.join("content")
            .join(&sha256[0..2])
            .join(&sha256[2..4])
            .join(sha256),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_ids_are_validated() {
        assert!(is_valid_media_id("abcXYZ019_-"));
        for bad in ["", "..", "../x", "a/b", "a.b", "a b", "é", &"a".repeat(256)] {
            assert!(!is_valid_media_id(bad), "{bad:?}");
        }
        let made = Media::new_media_id();
        assert!(is_valid_media_id(&made));
        assert_eq!(made.len(), MEDIA_ID_LENGTH);
    }

    #[test]
    fn content_paths_only_for_sha256_hex() {
        let root = Path::new("/m");
        let hash = "ab".repeat(32);
        assert_eq!(
            content_path_in(root, &hash),
            Some(Path::new("/m/content/ab/ab").join(&hash))
        );
        for bad in [
            "",
            "ab",
            "../../etc/passwd",
            &"AB".repeat(32),
            &"a/".repeat(32),
        ] {
            assert_eq!(content_path_in(root, bad), None, "{bad}");
        }
    }

    #[test]
    fn inline_only_for_safe_types() {
        assert!(is_inline_content_type("image/png"));
        assert!(is_inline_content_type("text/plain; charset=utf-8"));
        assert!(is_inline_content_type("IMAGE/JPEG"));
        for attachment in ["text/html", "image/svg+xml", "application/javascript", ""] {
            assert!(!is_inline_content_type(attachment), "{attachment}");
        }
    }

    #[test]
    fn thumbnail_dimensions_never_exceed_the_original() {
        use ThumbnailMethod::{Crop, Scale};
        assert_eq!(thumbnail_dimensions((400, 200), (32, 32), Crop), (32, 32));
        assert_eq!(
            thumbnail_dimensions((400, 200), (800, 600), Crop),
            (400, 200)
        );
        assert_eq!(thumbnail_dimensions((20, 10), (32, 32), Crop), (20, 10));
        assert_eq!(
            thumbnail_dimensions((400, 200), (100, 100), Scale),
            (100, 50)
        );
        assert_eq!(
            thumbnail_dimensions((200, 400), (100, 100), Scale),
            (50, 100)
        );
        assert_eq!(
            thumbnail_dimensions((400, 200), (800, 800), Scale),
            (400, 200)
        );
        assert_eq!(thumbnail_dimensions((1000, 1), (10, 10), Scale), (10, 1));
    }
}
