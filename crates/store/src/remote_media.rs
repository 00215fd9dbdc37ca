//! Other servers' media cached here: one row per `(origin, media id)` fetched, and one per
//! thumbnail of it the origin made. Their content shares the content files of local media
//! (named by SHA-256, counted by [`crate::media`]'s reference check across all four tables).

use crate::store::BeginWrite;
use crate::{DeletedMedia, Store, StoreError, media::unreferenced_hashes, with_pool};

/// A cached remote media id.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RemoteMediaRow {
    pub origin: String,
    pub media_id: String,
    pub sha256: String,
    pub size: i64,
    pub content_type: Option<String>,
    pub filename: Option<String>,
    pub fetched_ts: i64,
}

/// A cached thumbnail of remote media, under the size and method it was asked for.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RemoteThumbnailRow {
    pub origin: String,
    pub media_id: String,
    pub req_width: i64,
    pub req_height: i64,
    /// `crop` or `scale`.
    pub method: String,
    pub content_type: String,
    pub sha256: String,
    pub size: i64,
    pub fetched_ts: i64,
}

/// What the remote media cache holds, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RemoteMediaTotals {
    pub media: i64,
    pub bytes: i64,
    pub thumbnails: i64,
    pub thumbnail_bytes: i64,
}

const REMOTE_COLUMNS: &str = "origin, media_id, sha256, size, content_type, filename, fetched_ts";
const REMOTE_THUMBNAIL_COLUMNS: &str = "origin, media_id, req_width, req_height, method, \
     content_type, sha256, size, fetched_ts";

