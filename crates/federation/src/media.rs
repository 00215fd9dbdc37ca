//! Downloading another server's media: the federation download and thumbnail endpoints
//! (`/_matrix/federation/v1/media/...`, X-Matrix signed, answered `multipart/mixed`: a JSON
//! metadata part, then the content or a `Location` to fetch it from) and, for servers older
//! than them, the deprecated `/_matrix/media/v3/...` endpoints (a plain body). The content is
//! handed out chunk by chunk as it arrives ([`RemoteMedia::chunk`]), never buffered whole, so
//! the caller can count it against its limit and write it to disk; the multipart parser holds
//! at most one chunk and the length of the closing boundary.

use std::time::Duration;

use crate::{FederationClient, FederationError};
use ruma::ServerName;

/// Time a media download may take beyond the client's request timeout and the wait for a
/// pending upload it asked for: the content of a large file arriving.
const MEDIA_TRANSFER_ALLOWANCE: Duration = Duration::from_secs(120);

/// The most of a multipart answer read before the content starts (the boundary, the metadata
/// part and the content's headers).
const MAX_MULTIPART_HEAD: usize = 64 * 1024;

/// Which endpoint to ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaEndpoint {
    /// `/_matrix/federation/v1/media/{download,thumbnail}/{mediaId}`, signed.
    Federation,
    /// `/_matrix/media/v3/{download,thumbnail}/{serverName}/{mediaId}?allow_remote=false`,
    /// unsigned: what servers older than the federation endpoints serve.
    Legacy,
}

/// What to download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaRequest<'a> {
    Download {
        media_id: &'a str,
        timeout_ms: u64,
    },
    Thumbnail {
        media_id: &'a str,
        width: u32,
        height: u32,
        /// `crop` or `scale`.
        method: &'a str,
        animated: Option<bool>,
        timeout_ms: u64,
    },
}

