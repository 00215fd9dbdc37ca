//! Media metadata: local media ids (who made them, the content's hash, type, name and size,
//! pending asynchronous uploads with their expiry) and the thumbnails made of them. The content
//! itself is on the filesystem, named by its SHA-256; this module answers which hashes are still
//! referenced, so that the service deletes a shared file only when nothing names it.

use sqlx::Row;

use crate::store::BeginWrite;
use crate::{Store, StoreError, with_pool};

/// One media id as stored. `sha256` and `size` are `None` while an asynchronous upload is
/// pending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRow {
    pub media_id: String,
    pub user_id: String,
    pub sha256: Option<String>,
    pub size: Option<i64>,
    pub content_type: Option<String>,
    pub filename: Option<String>,
    pub created_ts: i64,
    /// A pending id not uploaded to by then is dead; `None` once uploaded.
    pub expires_ts: Option<i64>,
    pub uploaded_ts: Option<i64>,
}

/// A thumbnail as stored: what was asked for and what was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThumbnailRow {
    pub media_id: String,
    pub req_width: i64,
    pub req_height: i64,
    /// `crop` or `scale`.
    pub method: String,
    pub width: i64,
    pub height: i64,
    pub content_type: String,
    pub sha256: String,
    pub size: i64,
    pub created_ts: i64,
}

/// What reserving a media id for an asynchronous upload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreatePending {
    Created,
    /// The user already has `max_pending` live reservations; the earliest expires then.
    TooManyPending {
        earliest_expiry_ts: i64,
    },
}

/// What deleting media removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeletedMedia {
    /// Media ids deleted (with their thumbnails).
    pub media: u64,
    /// Content hashes that no media id or thumbnail names any more: their files can go.
    pub unreferenced: Vec<String>,
}

/// Whether any row names content hash `$1`: local media and thumbnails, and cached remote
/// media and thumbnails (`store::remote_media`), which share the content files.
pub(crate) const CONTENT_REFERENCED: &str = "SELECT EXISTS (SELECT 1 FROM media WHERE sha256 = $1) \
     OR EXISTS (SELECT 1 FROM media_thumbnails WHERE sha256 = $1) \
     OR EXISTS (SELECT 1 FROM remote_media WHERE sha256 = $1) \
     OR EXISTS (SELECT 1 FROM remote_media_thumbnails WHERE sha256 = $1)";

/// Which of `hashes` (content hashes a deletion just freed, sorted and deduplicated here) no
/// row names any more, read in transaction `tx`: the content files that may go. One macro for
/// local and cached remote media, whose deletions free the same shared files.
macro_rules! unreferenced_hashes {
    ($tx:ident, $hashes:expr) => {{
        let mut hashes: Vec<String> = $hashes;
        hashes.sort();
        hashes.dedup();
        let mut unreferenced = Vec::new();
        for hash in hashes {
            let referenced: bool = sqlx::query_scalar($crate::media::CONTENT_REFERENCED)
                .bind(&hash)
                .fetch_one(&mut *$tx)
                .await?;
            if !referenced {
                unreferenced.push(hash);
            }
        }
        unreferenced
    }};
}
pub(crate) use unreferenced_hashes;

const MEDIA_COLUMNS: &str = "media_id, user_id, sha256, size, content_type, filename, \
     created_ts, expires_ts, uploaded_ts";

const THUMBNAIL_COLUMNS: &str = "media_id, req_width, req_height, method, width, height, \
     content_type, sha256, size, created_ts";

fn media_from_row<R: Row>(row: &R) -> Result<MediaRow, sqlx::Error>
where
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'v> String: sqlx::Decode<'v, R::Database> + sqlx::Type<R::Database>,
    for<'v> Option<String>: sqlx::Decode<'v, R::Database> + sqlx::Type<R::Database>,
    for<'v> i64: sqlx::Decode<'v, R::Database> + sqlx::Type<R::Database>,
    for<'v> Option<i64>: sqlx::Decode<'v, R::Database> + sqlx::Type<R::Database>,
{
    Ok(MediaRow {
        media_id: row.try_get("media_id")?,
        user_id: row.try_get("user_id")?,
        sha256: row.try_get("sha256")?,
        size: row.try_get("size")?,
        content_type: row.try_get("content_type")?,
        filename: row.try_get("filename")?,
        created_ts: row.try_get("created_ts")?,
        expires_ts: row.try_get("expires_ts")?,
        uploaded_ts: row.try_get("uploaded_ts")?,
    })
}

