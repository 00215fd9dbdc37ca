//! The media API: uploads (`/_matrix/media/v3/upload`, asynchronous `/create` then `PUT`),
//! authenticated downloads, thumbnails and config (`/_matrix/client/v1/media/...`), and the
//! deprecated unauthenticated `/_matrix/media/{v3,r0}` downloads when `media.legacy_endpoints`
//! is on. Upload bodies are streamed to disk and downloads streamed from it, never buffered
//! whole; every download carries the headers that keep uploaded content from running in the
//! server's origin.

use std::time::Duration;

use axum::{
    Router,
    response::{IntoResponse, Response},
};
use http::{HeaderValue, header};
use http_body_util::BodyExt;
use ruma::{
    ServerName, UInt,
    api::client::{
        authenticated_media,
        media::{self, create_content, create_content_async, create_mxc_uri},
    },
    http_headers::{ContentDisposition, ContentDispositionType},
};

use myelin_service::media::{ContentWriter, MediaContent, ThumbnailMethod, is_inline_content_type};

use crate::{
    AppState, MatrixError, Ruma,
    ruma_bridge::{RumaResponse, RumaRouterExt, RumaStreamed},
};

/// What a browser may do with downloaded content: nothing active (the spec's recommendation).
const CONTENT_SECURITY_POLICY: &str = "sandbox; default-src 'none'; script-src 'none'; \
     plugin-types application/pdf; style-src 'unsafe-inline'; media-src 'self'; \
     object-src 'self';";

/// The media routes; the deprecated unauthenticated ones only when `legacy` is on, URL previews
/// only when `previews` is.
// The deprecated endpoints are served on purpose (behind `media.legacy_endpoints`).
#[allow(deprecated)]
pub(crate) fn routes(legacy: bool, previews: bool) -> Router<AppState> {
    let router = Router::new()
        .ruma_raw::<create_content::v3::Request, _, _, _>(upload)
        .ruma(create_pending)
        .ruma_raw::<create_content_async::v3::Request, _, _, _>(upload_pending)
        .ruma(config)
        .ruma_raw::<authenticated_media::get_content::v1::Request, _, _, _>(download)
        .ruma_raw::<authenticated_media::get_content_as_filename::v1::Request, _, _, _>(download_as)
        .ruma_raw::<authenticated_media::get_content_thumbnail::v1::Request, _, _, _>(thumbnail);
    let router = if previews {
        router.ruma(preview_url)
    } else {
        router
    };
    if !legacy {
        return router;
    }
    let router = if previews {
        router.ruma(legacy_preview_url)
    } else {
        router
    };
    router
        .ruma(legacy_config)
        .ruma_raw::<media::get_content::v3::Request, _, _, _>(legacy_download)
        .ruma_raw::<media::get_content_as_filename::v3::Request, _, _, _>(legacy_download_as)
        .ruma_raw::<media::get_content_thumbnail::v3::Request, _, _, _>(legacy_thumbnail)
}

/// Reads an upload body into a content writer, chunk by chunk, refusing it once it passes the
/// size limit (a declared `Content-Length` over it is refused before anything is read).
async fn receive(
    state: &AppState,
    content_length: Option<u64>,
    mut body: axum::body::Body,
) -> Result<ContentWriter, MatrixError> {
    let media = &state.services.media;
    let limit = media.max_upload_size();
    if content_length.is_some_and(|len| len > limit) {
        return Err(MatrixError::too_large(
            usize::try_from(limit).unwrap_or(usize::MAX),
        ));
    }
    let mut writer = media.begin_upload().await?;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| {
            MatrixError::new(
                http::StatusCode::BAD_REQUEST,
                ruma::api::error::ErrorKind::Unknown,
                format!("Could not read the upload: {err}"),
            )
        })?;
        if let Ok(data) = frame.into_data() {
            writer.write(&data).await?;
        }
    }
    Ok(writer)
}

