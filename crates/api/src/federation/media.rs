//! `GET /_matrix/federation/v1/media/download/{mediaId}` and `/thumbnail/{mediaId}`: this
//! server's media for other servers (X-Matrix checked by the bridge), with the client
//! endpoints' rules (pending uploads waited for up to `timeout_ms`, then 504
//! `M_NOT_YET_UPLOADED`; the same thumbnail sizes and methods). Only this server's own media:
//! the path names no server, and media cached from others is never served on. The answer is
//! the spec's `multipart/mixed`: a JSON part `{}`, then the content with its type and
//! disposition, streamed from its file.

use axum::{
    Router,
    response::{IntoResponse, Response},
};
use http::{HeaderValue, header};
use ruma::api::federation::authenticated_media::{get_content, get_content_thumbnail};
use tokio::io::AsyncReadExt;

use myelin_service::media::MediaContent;

use crate::{
    AppState, MatrixError, Ruma,
    media::{content_disposition, thumbnail_method, thumbnail_side},
    ruma_bridge::RumaRouterExt,
};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .ruma_raw::<get_content::v1::Request, _, _, _>(download)
        .ruma_raw::<get_content_thumbnail::v1::Request, _, _, _>(thumbnail)
}

async fn download(
    state: AppState,
    request: Ruma<get_content::v1::Request>,
) -> Result<Response, MatrixError> {
    let r = request.body;
    let content = state
        .services
        .media
        .download(
            &state.services.config.server_name,
            &r.media_id,
            r.timeout_ms,
            false,
        )
        .await?;
    Ok(multipart_response(content))
}

async fn thumbnail(
    state: AppState,
    request: Ruma<get_content_thumbnail::v1::Request>,
) -> Result<Response, MatrixError> {
    let r = request.body;
    let method = thumbnail_method(r.method.as_ref())?;
    let content = state
        .services
        .media
        .thumbnail(
            &state.services.config.server_name,
            &r.media_id,
            thumbnail_side(r.width),
            thumbnail_side(r.height),
            method,
            r.timeout_ms,
            false,
        )
        .await?;
    Ok(multipart_response(content))
}

/// The two parts around the content: the metadata part and the content's headers before it,
/// the closing boundary after it.
fn multipart_frame(
    boundary: &str,
    content_type: &str,
    disposition: &HeaderValue,
) -> (Vec<u8>, Vec<u8>) {
    let mut head = format!(
        "--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n\
         --{boundary}\r\nContent-Type: {content_type}\r\nContent-Disposition: "
    )
    .into_bytes();
    head.extend_from_slice(disposition.as_bytes());
    head.extend_from_slice(b"\r\n\r\n");
    let tail = format!("\r\n--{boundary}--\r\n").into_bytes();
    (head, tail)
}

fn multipart_response(content: MediaContent) -> Response {
    // Random, so the content cannot hold it by design (a server's own upload could otherwise
    // cut its answer short).
    let boundary = ruma::TransactionId::new().to_string();
    let content_type = content
        .content_type
        .filter(|t| HeaderValue::from_str(t).is_ok() && !t.contains(['\r', '\n']))
        .unwrap_or_else(|| "application/octet-stream".to_owned());
    let disposition = content_disposition(&content_type, content.filename);
    let (head, tail) = multipart_frame(&boundary, &content_type, &disposition);
    let length = head.len() as u64 + content.size + tail.len() as u64;
    let reader = std::io::Cursor::new(head)
        .chain(content.file.take(content.size))
        .chain(std::io::Cursor::new(tail));
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
        reader,
        64 * 1024,
    ));
    let mut response = body.into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&format!("multipart/mixed; boundary={boundary}")) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_is_the_specs_multipart() {
        let disposition = HeaderValue::from_static("inline; filename=\"a.png\"");
        let (head, tail) = multipart_frame("B", "image/png", &disposition);
        let mut whole = head;
        whole.extend_from_slice(b"PNG");
        whole.extend_from_slice(&tail);
        assert_eq!(
            String::from_utf8(whole).unwrap(),
            "--B\r\nContent-Type: application/json\r\n\r\n{}\r\n--B\r\n\
             Content-Type: image/png\r\nContent-Disposition: inline; filename=\"a.png\"\r\n\r\n\
             PNG\r\n--B--\r\n"
        );
    }
}