impl MediaRequest<'_> {
    /// How long the server is asked to wait for a pending upload.
    pub fn timeout_ms(&self) -> u64 {
        match self {
            MediaRequest::Download { timeout_ms, .. }
            | MediaRequest::Thumbnail { timeout_ms, .. } => *timeout_ms,
        }
    }

    /// The request's path and query on `server_name` through `endpoint`.
    pub fn path_and_query(&self, server_name: &ServerName, endpoint: MediaEndpoint) -> String {
        let (kind, media_id) = match self {
            MediaRequest::Download { media_id, .. } => ("download", *media_id),
            MediaRequest::Thumbnail { media_id, .. } => ("thumbnail", *media_id),
        };
        let mut path = match endpoint {
            MediaEndpoint::Federation => {
                format!("/_matrix/federation/v1/media/{kind}/{}", encode(media_id))
            }
            MediaEndpoint::Legacy => format!(
                "/_matrix/media/v3/{kind}/{}/{}",
                encode(server_name.as_str()),
                encode(media_id)
            ),
        };
        let mut query: Vec<String> = Vec::new();
        match self {
            MediaRequest::Download { timeout_ms, .. } => {
                query.push(format!("timeout_ms={timeout_ms}"));
            }
            MediaRequest::Thumbnail {
                width,
                height,
                method,
                animated,
                timeout_ms,
                ..
            } => {
                query.push(format!("width={width}"));
                query.push(format!("height={height}"));
                query.push(format!("method={}", encode(method)));
                if let Some(animated) = animated {
                    query.push(format!("animated={animated}"));
                }
                query.push(format!("timeout_ms={timeout_ms}"));
            }
        }
        if endpoint == MediaEndpoint::Legacy {
            // The server answers for its own media only: it must not fetch from a third.
            query.push("allow_remote=false".to_owned());
        }
        path.push('?');
        path.push_str(&query.join("&"));
        path
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters (and `:`, which server
/// names with a port carry and paths allow).
fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~:".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Where the bytes come from: a response body, or (in tests) a list of chunks.
pub trait ChunkSource: Send {
    fn next_chunk(
        &mut self,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, FederationError>> + Send;
}

impl ChunkSource for reqwest::Response {
    async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, FederationError> {
        self.chunk()
            .await
            .map(|chunk| chunk.map(|c| c.to_vec()))
            .map_err(|e| FederationError::Transport(crate::push_gateway::with_causes(&e)))
    }
}

/// A downloaded media's headers, and its content to read chunk by chunk.
#[derive(Debug)]
pub struct RemoteMedia<S = reqwest::Response> {
    pub content_type: Option<String>,
    /// The `Content-Disposition` header as the server sent it (the file name is in it).
    pub content_disposition: Option<String>,
    /// The content's length, when the server declared it (a plain body's `Content-Length`).
    pub declared_length: Option<u64>,
    body: Body<S>,
}

#[derive(Debug)]
enum Body<S> {
    Plain(S),
    Multipart(MultipartContent<S>),
}

impl<S: ChunkSource> RemoteMedia<S> {
    /// The next chunk of the content; `None` at its end. A multipart answer that ends before
    /// its closing boundary is an error (the content may be cut short).
    pub async fn chunk(&mut self) -> Result<Option<Vec<u8>>, FederationError> {
        match &mut self.body {
            Body::Plain(source) => source.next_chunk().await,
            Body::Multipart(content) => content.next().await,
        }
    }
}

impl FederationClient {
    /// Asks `server_name` for its media through `endpoint`. A federation answer whose content
    /// part is a `Location` is followed (one plain GET, no further redirects).
    pub async fn get_media(
        &self,
        server_name: &ServerName,
        request: &MediaRequest<'_>,
        endpoint: MediaEndpoint,
    ) -> Result<RemoteMedia, FederationError> {
        let path = request.path_and_query(server_name, endpoint);
        let extra_time = Duration::from_millis(request.timeout_ms()) + MEDIA_TRANSFER_ALLOWANCE;
        let response = self
            .get_streamed(
                server_name,
                &path,
                endpoint == MediaEndpoint::Federation,
                extra_time,
            )
            .await?;
        if endpoint == MediaEndpoint::Legacy {
            return Ok(plain(response));
        }
        let content_type = header(response.headers(), http::header::CONTENT_TYPE);
        let Some(boundary) = content_type.as_deref().and_then(multipart_boundary) else {
            return Err(FederationError::Response(format!(
                "a federation media answer of type {content_type:?}, not multipart/mixed"
            )));
        };
        let (part, content) = open_multipart(response, &boundary).await?;
        if part.content_type.is_none()
            && let Some(location) = part.location
        {
            return Ok(plain(self.get_redirected(&location, extra_time).await?));
        }
        Ok(RemoteMedia {
            content_type: part.content_type,
            content_disposition: part.content_disposition,
            declared_length: None,
            body: Body::Multipart(content),
        })
    }
}

fn plain(response: reqwest::Response) -> RemoteMedia {
    RemoteMedia {
        content_type: header(response.headers(), http::header::CONTENT_TYPE),
        content_disposition: header(response.headers(), http::header::CONTENT_DISPOSITION),
        declared_length: response.content_length(),
        body: Body::Plain(response),
    }
}

fn header(headers: &http::HeaderMap, name: http::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The `boundary` parameter of a `multipart/mixed` content type.
pub fn multipart_boundary(content_type: &str) -> Option<String> {
    let mut params = content_type.split(';');
    let essence = params.next()?.trim();
    if !essence.eq_ignore_ascii_case("multipart/mixed") {
        return None;
    }
    params.find_map(|param| {
        let (name, value) = param.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("boundary") {
            return None;
        }
        let value = value.trim().trim_matches('"');
        (!value.is_empty() && value.len() <= 70).then(|| value.to_owned())
    })
}

/// The headers of the content part that matter.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ContentPart {
    pub content_type: Option<String>,
    pub content_disposition: Option<String>,
    pub location: Option<String>,
}

/// Reads a multipart answer up to the start of its second part's content: skips the preamble
/// and the metadata part (its JSON is `{}` today and not needed), and returns the second
/// part's headers with a reader of its content.
pub async fn open_multipart<S: ChunkSource>(
    mut source: S,
    boundary: &str,
) -> Result<(ContentPart, MultipartContent<S>), FederationError> {
    let bad = |why: &str| FederationError::Response(format!("multipart answer: {why}"));
    let dash_boundary = format!("--{boundary}").into_bytes();
    let delimiter = format!("\r\n--{boundary}").into_bytes();
    let mut buf = Vec::new();
    // The first boundary (after an optional preamble), then the rest of its line.
    let at = fill_until(&mut source, &mut buf, &dash_boundary).await?;
    buf.drain(..at + dash_boundary.len());
    let at = fill_until(&mut source, &mut buf, b"\r\n").await?;
    buf.drain(..at + 2);
    read_part_headers(&mut source, &mut buf).await?;
    // The metadata part's body, up to the next boundary.
    let at = fill_until(&mut source, &mut buf, &delimiter).await?;
    buf.drain(..at + delimiter.len());
    let at = fill_until(&mut source, &mut buf, b"\r\n").await?;
    if buf.starts_with(b"--") {
        return Err(bad("no content part"));
    }
    buf.drain(..at + 2);
    let headers = read_part_headers(&mut source, &mut buf).await?;
    let mut part = ContentPart::default();
    for (name, value) in headers {
        match name.to_ascii_lowercase().as_str() {
            "content-type" => part.content_type = Some(value),
            "content-disposition" => part.content_disposition = Some(value),
            "location" => part.location = Some(value),
            _ => {}
        }
    }
    if part.content_type.is_none() && part.location.is_none() {
        return Err(bad(
            "the content part has neither Content-Type nor Location",
        ));
    }
    Ok((
        part,
        MultipartContent {
            source,
            buf,
            delimiter,
            done: false,
        },
    ))
}

/// Reads until `needle` is in `buf` (at most [`MAX_MULTIPART_HEAD`] bytes); its position.
async fn fill_until<S: ChunkSource>(
    source: &mut S,
    buf: &mut Vec<u8>,
    needle: &[u8],
) -> Result<usize, FederationError> {
    loop {
        if let Some(at) = find(buf, needle) {
            return Ok(at);
        }
        if buf.len() > MAX_MULTIPART_HEAD {
            return Err(FederationError::Response(
                "multipart answer: no boundary where one was due".to_owned(),
            ));
        }
        match source.next_chunk().await? {
            Some(chunk) => buf.extend_from_slice(&chunk),
            None => {
                return Err(FederationError::Response(
                    "multipart answer ended early".to_owned(),
                ));
            }
        }
    }
}

/// A part's header lines, up to and including the empty line that ends them.
async fn read_part_headers<S: ChunkSource>(
    source: &mut S,
    buf: &mut Vec<u8>,
) -> Result<Vec<(String, String)>, FederationError> {
    let mut headers = Vec::new();
    loop {
        let at = fill_until(source, buf, b"\r\n").await?;
        let line: Vec<u8> = buf.drain(..at + 2).take(at).collect();
        if line.is_empty() {
            return Ok(headers);
        }
        let line = String::from_utf8(line).map_err(|_| {
            FederationError::Response("multipart answer: a header is not UTF-8".to_owned())
        })?;
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
        if headers.len() > 64 {
            return Err(FederationError::Response(
                "multipart answer: too many headers".to_owned(),
            ));
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The content of a multipart answer's second part, up to the boundary after it. Holds back
/// the last `delimiter.len() - 1` bytes read until it knows they are not the boundary's start.
#[derive(Debug)]
pub struct MultipartContent<S> {
    source: S,
    buf: Vec<u8>,
    delimiter: Vec<u8>,
    done: bool,
}

impl<S: ChunkSource> MultipartContent<S> {
    pub async fn next(&mut self) -> Result<Option<Vec<u8>>, FederationError> {
        loop {
            if self.done {
                return Ok(None);
            }
            if let Some(at) = find(&self.buf, &self.delimiter) {
                self.done = true;
                self.buf.truncate(at);
                let rest = std::mem::take(&mut self.buf);
                return Ok((!rest.is_empty()).then_some(rest));
            }
            let keep = self.delimiter.len() - 1;
            if self.buf.len() > keep {
                let out: Vec<u8> = self.buf.drain(..self.buf.len() - keep).collect();
                return Ok(Some(out));
            }
            match self.source.next_chunk().await? {
                Some(chunk) => self.buf.extend_from_slice(&chunk),
                None => {
                    return Err(FederationError::Response(
                        "multipart answer ended before its closing boundary".to_owned(),
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Chunks(std::collections::VecDeque<Vec<u8>>);

    impl ChunkSource for Chunks {
        async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, FederationError> {
            Ok(self.0.pop_front())
        }
    }

    fn split(bytes: &[u8], size: usize) -> Chunks {
        Chunks(bytes.chunks(size).map(<[u8]>::to_vec).collect())
    }

    async fn read_all(
        bytes: &[u8],
        size: usize,
    ) -> Result<(ContentPart, Vec<u8>), FederationError> {
        let (part, mut content) = open_multipart(split(bytes, size), "b0und").await?;
        let mut out = Vec::new();
        while let Some(chunk) = content.next().await? {
            out.extend_from_slice(&chunk);
        }
        Ok((part, out))
    }

    #[tokio::test]
    async fn content_is_read_whatever_the_chunking() {
        // Content that holds the boundary's text without its leading CRLF, and a near miss.
        let content = b"abc--b0und\r\n-\r\n--b0un".repeat(50);
        let mut answer = b"preamble\r\n--b0und\r\nContent-Type: application/json\r\n\r\n{}\r\n--b0und\r\nContent-Type: image/png\r\nContent-Disposition: inline; filename*=utf-8''gr%C3%B6%C3%9Fe.png\r\n\r\n".to_vec();
        answer.extend_from_slice(&content);
        answer.extend_from_slice(b"\r\n--b0und--\r\n");
        for size in [1, 2, 7, 13, 64, 4096] {
            let (part, got) = read_all(&answer, size).await.unwrap();
            assert_eq!(part.content_type.as_deref(), Some("image/png"), "{size}");
            assert_eq!(
                part.content_disposition.as_deref(),
                Some("inline; filename*=utf-8''gr%C3%B6%C3%9Fe.png")
            );
            assert_eq!(got, content, "chunks of {size}");
        }
    }

    #[tokio::test]
    async fn empty_content_and_location_parts() {
        let answer =
            b"--b0und\r\n\r\n{}\r\n--b0und\r\nContent-Type: text/plain\r\n\r\n\r\n--b0und--";
        let (_, got) = read_all(answer, 3).await.unwrap();
        assert!(got.is_empty());
        let answer =
            b"--b0und\r\nContent-Type: application/json\r\n\r\n{}\r\n--b0und\r\nLocation: https://cdn.example/x\r\n\r\n\r\n--b0und--";
        let (part, _) = read_all(answer, 5).await.unwrap();
        assert_eq!(part.location.as_deref(), Some("https://cdn.example/x"));
        assert_eq!(part.content_type, None);
    }

    #[tokio::test]
    async fn truncated_or_malformed_answers_are_errors() {
        let head =
            b"--b0und\r\n\r\n{}\r\n--b0und\r\nContent-Type: text/plain\r\n\r\nhello".to_vec();
        assert!(read_all(&head, 4).await.is_err(), "no closing boundary");
        assert!(
            read_all(b"--b0und\r\n\r\n{}\r\n--b0und--\r\n", 4)
                .await
                .is_err(),
            "no content part"
        );
        assert!(
            read_all(
                b"--b0und\r\n\r\n{}\r\n--b0und\r\nX-Other: 1\r\n\r\nx\r\n--b0und--",
                4
            )
            .await
            .is_err(),
            "neither type nor location"
        );
        let endless = vec![b'x'; MAX_MULTIPART_HEAD * 2];
        assert!(
            read_all(&endless, 1024).await.is_err(),
            "no boundary at all"
        );
    }

    #[test]
    fn boundaries_and_paths() {
        assert_eq!(
            multipart_boundary("multipart/mixed; boundary=\"abc\"").as_deref(),
            Some("abc")
        );
        assert_eq!(
            multipart_boundary("Multipart/Mixed;charset=x; boundary=q1").as_deref(),
            Some("q1")
        );
        assert_eq!(multipart_boundary("application/json"), None);
        assert_eq!(multipart_boundary("multipart/mixed"), None);
        let server = <&ServerName>::try_from("hs2.test:8448").unwrap();
        let thumb = MediaRequest::Thumbnail {
            media_id: "abc_-1",
            width: 32,
            height: 24,
            method: "crop",
            animated: None,
            timeout_ms: 20000,
        };
        assert_eq!(
            thumb.path_and_query(server, MediaEndpoint::Federation),
            "/_matrix/federation/v1/media/thumbnail/abc_-1?width=32&height=24&method=crop&timeout_ms=20000"
        );
        let download = MediaRequest::Download {
            media_id: "m",
            timeout_ms: 5,
        };
        assert_eq!(
            download.path_and_query(server, MediaEndpoint::Legacy),
            "/_matrix/media/v3/download/hs2.test:8448/m?timeout_ms=5&allow_remote=false"
        );
        assert_eq!(encode("a/b c"), "a%2Fb%20c");
    }
}