fn thumbnail_from_row<R: Row>(row: &R) -> Result<ThumbnailRow, sqlx::Error>
where
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'v> String: sqlx::Decode<'v, R::Database> + sqlx::Type<R::Database>,
    for<'v> i64: sqlx::Decode<'v, R::Database> + sqlx::Type<R::Database>,
{
    Ok(ThumbnailRow {
        media_id: row.try_get("media_id")?,
        req_width: row.try_get("req_width")?,
        req_height: row.try_get("req_height")?,
        method: row.try_get("method")?,
        width: row.try_get("width")?,
        height: row.try_get("height")?,
        content_type: row.try_get("content_type")?,
        sha256: row.try_get("sha256")?,
        size: row.try_get("size")?,
        created_ts: row.try_get("created_ts")?,
    })
}

impl Store {
    /// Records an uploaded media id. Its content must already be in place on disk: a row is
    /// only ever written after its file (so no media id names a missing file).
    pub async fn insert_media(&self, media: &MediaRow) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO media (media_id, user_id, sha256, size, content_type, filename, \
                 created_ts, expires_ts, uploaded_ts) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(&media.media_id)
            .bind(&media.user_id)
            .bind(&media.sha256)
            .bind(media.size)
            .bind(&media.content_type)
            .bind(&media.filename)
            .bind(media.created_ts)
            .bind(media.expires_ts)
            .bind(media.uploaded_ts)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Reserves `media_id` for `user_id`'s asynchronous upload, unless they already hold
    /// `max_pending` reservations that have not expired at `now` (counted and inserted in one
    /// transaction).
    pub async fn create_pending_media(
        &self,
        media_id: &str,
        user_id: &str,
        now: i64,
        expires_ts: i64,
        max_pending: u32,
    ) -> Result<CreatePending, StoreError> {
        let outcome = with_pool!(self, pool => {
            let mut tx = pool.begin_write(&self.write_gate).await?;
            let (pending, earliest): (i64, Option<i64>) = sqlx::query_as(
                "SELECT COUNT(*), MIN(expires_ts) FROM media \
                 WHERE user_id = $1 AND sha256 IS NULL AND expires_ts > $2",
            )
            .bind(user_id)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            if pending >= i64::from(max_pending) {
                CreatePending::TooManyPending { earliest_expiry_ts: earliest.unwrap_or(now) }
            } else {
                sqlx::query(
                    "INSERT INTO media (media_id, user_id, created_ts, expires_ts) \
                     VALUES ($1, $2, $3, $4)",
                )
                .bind(media_id)
                .bind(user_id)
                .bind(now)
                .bind(expires_ts)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                CreatePending::Created
            }
        });
        Ok(outcome)
    }

    /// Fills in a pending media id: only if it is still pending, unexpired at `now`, and
    /// `user_id`'s. Whether it was (the caller reads the row to say why not).
    #[allow(clippy::too_many_arguments)]
    pub async fn complete_pending_media(
        &self,
        media_id: &str,
        user_id: &str,
        sha256: &str,
        size: i64,
        content_type: Option<&str>,
        filename: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let updated = with_pool!(self, pool => {
            sqlx::query(
                "UPDATE media SET sha256 = $3, size = $4, content_type = $5, filename = $6, \
                 uploaded_ts = $7, expires_ts = NULL \
                 WHERE media_id = $1 AND user_id = $2 AND sha256 IS NULL AND expires_ts > $7",
            )
            .bind(media_id)
            .bind(user_id)
            .bind(sha256)
            .bind(size)
            .bind(content_type)
            .bind(filename)
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(updated == 1)
    }

    /// One media id, pending or uploaded.
    pub async fn media(&self, media_id: &str) -> Result<Option<MediaRow>, StoreError> {
        let sql = format!("SELECT {MEDIA_COLUMNS} FROM media WHERE media_id = $1");
        let row = with_pool!(self, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(media_id)
                .fetch_optional(pool)
                .await?
                .as_ref()
                .map(media_from_row)
                .transpose()
        })?;
        Ok(row)
    }

    /// The thumbnail made for this request, if one was.
    pub async fn thumbnail(
        &self,
        media_id: &str,
        req_width: i64,
        req_height: i64,
        method: &str,
    ) -> Result<Option<ThumbnailRow>, StoreError> {
        let sql = format!(
            "SELECT {THUMBNAIL_COLUMNS} FROM media_thumbnails \
             WHERE media_id = $1 AND req_width = $2 AND req_height = $3 AND method = $4"
        );
        let row = with_pool!(self, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(media_id)
                .bind(req_width)
                .bind(req_height)
                .bind(method)
                .fetch_optional(pool)
                .await?
                .as_ref()
                .map(thumbnail_from_row)
                .transpose()
        })?;
        Ok(row)
    }