async fn upload(
    state: AppState,
    request: RumaStreamed<create_content::v3::Request>,
) -> Result<Response, MatrixError> {
    let writer = receive(&state, request.content_length, request.body).await?;
    let head = request.head;
    let content_uri = state
        .services
        .media
        .upload(
            request.identity.user_id.as_str(),
            head.content_type.as_deref(),
            head.filename.as_deref(),
            writer,
        )
        .await?;
    Ok(RumaResponse(create_content::v3::Response::new(content_uri)).into_response())
}

async fn create_pending(
    state: AppState,
    request: Ruma<create_mxc_uri::v1::Request>,
) -> Result<create_mxc_uri::v1::Response, MatrixError> {
    let pending = state
        .services
        .media
        .create_pending(request.identity.user_id.as_str())
        .await?;
    let mut response = create_mxc_uri::v1::Response::new(pending.content_uri);
    response.unused_expires_at = UInt::try_from(pending.expires_ts)
        .ok()
        .map(ruma::MilliSecondsSinceUnixEpoch);
    Ok(response)
}

async fn upload_pending(
    state: AppState,
    request: RumaStreamed<create_content_async::v3::Request>,
) -> Result<Response, MatrixError> {
    let media = &state.services.media;
    let user_id = request.identity.user_id.as_str();
    let head = request.head;
    // Refused before the body is read: not theirs, already uploaded, unknown.
    media
        .check_pending(user_id, &head.server_name, &head.media_id)
        .await?;
    let writer = receive(&state, request.content_length, request.body).await?;
    media
        .upload_pending(
            user_id,
            &head.server_name,
            &head.media_id,
            head.content_type.as_deref(),
            head.filename.as_deref(),
            writer,
        )
        .await?;
    // ruma's response type has no fields and no constructor: its body is `{}`.
    Ok(axum::Json(serde_json::json!({})).into_response())
}

async fn preview(
    state: &AppState,
    user_id: &str,
    url: &str,
) -> Result<Box<serde_json::value::RawValue>, MatrixError> {
    let previews = state
        .services
        .url_previews
        .as_ref()
        .ok_or_else(MatrixError::unrecognized)?;
    let preview = previews
        .preview(&state.services.media, user_id, url)
        .await?;
    serde_json::value::to_raw_value(&preview)
        .map_err(|err| MatrixError::internal(format!("preview: {err}")))
}

async fn preview_url(
    state: AppState,
    request: Ruma<authenticated_media::get_media_preview::v1::Request>,
) -> Result<authenticated_media::get_media_preview::v1::Response, MatrixError> {
    Ok(
        authenticated_media::get_media_preview::v1::Response::from_raw_value(
            preview(&state, request.identity.user_id.as_str(), &request.body.url).await?,
        ),
    )
}

#[allow(deprecated)]
async fn legacy_preview_url(
    state: AppState,
    request: Ruma<media::get_media_preview::v3::Request>,
) -> Result<media::get_media_preview::v3::Response, MatrixError> {
    Ok(media::get_media_preview::v3::Response::from_raw_value(
        preview(&state, request.identity.user_id.as_str(), &request.body.url).await?,
    ))
}

fn upload_size(state: &AppState) -> UInt {
    UInt::try_from(state.services.media.max_upload_size()).unwrap_or(UInt::MAX)
}

async fn config(
    state: AppState,
    _request: Ruma<authenticated_media::get_media_config::v1::Request>,
) -> Result<authenticated_media::get_media_config::v1::Response, MatrixError> {
    Ok(authenticated_media::get_media_config::v1::Response::new(
        upload_size(&state),
    ))
}

#[allow(deprecated)]
async fn legacy_config(
    state: AppState,
    _request: Ruma<media::get_media_config::v3::Request>,
) -> Result<media::get_media_config::v3::Response, MatrixError> {
    Ok(media::get_media_config::v3::Response::new(upload_size(
        &state,
    )))
}