impl Store {
    /// A cached remote media id.
    pub async fn remote_media(
        &self,
        origin: &str,
        media_id: &str,
    ) -> Result<Option<RemoteMediaRow>, StoreError> {
        let sql = format!(
            "SELECT {REMOTE_COLUMNS} FROM remote_media WHERE origin = $1 AND media_id = $2"
        );
        let row = with_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                .bind(origin)
                .bind(media_id)
                .fetch_optional(pool)
                .await?
        });
        Ok(row)
    }

    /// Records fetched remote media whose content is in place on disk. Two fetches of the same
    /// media at once: the first row stays, and is returned either way.
    pub async fn insert_remote_media(
        &self,
        row: &RemoteMediaRow,
    ) -> Result<RemoteMediaRow, StoreError> {
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO remote_media (origin, media_id, sha256, size, content_type, \
                 filename, fetched_ts) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (origin, media_id) DO NOTHING",
            )
            .bind(&row.origin)
            .bind(&row.media_id)
            .bind(&row.sha256)
            .bind(row.size)
            .bind(&row.content_type)
            .bind(&row.filename)
            .bind(row.fetched_ts)
            .execute(pool)
            .await?;
        });
        self.remote_media(&row.origin, &row.media_id)
            .await?
            .ok_or_else(|| StoreError::Conflict("the cached media was deleted meanwhile".into()))
    }

    /// A cached thumbnail of remote media, by what was asked for.
    pub async fn remote_thumbnail(
        &self,
        origin: &str,
        media_id: &str,
        req_width: i64,
        req_height: i64,
        method: &str,
    ) -> Result<Option<RemoteThumbnailRow>, StoreError> {
        let sql = format!(
            "SELECT {REMOTE_THUMBNAIL_COLUMNS} FROM remote_media_thumbnails \
             WHERE origin = $1 AND media_id = $2 AND req_width = $3 AND req_height = $4 \
             AND method = $5"
        );
        let row = with_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                .bind(origin)
                .bind(media_id)
                .bind(req_width)
                .bind(req_height)
                .bind(method)
                .fetch_optional(pool)
                .await?
        });
        Ok(row)
    }

    /// Records a fetched remote thumbnail whose content is in place on disk (the first row
    /// stays, and is returned either way).
    pub async fn insert_remote_thumbnail(
        &self,
        row: &RemoteThumbnailRow,
    ) -> Result<RemoteThumbnailRow, StoreError> {
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO remote_media_thumbnails (origin, media_id, req_width, req_height, \
                 method, content_type, sha256, size, fetched_ts) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (origin, media_id, req_width, req_height, method) DO NOTHING",
            )
            .bind(&row.origin)
            .bind(&row.media_id)
            .bind(row.req_width)
            .bind(row.req_height)
            .bind(&row.method)
            .bind(&row.content_type)
            .bind(&row.sha256)
            .bind(row.size)
            .bind(row.fetched_ts)
            .execute(pool)
            .await?;
        });
        self.remote_thumbnail(
            &row.origin,
            &row.media_id,
            row.req_width,
            row.req_height,
            &row.method,
        )
        .await?
        .ok_or_else(|| StoreError::Conflict("the cached thumbnail was deleted meanwhile".into()))
    }

    /// Deletes cached remote media `(origin, media id)` with their cached thumbnails, in one
    /// transaction, and says which content hashes nothing names any more. `media` counts the
    /// ids of which anything was cached.
    pub async fn delete_remote_media(
        &self,
        ids: &[(String, String)],
    ) -> Result<DeletedMedia, StoreError> {
        let mut out = DeletedMedia::default();
        if ids.is_empty() {
            return Ok(out);
        }
        with_pool!(self, pool => {
            let mut tx = pool.begin_write(&self.write_gate).await?;
            let mut hashes: Vec<String> = Vec::new();
            for (origin, media_id) in ids {
                let thumbs: Vec<String> = sqlx::query_scalar(
                    "DELETE FROM remote_media_thumbnails WHERE origin = $1 AND media_id = $2 \
                     RETURNING sha256",
                )
                .bind(origin)
                .bind(media_id)
                .fetch_all(&mut *tx)
                .await?;
                let original: Option<String> = sqlx::query_scalar(
                    "DELETE FROM remote_media WHERE origin = $1 AND media_id = $2 \
                     RETURNING sha256",
                )
                .bind(origin)
                .bind(media_id)
                .fetch_optional(&mut *tx)
                .await?;
                if original.is_some() || !thumbs.is_empty() {
                    out.media += 1;
                }
                hashes.extend(thumbs);
                hashes.extend(original);
            }
            out.unreferenced = unreferenced_hashes!(tx, hashes);
            tx.commit().await?;
        });
        Ok(out)
    }

    /// Up to `limit` cached remote media ids of which something (the original or a thumbnail)
    /// was fetched before `before_ts`, oldest first.
    pub async fn remote_media_fetched_before(
        &self,
        before_ts: i64,
        limit: i64,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let ids = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT origin, media_id FROM ( \
                     SELECT origin, media_id, fetched_ts FROM remote_media WHERE fetched_ts < $1 \
                     UNION ALL \
                     SELECT origin, media_id, fetched_ts FROM remote_media_thumbnails \
                     WHERE fetched_ts < $1 \
                 ) AS cached GROUP BY origin, media_id \
                 ORDER BY MIN(fetched_ts), origin, media_id LIMIT $2",
            )
            .bind(before_ts)
            .bind(limit)
            .fetch_all(pool)
            .await?
        });
        Ok(ids)
    }

    /// The cached remote media and thumbnails and their bytes, for `/metrics`.
    pub async fn remote_media_totals(&self) -> Result<RemoteMediaTotals, StoreError> {
        let (media, bytes, thumbnails, thumbnail_bytes): (i64, i64, i64, i64) = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT \
                 (SELECT COUNT(*) FROM remote_media), \
                 (SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM remote_media), \
                 (SELECT COUNT(*) FROM remote_media_thumbnails), \
                 (SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM remote_media_thumbnails)",
            )
            .fetch_one(pool)
            .await?
        });
        Ok(RemoteMediaTotals {
            media,
            bytes,
            thumbnails,
            thumbnail_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        MediaRow, StoreOptions,
        test_support::{TestDatabase, test_backends},
    };

    fn cached(origin: &str, media_id: &str, sha256: &str, fetched_ts: i64) -> RemoteMediaRow {
        RemoteMediaRow {
            origin: origin.to_owned(),
            media_id: media_id.to_owned(),
            sha256: sha256.to_owned(),
            size: 5,
            content_type: Some("image/png".to_owned()),
            filename: Some("bild-ü.png".to_owned()),
            fetched_ts,
        }
    }

    fn thumb(origin: &str, media_id: &str, sha256: &str, fetched_ts: i64) -> RemoteThumbnailRow {
        RemoteThumbnailRow {
            origin: origin.to_owned(),
            media_id: media_id.to_owned(),
            req_width: 32,
            req_height: 32,
            method: "crop".to_owned(),
            content_type: "image/png".to_owned(),
            sha256: sha256.to_owned(),
            size: 2,
            fetched_ts,
        }
    }

    #[tokio::test]
    async fn remote_media_is_cached_once_and_shares_content_with_local_media() {
        for kind in test_backends() {
            let db = TestDatabase::create(kind).await;
            let store = Store::open(&db.url, &StoreOptions::default())
                .await
                .unwrap();
            let first = cached("hs2.test", "abc", "h1", 10);
            assert_eq!(store.insert_remote_media(&first).await.unwrap(), first);
            // A second fetch of the same media keeps the first row.
            let again = cached("hs2.test", "abc", "h9", 20);
            assert_eq!(store.insert_remote_media(&again).await.unwrap(), first);
            // The same media id on another server is another media.
            store
                .insert_remote_media(&cached("hs3.test", "abc", "h2", 30))
                .await
                .unwrap();
            store
                .insert_remote_thumbnail(&thumb("hs2.test", "abc", "t1", 40))
                .await
                .unwrap();
            // A thumbnail cached without its original (fetched alone).
            store
                .insert_remote_thumbnail(&thumb("hs4.test", "zzz", "t2", 5))
                .await
                .unwrap();
            assert_eq!(
                store.remote_media_totals().await.unwrap(),
                RemoteMediaTotals {
                    media: 2,
                    bytes: 10,
                    thumbnails: 2,
                    thumbnail_bytes: 4
                }
            );
            // Local media sharing h1 keeps the file once the remote row goes.
            let local = MediaRow {
                media_id: "loc".to_owned(),
                user_id: "@a:test".to_owned(),
                sha256: Some("h1".to_owned()),
                size: Some(5),
                content_type: None,
                filename: None,
                created_ts: 1,
                expires_ts: None,
                uploaded_ts: Some(1),
            };
            store.insert_media(&local).await.unwrap();
            assert_eq!(
                store.remote_media_fetched_before(31, 10).await.unwrap(),
                vec![
                    ("hs4.test".to_owned(), "zzz".to_owned()),
                    ("hs2.test".to_owned(), "abc".to_owned()),
                    ("hs3.test".to_owned(), "abc".to_owned()),
                ],
                "{kind:?}"
            );
            let gone = store
                .delete_remote_media(&[
                    ("hs2.test".to_owned(), "abc".to_owned()),
                    ("hs2.test".to_owned(), "unknown".to_owned()),
                ])
                .await
                .unwrap();
            assert_eq!(gone.media, 1);
            assert_eq!(gone.unreferenced, vec!["t1".to_owned()], "{kind:?}");
            assert_eq!(store.remote_media("hs2.test", "abc").await.unwrap(), None);
            assert!(
                store
                    .remote_thumbnail("hs2.test", "abc", 32, 32, "crop")
                    .await
                    .unwrap()
                    .is_none()
            );
            assert!(
                store
                    .remote_media("hs3.test", "abc")
                    .await
                    .unwrap()
                    .is_some()
            );
            // And a remote row keeps a file that local media no longer names.
            store
                .insert_remote_media(&cached("hs2.test", "abc", "h1", 50))
                .await
                .unwrap();
            let gone = store.delete_media(&["loc".to_owned()]).await.unwrap();
            assert!(gone.unreferenced.is_empty(), "{kind:?}");
            assert!(store.content_referenced("h1").await.unwrap());
            store.close().await;
        }
    }
}