    /// Records a thumbnail whose content is in place on disk. Two requests that made the same
    /// thumbnail at once: the first row stays, and is returned either way.
    pub async fn insert_thumbnail(&self, thumb: &ThumbnailRow) -> Result<ThumbnailRow, StoreError> {
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO media_thumbnails (media_id, req_width, req_height, method, width, \
                 height, content_type, sha256, size, created_ts) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                 ON CONFLICT (media_id, req_width, req_height, method) DO NOTHING",
            )
            .bind(&thumb.media_id)
            .bind(thumb.req_width)
            .bind(thumb.req_height)
            .bind(&thumb.method)
            .bind(thumb.width)
            .bind(thumb.height)
            .bind(&thumb.content_type)
            .bind(&thumb.sha256)
            .bind(thumb.size)
            .bind(thumb.created_ts)
            .execute(pool)
            .await?;
        });
        let stored = self
            .thumbnail(
                &thumb.media_id,
                thumb.req_width,
                thumb.req_height,
                &thumb.method,
            )
            .await?;
        stored.ok_or_else(|| {
            StoreError::Conflict("the thumbnail's media was deleted while it was made".to_owned())
        })
    }

    /// Deletes media ids and their thumbnails in one transaction, and says which content hashes
    /// nothing names any more.
    pub async fn delete_media(&self, media_ids: &[String]) -> Result<DeletedMedia, StoreError> {
        let mut out = DeletedMedia::default();
        if media_ids.is_empty() {
            return Ok(out);
        }
        with_pool!(self, pool => {
            let mut tx = pool.begin_write(&self.write_gate).await?;
            let mut hashes: Vec<String> = Vec::new();
            for media_id in media_ids {
                let thumbs: Vec<String> =
                    sqlx::query_scalar("DELETE FROM media_thumbnails WHERE media_id = $1 RETURNING sha256")
                        .bind(media_id)
                        .fetch_all(&mut *tx)
                        .await?;
                hashes.extend(thumbs);
                let deleted: Option<Option<String>> =
                    sqlx::query_scalar("DELETE FROM media WHERE media_id = $1 RETURNING sha256")
                        .bind(media_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                if let Some(hash) = deleted {
                    out.media += 1;
                    hashes.extend(hash);
                }
            }
            out.unreferenced = unreferenced_hashes!(tx, hashes);
            tx.commit().await?;
        });
        Ok(out)
    }

    /// Up to `limit` media ids created before `before_ts` (uploaded or pending), oldest first.
    pub async fn media_created_before(
        &self,
        before_ts: i64,
        limit: i64,
    ) -> Result<Vec<String>, StoreError> {
        let ids = with_pool!(self, pool => {
            sqlx::query_scalar(
                "SELECT media_id FROM media WHERE created_ts < $1 ORDER BY created_ts, media_id LIMIT $2",
            )
            .bind(before_ts)
            .bind(limit)
            .fetch_all(pool)
            .await?
        });
        Ok(ids)
    }

    /// Whether any media id or thumbnail names this content hash.
    pub async fn content_referenced(&self, sha256: &str) -> Result<bool, StoreError> {
        let referenced = with_pool!(self, pool => {
            sqlx::query_scalar(CONTENT_REFERENCED)
            .bind(sha256)
            .fetch_one(pool)
            .await?
        });
        Ok(referenced)
    }

    /// The bytes of everything `user_id` uploaded (their quota's use).
    pub async fn media_bytes_of_user(&self, user_id: &str) -> Result<i64, StoreError> {
        let bytes = with_pool!(self, pool => {
            sqlx::query_scalar(
                "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM media WHERE user_id = $1",
            )
            .bind(user_id)
            .fetch_one(pool)
            .await?
        });
        Ok(bytes)
    }

    /// Uploaded media ids and the bytes they name (a file shared by several ids counts once
    /// per id), for `/metrics`.
    pub async fn media_totals(&self) -> Result<(i64, i64), StoreError> {
        let totals = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT COUNT(*), CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM media \
                 WHERE sha256 IS NOT NULL",
            )
            .fetch_one(pool)
            .await?
        });
        Ok(totals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        StoreOptions,
        test_support::{TestDatabase, test_backends},
    };

    fn uploaded(media_id: &str, sha256: &str) -> MediaRow {
        MediaRow {
            media_id: media_id.to_owned(),
            user_id: "@alice:test".to_owned(),
            sha256: Some(sha256.to_owned()),
            size: Some(3),
            content_type: Some("text/plain".to_owned()),
            filename: Some("größe.txt".to_owned()),
            created_ts: 10,
            expires_ts: None,
            uploaded_ts: Some(10),
        }
    }

    fn thumb(media_id: &str, sha256: &str) -> ThumbnailRow {
        ThumbnailRow {
            media_id: media_id.to_owned(),
            req_width: 32,
            req_height: 32,
            method: "crop".to_owned(),
            width: 32,
            height: 32,
            content_type: "image/png".to_owned(),
            sha256: sha256.to_owned(),
            size: 100,
            created_ts: 11,
        }
    }

    #[tokio::test]
    async fn shared_content_is_unreferenced_only_when_its_last_media_id_goes() {
        for kind in test_backends() {
            let db = TestDatabase::create(kind).await;
            let store = Store::open(&db.url, &StoreOptions::default())
                .await
                .unwrap();
            store.insert_media(&uploaded("a", "h1")).await.unwrap();
            store.insert_media(&uploaded("b", "h1")).await.unwrap();
            store.insert_thumbnail(&thumb("b", "t1")).await.unwrap();
            assert_eq!(store.media("a").await.unwrap(), Some(uploaded("a", "h1")));
            assert_eq!(store.media_totals().await.unwrap(), (2, 6), "{kind:?}");
            assert_eq!(store.media_bytes_of_user("@alice:test").await.unwrap(), 6);
            assert_eq!(store.media_bytes_of_user("@bob:test").await.unwrap(), 0);

            let gone = store.delete_media(&["a".to_owned()]).await.unwrap();
            assert_eq!(gone.media, 1);
            assert!(gone.unreferenced.is_empty(), "{kind:?}: b still names h1");
            assert!(store.content_referenced("h1").await.unwrap());

            let gone = store
                .delete_media(&["b".to_owned(), "missing".to_owned()])
                .await
                .unwrap();
            assert_eq!(gone.media, 1);
            assert_eq!(gone.unreferenced, vec!["h1".to_owned(), "t1".to_owned()]);
            assert_eq!(store.media("b").await.unwrap(), None);
            assert_eq!(store.thumbnail("b", 32, 32, "crop").await.unwrap(), None);
            assert!(!store.content_referenced("h1").await.unwrap());
            store.close().await;
        }
    }

    #[tokio::test]
    async fn pending_uploads_are_limited_completed_once_and_by_their_creator() {
        for kind in test_backends() {
            let db = TestDatabase::create(kind).await;
            let store = Store::open(&db.url, &StoreOptions::default())
                .await
                .unwrap();
            let alice = "@alice:test";
            assert_eq!(
                store
                    .create_pending_media("p1", alice, 100, 1000, 2)
                    .await
                    .unwrap(),
                CreatePending::Created
            );
            store
                .create_pending_media("p2", alice, 100, 900, 2)
                .await
                .unwrap();
            assert_eq!(
                store
                    .create_pending_media("p3", alice, 100, 1000, 2)
                    .await
                    .unwrap(),
                CreatePending::TooManyPending {
                    earliest_expiry_ts: 900
                },
                "{kind:?}"
            );
            assert_eq!(store.media("p3").await.unwrap(), None);
            // Expired reservations no longer count.
            assert_eq!(
                store
                    .create_pending_media("p3", alice, 950, 2000, 2)
                    .await
                    .unwrap(),
                CreatePending::Created
            );
            // Someone else cannot fill it; the creator can, once; an expired one cannot be.
            assert!(
                !store
                    .complete_pending_media("p1", "@bob:test", "h", 1, None, None, 200)
                    .await
                    .unwrap()
            );
            assert!(
                store
                    .complete_pending_media("p1", alice, "h", 1, Some("a/b"), Some("f"), 200)
                    .await
                    .unwrap()
            );
            assert!(
                !store
                    .complete_pending_media("p1", alice, "h2", 1, None, None, 201)
                    .await
                    .unwrap()
            );
            assert!(
                !store
                    .complete_pending_media("p2", alice, "h", 1, None, None, 900)
                    .await
                    .unwrap(),
                "{kind:?}: expired"
            );
            let p1 = store.media("p1").await.unwrap().unwrap();
            assert_eq!(p1.sha256.as_deref(), Some("h"));
            assert_eq!(p1.expires_ts, None);
            assert_eq!(p1.uploaded_ts, Some(200));
            assert_eq!(
                store.media_created_before(101, 10).await.unwrap(),
                vec!["p1".to_owned(), "p2".to_owned()]
            );
            store.close().await;
        }
    }
}