async fn serve_download(
    state: &AppState,
    server_name: &ServerName,
    media_id: &str,
    filename: Option<String>,
    timeout: Duration,
    allow_remote: bool,
    range: RequestedRange,
) -> Result<Response, MatrixError> {
    let content = state
        .services
        .media
        .download(server_name, media_id, timeout, allow_remote)
        .await?;
    ranged_media_response(content, filename, range).await
}

async fn download(
    state: AppState,
    (range, request): (
        RequestedRange,
        Ruma<authenticated_media::get_content::v1::Request>,
    ),
) -> Result<Response, MatrixError> {
    let r = request.body;
    serve_download(
        &state,
        &r.server_name,
        &r.media_id,
        None,
        r.timeout_ms,
        true,
        range,
    )
    .await
}

async fn download_as(
    state: AppState,
    (range, request): (
        RequestedRange,
        Ruma<authenticated_media::get_content_as_filename::v1::Request>,
    ),
) -> Result<Response, MatrixError> {
    let r = request.body;
    serve_download(
        &state,
        &r.server_name,
        &r.media_id,
        Some(r.filename),
        r.timeout_ms,
        true,
        range,
    )
    .await
}

#[allow(deprecated)]
async fn legacy_download(
    state: AppState,
    (range, request): (RequestedRange, Ruma<media::get_content::v3::Request>),
) -> Result<Response, MatrixError> {
    let r = request.body;
    serve_download(
        &state,
        &r.server_name,
        &r.media_id,
        None,
        r.timeout_ms,
        r.allow_remote,
        range,
    )
    .await
}

#[allow(deprecated)]
async fn legacy_download_as(
    state: AppState,
    (range, request): (
        RequestedRange,
        Ruma<media::get_content_as_filename::v3::Request>,
    ),
) -> Result<Response, MatrixError> {
    let r = request.body;
    serve_download(
        &state,
        &r.server_name,
        &r.media_id,
        Some(r.filename),
        r.timeout_ms,
        r.allow_remote,
        range,
    )
    .await
}

/// The parameters of a thumbnail request, whichever endpoint it came through.
struct ThumbnailRequest<'a> {
    server_name: &'a ServerName,
    media_id: &'a str,
    width: UInt,
    height: UInt,
    method: Option<&'a ruma::media::Method>,
    timeout: Duration,
    /// Off only on the deprecated endpoints, when the client says so.
    allow_remote: bool,
}

/// The thumbnail method a request names (`scale` when it names none).
pub(crate) fn thumbnail_method(
    method: Option<&ruma::media::Method>,
) -> Result<ThumbnailMethod, MatrixError> {
    match method {
        None | Some(ruma::media::Method::Scale) => Ok(ThumbnailMethod::Scale),
        Some(ruma::media::Method::Crop) => Ok(ThumbnailMethod::Crop),
        Some(other) => Err(MatrixError::new(
            http::StatusCode::BAD_REQUEST,
            ruma::api::error::ErrorKind::InvalidParam,
            format!("Unknown thumbnail method `{}`", other.as_str()),
        )),
    }
}

/// A requested thumbnail side as the service takes it (huge values saturate; it clamps them).
pub(crate) fn thumbnail_side(v: UInt) -> u32 {
    u32::try_from(u64::from(v)).unwrap_or(u32::MAX)
}

async fn serve_thumbnail(
    state: &AppState,
    request: ThumbnailRequest<'_>,
) -> Result<Response, MatrixError> {
    let method = thumbnail_method(request.method)?;
    let content = state
        .services
        .media
        .thumbnail(
            request.server_name,
            request.media_id,
            thumbnail_side(request.width),
            thumbnail_side(request.height),
            method,
            request.timeout,
            request.allow_remote,
        )
        .await?;
    let extension = match content.content_type.as_deref() {
        Some("image/jpeg") => "jpg",
        _ => "png",
    };
    media_response(content, Some(format!("thumbnail.{extension}"))).await
}

async fn thumbnail(
    state: AppState,
    request: Ruma<authenticated_media::get_content_thumbnail::v1::Request>,
) -> Result<Response, MatrixError> {
    let r = &request.body;
    serve_thumbnail(
        &state,
        ThumbnailRequest {
            server_name: &r.server_name,
            media_id: &r.media_id,
            width: r.width,
            height: r.height,
            method: r.method.as_ref(),
            timeout: r.timeout_ms,
            allow_remote: true,
        },
    )
    .await
}

#[allow(deprecated)]
async fn legacy_thumbnail(
    state: AppState,
    request: Ruma<media::get_content_thumbnail::v3::Request>,
) -> Result<Response, MatrixError> {
    let r = &request.body;
    serve_thumbnail(
        &state,
        ThumbnailRequest {
            server_name: &r.server_name,
            media_id: &r.media_id,
            width: r.width,
            height: r.height,
            method: r.method.as_ref(),
            timeout: r.timeout_ms,
            allow_remote: r.allow_remote,
        },
    )
    .await
}

/// The `Range` header of a download request, if it names one range of bytes (the only kind
/// served; anything else gets the whole content, as RFC 9110 allows).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RequestedRange(Option<ByteRange>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ByteRange {
    /// `bytes=first-` or `bytes=first-last`.
    From { first: u64, last: Option<u64> },
    /// `bytes=-n`: the last n bytes.
    Suffix(u64),
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for RequestedRange {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(RequestedRange(
            parts
                .headers
                .get(header::RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_range),
        ))
    }
}

fn parse_range(value: &str) -> Option<ByteRange> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.trim().split_once('-')?;
    if first.is_empty() {
        return last.parse().ok().map(ByteRange::Suffix);
    }
    let first = first.parse().ok()?;
    let last = if last.is_empty() {
        None
    } else {
        Some(last.parse().ok()?)
    };
    if last.is_some_and(|last| last < first) {
        return None;
    }
    Some(ByteRange::From { first, last })
}

/// The inclusive byte range to send of `size` bytes, or `None` if it cannot be satisfied.
fn resolve_range(range: ByteRange, size: u64) -> Option<(u64, u64)> {
    match range {
        ByteRange::From { first, last } if first < size => {
            Some((first, last.map_or(size - 1, |last| last.min(size - 1))))
        }
        ByteRange::Suffix(n) if n > 0 && size > 0 => Some((size - n.min(size), size - 1)),
        _ => None,
    }
}

/// A download answering a `Range` request: 206 with the part, 416 if the range lies outside
/// the content, the whole content otherwise.
async fn ranged_media_response(
    mut content: MediaContent,
    filename: Option<String>,
    range: RequestedRange,
) -> Result<Response, MatrixError> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let Some(range) = range.0 else {
        return media_response(content, filename).await;
    };
    let size = content.size;
    let Some((first, last)) = resolve_range(range, size) else {
        let mut response = http::StatusCode::RANGE_NOT_SATISFIABLE.into_response();
        if let Ok(value) = HeaderValue::from_str(&format!("bytes */{size}")) {
            response.headers_mut().insert(header::CONTENT_RANGE, value);
        }
        return Ok(response);
    };
    content
        .file
        .seek(std::io::SeekFrom::Start(first))
        .await
        .map_err(|err| MatrixError::internal(format!("media read: {err}")))?;
    let length = last - first + 1;
    let body = file_body(content.file.take(length), length).await?;
    let mut response = media_response_with_body(
        MediaHead {
            content_type: content.content_type,
            filename: filename.or(content.filename),
            size: length,
        },
        body,
    );
    *response.status_mut() = http::StatusCode::PARTIAL_CONTENT;
    if let Ok(value) = HeaderValue::from_str(&format!("bytes {first}-{last}/{size}")) {
        response.headers_mut().insert(header::CONTENT_RANGE, value);
    }
    Ok(response)
}

/// What the headers of a download say.
struct MediaHead {
    content_type: Option<String>,
    filename: Option<String>,
    size: u64,
}

/// A streamed download: the stored type, `inline` only for types on the safe list (with the
/// file name RFC 6266/8187-encoded), and headers that sandbox whatever the browser makes of it.
async fn media_response(
    content: MediaContent,
    filename: Option<String>,
) -> Result<Response, MatrixError> {
    let body = file_body(content.file, content.size).await?;
    Ok(media_response_with_body(
        MediaHead {
            content_type: content.content_type,
            filename: filename.or(content.filename),
            size: content.size,
        },
        body,
    ))
}

/// Bodies up to this size are read whole and sent with the headers in one write; larger ones
/// are streamed in chunks of it. (Streamed, a small file's headers and body went out as two
/// small writes, and the second waited for the client's delayed ACK: ~40 ms per thumbnail.)
const WHOLE_BODY_LIMIT: u64 = 256 * 1024;

async fn file_body(
    mut file: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    size: u64,
) -> Result<axum::body::Body, MatrixError> {
    use tokio::io::AsyncReadExt;
    if size <= WHOLE_BODY_LIMIT {
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        file.read_to_end(&mut bytes)
            .await
            .map_err(|err| MatrixError::internal(format!("media read: {err}")))?;
        return Ok(axum::body::Body::from(bytes));
    }
    Ok(axum::body::Body::from_stream(
        tokio_util::io::ReaderStream::with_capacity(file, WHOLE_BODY_LIMIT as usize),
    ))
}

/// The `Content-Disposition` of content of this type: `inline` only for types on the safe
/// list, with the file name RFC 6266/8187-encoded. Always sent: without it a browser would
/// decide for itself. ruma's encoding escapes what a header cannot hold, but should a name
/// still not fit, the disposition goes without it.
pub(crate) fn content_disposition(content_type: &str, filename: Option<String>) -> HeaderValue {
    let disposition_type = if is_inline_content_type(content_type) {
        ContentDispositionType::Inline
    } else {
        ContentDispositionType::Attachment
    };
    let disposition = ContentDisposition::new(disposition_type).with_filename(filename);
    HeaderValue::from_str(&disposition.to_string()).unwrap_or_else(|_| {
        HeaderValue::from_str(disposition.disposition_type.as_ref())
            .unwrap_or(HeaderValue::from_static("attachment"))
    })
}

fn media_response_with_body(head: MediaHead, body: axum::body::Body) -> Response {
    let content_type = head
        .content_type
        .unwrap_or_else(|| "application/octet-stream".to_owned());
    let disposition = content_disposition(&content_type, head.filename);
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&content_type)
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(head.size));
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(header::CONTENT_DISPOSITION, disposition);
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        http::HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("cross-origin"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Content under a media id never changes; authenticated, so not for shared caches.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=86400, immutable"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_resolve() {
        let r = |v| parse_range(v);
        assert_eq!(
            r("bytes=0-9"),
            Some(ByteRange::From {
                first: 0,
                last: Some(9)
            })
        );
        assert_eq!(
            r("bytes=5-"),
            Some(ByteRange::From {
                first: 5,
                last: None
            })
        );
        assert_eq!(r("bytes=-3"), Some(ByteRange::Suffix(3)));
        for unserved in [
            "bytes=0-1,4-5",
            "bytes=9-2",
            "items=0-1",
            "bytes=a-b",
            "bytes=-",
        ] {
            assert_eq!(r(unserved), None, "{unserved}");
        }
        let resolve = |v, size| resolve_range(parse_range(v).unwrap(), size);
        assert_eq!(resolve("bytes=0-9", 5), Some((0, 4)));
        assert_eq!(resolve("bytes=2-", 5), Some((2, 4)));
        assert_eq!(resolve("bytes=-2", 5), Some((3, 4)));
        assert_eq!(resolve("bytes=-9", 5), Some((0, 4)));
        assert_eq!(resolve("bytes=5-", 5), None);
        assert_eq!(resolve("bytes=-0", 5), None);
        assert_eq!(resolve("bytes=0-", 0), None);
    }
}
