//! The media repository through HTTP on both databases: uploads and authenticated downloads by
//! the uploader and by others (headers included), the size limit, unknown and malformed ids (no
//! way out of the media directory), the legacy endpoints (off by default), asynchronous
//! uploads, thumbnails of each image type, decompression bombs, deduplicated content deleted
//! only with its last media id, and an interrupted upload leaving no media id behind.

use std::{path::Path, time::Duration};

use myelin_testkit::{TestServer, TestUser, enc, test_backends};
use reqwest::{Method, StatusCode, header};
use ruma::http_headers::{ContentDisposition, ContentDispositionType};
use serde_json::Value;

const UPLOAD: &str = "/_matrix/media/v3/upload";
const DOWNLOAD: &str = "/_matrix/client/v1/media/download";
const THUMBNAIL: &str = "/_matrix/client/v1/media/thumbnail";

/// A raw response: status, headers, body bytes.
struct Raw {
    status: StatusCode,
    headers: header::HeaderMap,
    body: Vec<u8>,
}

impl Raw {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
    }

    fn disposition(&self) -> ContentDisposition {
        self.header("content-disposition")
            .parse()
            .expect("Content-Disposition parses")
    }

    fn assert_error(&self, status: u16, errcode: &str) {
        assert_eq!(
            self.status,
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(self.json()["errcode"], errcode, "{}", self.json());
    }
}

async fn raw(
    server: &TestServer,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<(Vec<u8>, &str)>,
) -> Raw {
    let mut request = server.http.request(method, server.client_url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some((bytes, content_type)) = body {
        request = request
            .header(header::CONTENT_TYPE, content_type)
            .body(bytes);
    }
    let response = request.send().await.expect("request");
    Raw {
        status: response.status(),
        headers: response.headers().clone(),
        body: response.bytes().await.expect("body").to_vec(),
    }
}

/// Uploads and returns the raw answer.
async fn upload_raw(
    server: &TestServer,
    user: &TestUser,
    bytes: &[u8],
    content_type: &str,
    filename: Option<&str>,
) -> Raw {
    let path = match filename {
        Some(name) => format!("{UPLOAD}?filename={}", enc(name)),
        None => UPLOAD.to_owned(),
    };
    raw(
        server,
        Method::POST,
        &path,
        Some(&user.access_token),
        Some((bytes.to_vec(), content_type)),
    )
    .await
}

/// Uploads, asserts success, and returns the media id (the server is `localhost`).
async fn upload(
    server: &TestServer,
    user: &TestUser,
    bytes: &[u8],
    content_type: &str,
    filename: Option<&str>,
) -> String {
    let reply = upload_raw(server, user, bytes, content_type, filename).await;
    assert_eq!(reply.status, 200, "{}", reply.json());
    let uri = reply.json()["content_uri"]
        .as_str()
        .expect("content_uri")
        .to_owned();
    uri.strip_prefix("mxc://localhost/")
        .unwrap_or_else(|| panic!("{uri} is not a local mxc URI"))
        .to_owned()
}

async fn download(server: &TestServer, user: &TestUser, media_id: &str) -> Raw {
    raw(
        server,
        Method::GET,
        &format!("{DOWNLOAD}/localhost/{media_id}"),
        Some(&user.access_token),
        None,
    )
    .await
}

/// Every regular file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Files of uploads being written (or abandoned): under `tmp/`, less the per-process locks.
fn temporary_files(server: &TestServer) -> Vec<std::path::PathBuf> {
    files_under(&media_dir(server).join("tmp"))
        .into_iter()
        .filter(|path| path.extension().is_none_or(|ext| ext != "lock"))
        .collect()
}

fn media_dir(server: &TestServer) -> std::path::PathBuf {
    server.data_dir.path().join("media")
}

fn services(server: &TestServer) -> &myelin_service::Services {
    &server.server.as_ref().expect("running").services
}

#[tokio::test]
async fn upload_then_download_by_the_uploader_and_another_user() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let name = "größe 😀 \"report\".txt";
        let media_id = upload(&server, &alice, b"hello media", "text/plain", Some(name)).await;
        assert!(
            media_id.len() >= 16
                && media_id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
            "{media_id}"
        );

        for user in [&alice, &bob] {
            let reply = download(&server, user, &media_id).await;
            assert_eq!(reply.status, 200, "{kind:?}");
            assert_eq!(reply.body, b"hello media");
            assert_eq!(reply.header("content-type"), "text/plain");
            assert_eq!(reply.header("content-length"), "11");
            let disposition = reply.disposition();
            assert_eq!(disposition.disposition_type, ContentDispositionType::Inline);
            assert_eq!(disposition.filename.as_deref(), Some(name), "{kind:?}");
            // Non-ASCII names go in RFC 8187's `filename*`.
            assert!(
                reply
                    .header("content-disposition")
                    .contains("filename*=utf-8''"),
                "{}",
                reply.header("content-disposition")
            );
            assert!(
                reply
                    .header("content-security-policy")
                    .starts_with("sandbox")
            );
            assert_eq!(reply.header("cross-origin-resource-policy"), "cross-origin");
        }

        // A file name in the path is the one sent back.
        let reply = raw(
            &server,
            Method::GET,
            &format!("{DOWNLOAD}/localhost/{media_id}/{}", enc("other.txt")),
            Some(&bob.access_token),
            None,
        )
        .await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.disposition().filename.as_deref(), Some("other.txt"));

        // Authenticated media needs a login.
        let reply = raw(
            &server,
            Method::GET,
            &format!("{DOWNLOAD}/localhost/{media_id}"),
            None,
            None,
        )
        .await;
        reply.assert_error(401, "M_MISSING_TOKEN");

        // Types not on the safe list are attachments, whatever the uploader said.
        let html = upload(
            &server,
            &alice,
            b"<script>alert(1)</script>",
            "text/html",
            Some("page.html"),
        )
        .await;
        let reply = download(&server, &bob, &html).await;
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.disposition().disposition_type,
            ContentDispositionType::Attachment
        );
        assert_eq!(reply.header("content-type"), "text/html");

        // A name with a line break injects no header, and the disposition is still sent.
        let evil = upload(
            &server,
            &alice,
            b"x",
            "text/html",
            Some("a\r\nX-Injected: 1.html"),
        )
        .await;
        let reply = download(&server, &bob, &evil).await;
        assert_eq!(reply.status, 200);
        assert!(reply.headers.get("x-injected").is_none());
        assert_eq!(
            reply.disposition().disposition_type,
            ContentDispositionType::Attachment
        );

        // No name, no type: octet-stream, no filename.
        let unnamed = upload(
            &server,
            &alice,
            b"\x00\x01",
            "application/octet-stream",
            None,
        )
        .await;
        let reply = download(&server, &alice, &unnamed).await;
        assert_eq!(reply.body, b"\x00\x01");
        assert_eq!(reply.disposition().filename, None);

        // The same content twice: two media ids, one file.
        let again = upload(&server, &bob, b"hello media", "text/plain", None).await;
        assert_ne!(again, media_id);
        assert_eq!(download(&server, &alice, &again).await.body, b"hello media");
        assert_eq!(
            files_under(&media_dir(&server).join("content")).len(),
            4,
            "{kind:?}: identical uploads share one file"
        );

        // The config endpoint gives the limit.
        let (status, body) = server
            .get("/_matrix/client/v1/media/config", &alice.access_token)
            .await;
        assert_eq!(status, 200);
        assert_eq!(body["m.upload.size"], 50 * 1024 * 1024);

        // Five media ids of 11 + 25 + 1 + 2 + 11 bytes, in /metrics.
        let metrics = raw(&server, Method::GET, "/metrics", None, None).await;
        let metrics = String::from_utf8(metrics.body).unwrap();
        assert!(metrics.contains("myelin_media_ids 5\n"), "{metrics}");
        assert!(metrics.contains("myelin_media_bytes 50\n"), "{metrics}");
        server.stop().await;
    }
}

#[tokio::test]
async fn uploads_over_the_size_limit_are_refused_and_leave_nothing() {
    for kind in test_backends() {
        let server = TestServer::start_with(kind, |config| {
            config.media.max_upload_size = 1000;
        })
        .await;
        let alice = server.register("alice").await;
        let reply = upload_raw(
            &server,
            &alice,
            &[7; 1001],
            "application/octet-stream",
            None,
        )
        .await;
        reply.assert_error(413, "M_TOO_LARGE");
        assert!(temporary_files(&server).is_empty(), "{kind:?}");
        assert!(files_under(&media_dir(&server).join("content")).is_empty());
        assert_eq!(services(&server).media.totals().await.unwrap(), (0, 0));

        let media_id = upload(
            &server,
            &alice,
            &[7; 1000],
            "application/octet-stream",
            None,
        )
        .await;
        assert_eq!(download(&server, &alice, &media_id).await.body.len(), 1000);
        let (_, body) = server
            .get("/_matrix/client/v1/media/config", &alice.access_token)
            .await;
        assert_eq!(body["m.upload.size"], 1000);
        server.stop().await;
    }
}

#[tokio::test]
async fn unknown_remote_and_malformed_ids_are_not_found_and_never_paths() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let token = Some(alice.access_token.as_str());
        // Something a traversal would reach: the SQLite file or anything in the data dir.
        std::fs::write(server.data_dir.path().join("secret"), b"secret").unwrap();

        download(&server, &alice, "NoSuchMediaId")
            .await
            .assert_error(404, "M_NOT_FOUND");
        // Remote media of a server that cannot be reached (a private address, refused without
        // a connection): 502. (Fetching it is `federation_media.rs`.)
        raw(
            &server,
            Method::GET,
            &format!("{DOWNLOAD}/127.0.0.1:1/abc"),
            token,
            None,
        )
        .await
        .assert_error(502, "M_UNKNOWN");
        for media_id in [
            "..%2F..%2Fsecret",
            "..%2Fsecret",
            "a%2Fb",
            "%2E%2E%2F%2E%2E%2Fmyelin.db",
        ] {
            for base in [DOWNLOAD, THUMBNAIL] {
                let path = format!("{base}/localhost/{media_id}?width=8&height=8");
                let reply = raw(&server, Method::GET, &path, token, None).await;
                assert_eq!(reply.status, 404, "{kind:?} {path}");
                assert_eq!(reply.json()["errcode"], "M_NOT_FOUND", "{path}");
            }
        }
        // A server name that is not one.
        for server_name in ["..", "bad%20name", "a%2Fb"] {
            let path = format!("{DOWNLOAD}/{server_name}/abc");
            let reply = raw(&server, Method::GET, &path, token, None).await;
            assert!(
                matches!(reply.status.as_u16(), 400 | 404),
                "{kind:?} {path}: {}",
                reply.status
            );
            assert!(reply.json()["errcode"].is_string(), "{path}");
        }
        // Uploading to a malformed or unknown id.
        let reply = raw(
            &server,
            Method::PUT,
            "/_matrix/media/v3/upload/localhost/..%2Fsecret",
            token,
            Some((b"x".to_vec(), "text/plain")),
        )
        .await;
        reply.assert_error(404, "M_NOT_FOUND");
        assert_eq!(
            std::fs::read(server.data_dir.path().join("secret")).unwrap(),
            b"secret"
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn legacy_endpoints_are_off_by_default_and_on_when_configured() {
    for kind in test_backends() {
        for legacy in [false, true] {
            let server = TestServer::start_with(kind, |config| {
                config.media.legacy_endpoints = legacy;
            })
            .await;
            let alice = server.register("alice").await;
            // Uploads are not deprecated: both versions always work.
            let media_id = upload(&server, &alice, b"legacy", "text/plain", None).await;
            let reply = raw(
                &server,
                Method::POST,
                "/_matrix/media/r0/upload",
                Some(&alice.access_token),
                Some((b"r0".to_vec(), "text/plain")),
            )
            .await;
            assert_eq!(reply.status, 200);

            for prefix in ["/_matrix/media/v3", "/_matrix/media/r0"] {
                let reply = raw(
                    &server,
                    Method::GET,
                    &format!("{prefix}/download/localhost/{media_id}"),
                    None,
                    None,
                )
                .await;
                let named = raw(
                    &server,
                    Method::GET,
                    &format!("{prefix}/download/localhost/{media_id}/n.txt"),
                    None,
                    None,
                )
                .await;
                let config = raw(
                    &server,
                    Method::GET,
                    &format!("{prefix}/config"),
                    Some(&alice.access_token),
                    None,
                )
                .await;
                if legacy {
                    assert_eq!(reply.status, 200, "{kind:?} {prefix}");
                    assert_eq!(reply.body, b"legacy");
                    assert_eq!(named.disposition().filename.as_deref(), Some("n.txt"));
                    assert_eq!(config.status, 200);
                    assert!(config.json()["m.upload.size"].is_u64());
                } else {
                    reply.assert_error(404, "M_UNRECOGNIZED");
                    named.assert_error(404, "M_UNRECOGNIZED");
                    config.assert_error(404, "M_UNRECOGNIZED");
                }
            }
            let thumb = raw(
                &server,
                Method::GET,
                &format!("/_matrix/media/v3/thumbnail/localhost/{media_id}?width=8&height=8"),
                None,
                None,
            )
            .await;
            if legacy {
                // Served (text cannot be thumbnailed, which is the answer's business).
                thumb.assert_error(400, "M_UNKNOWN");
            } else {
                thumb.assert_error(404, "M_UNRECOGNIZED");
            }
            server.stop().await;
        }
    }
}

async fn create_pending(server: &TestServer, user: &TestUser) -> Raw {
    raw(
        server,
        Method::POST,
        "/_matrix/media/v1/create",
        Some(&user.access_token),
        Some((b"{}".to_vec(), "application/json")),
    )
    .await
}

#[tokio::test]
async fn asynchronous_uploads_wait_limit_and_refuse_overwrites() {
    for kind in test_backends() {
        let server = TestServer::start_with(kind, |config| {
            config.media.max_pending_uploads = 2;
        })
        .await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let reply = create_pending(&server, &alice).await;
        assert_eq!(reply.status, 200, "{}", reply.json());
        let uri = reply.json()["content_uri"].as_str().unwrap().to_owned();
        let expires = reply.json()["unused_expires_at"].as_u64().unwrap();
        assert!(expires > myelin_service::now_millis() as u64);
        let media_id = uri.strip_prefix("mxc://localhost/").unwrap().to_owned();
        let put_path = format!("/_matrix/media/v3/upload/localhost/{media_id}?filename=late.txt");

        // Not uploaded yet: a short wait ends in M_NOT_YET_UPLOADED.
        let reply = raw(
            &server,
            Method::GET,
            &format!("{DOWNLOAD}/localhost/{media_id}?timeout_ms=100"),
            Some(&bob.access_token),
            None,
        )
        .await;
        reply.assert_error(504, "M_NOT_YET_UPLOADED");

        // Only the creator may upload.
        let reply = raw(
            &server,
            Method::PUT,
            &put_path,
            Some(&bob.access_token),
            Some((b"bob's".to_vec(), "text/plain")),
        )
        .await;
        reply.assert_error(403, "M_FORBIDDEN");

        // A download waiting for it gets it as soon as it arrives.
        let waiting = {
            let http = server.http.clone();
            let url =
                server.client_url(&format!("{DOWNLOAD}/localhost/{media_id}?timeout_ms=10000"));
            let token = bob.access_token.clone();
            tokio::spawn(async move {
                let response = http.get(url).bearer_auth(token).send().await.unwrap();
                (response.status(), response.bytes().await.unwrap().to_vec())
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        let reply = raw(
            &server,
            Method::PUT,
            &put_path,
            Some(&alice.access_token),
            Some((b"finally".to_vec(), "text/plain")),
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.json());
        let (status, body) = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the waiting download was woken")
            .unwrap();
        assert_eq!(status, 200, "{kind:?}");
        assert_eq!(body, b"finally");
        let reply = download(&server, &alice, &media_id).await;
        assert_eq!(reply.disposition().filename.as_deref(), Some("late.txt"));

        // Once only.
        let reply = raw(
            &server,
            Method::PUT,
            &put_path,
            Some(&alice.access_token),
            Some((b"again".to_vec(), "text/plain")),
        )
        .await;
        reply.assert_error(409, "M_CANNOT_OVERWRITE_MEDIA");
        assert_eq!(download(&server, &alice, &media_id).await.body, b"finally");

        // Two pending at most; uploading one frees a place.
        assert_eq!(create_pending(&server, &alice).await.status, 200);
        let reply = create_pending(&server, &alice).await;
        assert_eq!(reply.status, 200);
        let third = create_pending(&server, &alice).await;
        third.assert_error(429, "M_LIMIT_EXCEEDED");
        assert!(third.json()["retry_after_ms"].as_u64().is_some());
        assert_eq!(create_pending(&server, &bob).await.status, 200, "per user");
        let second_id = reply.json()["content_uri"]
            .as_str()
            .unwrap()
            .strip_prefix("mxc://localhost/")
            .unwrap()
            .to_owned();
        let reply = raw(
            &server,
            Method::PUT,
            &format!("/_matrix/media/v3/upload/localhost/{second_id}"),
            Some(&alice.access_token),
            Some((b"x".to_vec(), "text/plain")),
        )
        .await;
        assert_eq!(reply.status, 200);
        assert_eq!(create_pending(&server, &alice).await.status, 200);
        server.stop().await;
    }
}

/// A 64×32 test image in `format`: a left half red, right half blue.
fn test_image(format: image::ImageFormat) -> Vec<u8> {
    let img = image::RgbImage::from_fn(64, 32, |x, _| {
        if x < 32 {
            image::Rgb([255, 0, 0])
        } else {
            image::Rgb([0, 0, 255])
        }
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut out, format)
        .expect("encode test image");
    out.into_inner()
}

async fn thumbnail(
    server: &TestServer,
    user: &TestUser,
    media_id: &str,
    width: u32,
    height: u32,
    method: &str,
) -> Raw {
    raw(
        server,
        Method::GET,
        &format!("{THUMBNAIL}/localhost/{media_id}?width={width}&height={height}&method={method}"),
        Some(&user.access_token),
        None,
    )
    .await
}

#[tokio::test]
async fn thumbnails_of_each_image_type_have_the_right_size() {
    use image::ImageFormat;
    for kind in test_backends() {
        // Made on request only, so the files counted below are this test's.
        let server = TestServer::start_with(kind, |config| {
            config.media.thumbnails_at_upload = false;
        })
        .await;
        let alice = server.register("alice").await;
        for (format, content_type, thumb_type) in [
            (ImageFormat::Png, "image/png", "image/png"),
            (ImageFormat::Jpeg, "image/jpeg", "image/jpeg"),
            (ImageFormat::Gif, "image/gif", "image/png"),
            (ImageFormat::WebP, "image/webp", "image/png"),
        ] {
            let media_id = upload(&server, &alice, &test_image(format), content_type, None).await;
            for (width, height, method, want) in [
                (16, 16, "crop", (16, 16)),
                (16, 16, "scale", (16, 8)),
                (10, 20, "crop", (10, 20)),
                // Never larger than the original.
                (128, 128, "scale", (64, 32)),
                (128, 128, "crop", (64, 32)),
            ] {
                let reply = thumbnail(&server, &alice, &media_id, width, height, method).await;
                assert_eq!(
                    reply.status,
                    200,
                    "{kind:?} {content_type}: {}",
                    reply.json()
                );
                assert_eq!(reply.header("content-type"), thumb_type, "{content_type}");
                let thumb = image::load_from_memory(&reply.body).expect("a thumbnail decodes");
                assert_eq!(
                    (thumb.width(), thumb.height()),
                    want,
                    "{kind:?} {content_type} {method} {width}x{height}"
                );
                assert_eq!(
                    reply.disposition().disposition_type,
                    ContentDispositionType::Inline
                );
            }
            // Crop keeps the centre: a square crop of the red|blue image shows both halves.
            let reply = thumbnail(&server, &alice, &media_id, 16, 16, "crop").await;
            let thumb = image::load_from_memory(&reply.body).unwrap().to_rgb8();
            assert!(
                thumb.get_pixel(0, 8)[0] > 200,
                "{content_type}: red on the left"
            );
            assert!(
                thumb.get_pixel(15, 8)[2] > 200,
                "{content_type}: blue on the right"
            );
        }
        // Made once and kept: a second request is the same file.
        let media_id = upload(
            &server,
            &alice,
            &test_image(ImageFormat::Png),
            "image/png",
            None,
        )
        .await;
        let first = thumbnail(&server, &alice, &media_id, 20, 20, "scale").await;
        let files = files_under(&media_dir(&server).join("content")).len();
        let second = thumbnail(&server, &alice, &media_id, 20, 20, "scale").await;
        assert_eq!(first.body, second.body);
        assert_eq!(
            files_under(&media_dir(&server).join("content")).len(),
            files
        );

        // Not an image; no size.
        let text = upload(&server, &alice, b"just text", "image/png", None).await;
        thumbnail(&server, &alice, &text, 16, 16, "scale")
            .await
            .assert_error(400, "M_UNKNOWN");
        thumbnail(&server, &alice, &media_id, 0, 16, "scale")
            .await
            .assert_error(400, "M_UNKNOWN");
        thumbnail(&server, &alice, "NoSuchMediaId", 16, 16, "scale")
            .await
            .assert_error(404, "M_NOT_FOUND");
        server.stop().await;
    }
}

/// CRC-32 (IEEE), for hand-made PNG chunks.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A PNG that claims to be `width`×`height` pixels in a few dozen bytes: its header and the
/// start of a deflate stream of zeros, the shape of a decompression bomb.
fn png_bomb(width: u32, height: u32) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        png.extend((data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend(data);
        png.extend(&body);
        png.extend(crc32(&body).to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend(width.to_be_bytes());
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]); // 8-bit RGB
    chunk(b"IHDR", &ihdr);
    // zlib header and a stored-nothing deflate block: never enough, never read that far.
    chunk(b"IDAT", &[0x78, 0x9c, 0x63, 0x00, 0x00]);
    chunk(b"IEND", &[]);
    png
}

#[tokio::test]
async fn decompression_bombs_are_refused() {
    for kind in test_backends() {
        let server = TestServer::start_with(kind, |config| {
            // Small enough that a real (but modest) image trips it too.
            config.media.max_thumbnail_source_pixels = 40 * 40;
        })
        .await;
        let alice = server.register("alice").await;
        // 100 000 × 100 000 pixels claimed: 30 GB decoded.
        let bomb = upload(
            &server,
            &alice,
            &png_bomb(100_000, 100_000),
            "image/png",
            None,
        )
        .await;
        let reply = thumbnail(&server, &alice, &bomb, 32, 32, "scale").await;
        reply.assert_error(400, "M_UNKNOWN");
        assert!(
            reply.json()["error"].as_str().unwrap().contains("pixels"),
            "{}",
            reply.json()
        );
        // A real image over the configured bound is refused the same way; under it, served.
        let big = upload(
            &server,
            &alice,
            &test_image(image::ImageFormat::Png),
            "image/png",
            None,
        )
        .await;
        thumbnail(&server, &alice, &big, 16, 16, "scale")
            .await
            .assert_error(400, "M_UNKNOWN");
        let small = {
            let img = image::RgbImage::from_pixel(40, 40, image::Rgb([1, 2, 3]));
            let mut out = std::io::Cursor::new(Vec::new());
            img.write_to(&mut out, image::ImageFormat::Png).unwrap();
            out.into_inner()
        };
        let small = upload(&server, &alice, &small, "image/png", None).await;
        assert_eq!(
            thumbnail(&server, &alice, &small, 16, 16, "scale")
                .await
                .status,
            200
        );
        // The server is still fine, and the bomb is still downloadable as a file.
        assert_eq!(
            download(&server, &alice, &bomb).await.status,
            200,
            "{kind:?}"
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn shared_content_is_deleted_with_its_last_media_id() {
    for kind in test_backends() {
        let server = TestServer::start_with(kind, |config| {
            config.media.thumbnails_at_upload = false;
        })
        .await;
        let alice = server.register("alice").await;
        let a = upload(
            &server,
            &alice,
            &test_image(image::ImageFormat::Png),
            "image/png",
            None,
        )
        .await;
        let b = upload(
            &server,
            &alice,
            &test_image(image::ImageFormat::Png),
            "image/png",
            None,
        )
        .await;
        assert_eq!(
            thumbnail(&server, &alice, &a, 8, 8, "crop").await.status,
            200
        );
        let content = media_dir(&server).join("content");
        assert_eq!(files_under(&content).len(), 2, "original and thumbnail");
        let media = &services(&server).media;

        assert_eq!(media.delete(std::slice::from_ref(&a)).await.unwrap(), 1);
        download(&server, &alice, &a)
            .await
            .assert_error(404, "M_NOT_FOUND");
        assert_eq!(download(&server, &alice, &b).await.status, 200, "{kind:?}");
        assert_eq!(
            files_under(&content).len(),
            1,
            "{kind:?}: the thumbnail went with its media id, the shared original stayed"
        );
        assert_eq!(media.delete(std::slice::from_ref(&b)).await.unwrap(), 1);
        assert!(files_under(&content).is_empty(), "{kind:?}");
        assert_eq!(media.totals().await.unwrap(), (0, 0));

        // By age: everything created before now.
        upload(&server, &alice, b"old", "text/plain", None).await;
        upload(&server, &alice, b"older", "text/plain", None).await;
        let now = myelin_service::now_millis() + 1;
        assert_eq!(media.delete_created_before(now).await.unwrap(), 2);
        assert!(files_under(&content).is_empty());
        server.stop().await;
    }
}

#[tokio::test]
async fn an_upload_interrupted_between_file_and_row_leaves_no_media_id() {
    for kind in test_backends() {
        let mut server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let dir = media_dir(&server);

        // A crash in the middle of writing leaves a temporary file: never served, and gone at
        // the next start (here: in the directory of a process that is no longer there).
        std::fs::create_dir_all(dir.join("tmp").join("crashed")).unwrap();
        std::fs::write(dir.join("tmp").join("crashed").join("half"), b"half").unwrap();
        std::fs::write(dir.join("tmp").join("crashed.lock"), b"").unwrap();

        // The file is in place, then the row cannot be written (the database went away).
        let media = &services(&server).media;
        let mut writer = media.begin_upload().await.unwrap();
        writer.write(b"precious").await.unwrap();
        services(&server).store.close().await;
        assert!(
            media
                .upload("@alice:localhost", Some("text/plain"), None, writer)
                .await
                .is_err()
        );

        server.restart().await;
        assert!(
            temporary_files(&server).is_empty(),
            "{kind:?}: temporary files removed at start: {:?}",
            temporary_files(&server)
        );
        assert!(!dir.join("tmp").join("crashed.lock").exists());
        // No media id names anything: at most an unnamed file is left, which the next
        // identical upload reuses.
        assert_eq!(
            services(&server).media.totals().await.unwrap(),
            (0, 0),
            "{kind:?}"
        );
        assert!(files_under(&dir.join("content")).len() <= 1);
        let media_id = upload(&server, &alice, b"precious", "text/plain", None).await;
        assert_eq!(download(&server, &alice, &media_id).await.body, b"precious");
        assert_eq!(files_under(&dir.join("content")).len(), 1);
        server.stop().await;
    }
}

#[tokio::test]
async fn uploads_need_a_login() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let reply = raw(
            &server,
            Method::POST,
            UPLOAD,
            None,
            Some((b"x".to_vec(), "text/plain")),
        )
        .await;
        reply.assert_error(401, "M_MISSING_TOKEN");
        server.stop().await;
    }
}

/// Runs `myelin delete-media ARGS` on the test server's database and data directory, while the
/// server runs; exit code and standard output.
async fn delete_media_command(server: &TestServer, args: &[&str]) -> (Option<i32>, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_myelin"))
        .current_dir(server.data_dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("MYELIN_DATA_DIR", server.data_dir.path())
        .env("MYELIN_DATABASE__URL", &server.db.url)
        .arg("delete-media")
        .args(args)
        .output()
        .await
        .expect("run myelin delete-media");
    assert!(
        output.status.success() || output.status.code() == Some(2),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[tokio::test]
async fn delete_media_command_deletes_by_id_and_by_age() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let a = upload(&server, &alice, b"a", "text/plain", None).await;
        let b = upload(&server, &alice, b"b", "text/plain", None).await;
        let c = upload(&server, &alice, b"c", "text/plain", None).await;

        let (code, out) =
            delete_media_command(&server, &["--id", &format!("mxc://localhost/{a}")]).await;
        assert_eq!(code, Some(0));
        assert_eq!(out.trim(), "deleted 1 media", "{kind:?}");
        download(&server, &alice, &a)
            .await
            .assert_error(404, "M_NOT_FOUND");
        assert_eq!(download(&server, &alice, &b).await.status, 200);

        // Nothing is older than a day; everything is older than now.
        let (_, out) = delete_media_command(&server, &["--older-than-days", "1"]).await;
        assert_eq!(out.trim(), "deleted 0 media");
        let (_, out) = delete_media_command(&server, &["--older-than-days", "0"]).await;
        assert_eq!(out.trim(), "deleted 2 media", "{kind:?}");
        for id in [&b, &c] {
            download(&server, &alice, id)
                .await
                .assert_error(404, "M_NOT_FOUND");
        }
        assert!(files_under(&media_dir(&server).join("content")).is_empty());

        // What is not a media id or an mxc:// URI is refused before anything is opened.
        for bad in ["../secret", "mxc://example.org/a.b", "mxc://bad name/abc"] {
            let (code, _) = delete_media_command(&server, &["--id", bad]).await;
            assert_eq!(code, Some(2), "{bad}");
        }
        let (code, _) = delete_media_command(&server, &[]).await;
        assert_eq!(code, Some(2));
        server.stop().await;
    }
}

#[tokio::test]
async fn downloads_answer_single_byte_ranges() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let media_id = upload(&server, &alice, b"0123456789", "video/mp4", None).await;
        let path = server.client_url(&format!("{DOWNLOAD}/localhost/{media_id}"));
        let get = |range: &'static str| {
            server
                .http
                .get(&path)
                .bearer_auth(&alice.access_token)
                .header(header::RANGE, range)
                .send()
        };
        let response = get("bytes=2-5").await.unwrap();
        assert_eq!(response.status(), 206, "{kind:?}");
        assert_eq!(response.headers()["content-range"], "bytes 2-5/10");
        assert_eq!(response.headers()["content-length"], "4");
        assert_eq!(response.headers()["content-type"], "video/mp4");
        assert_eq!(&response.bytes().await.unwrap()[..], b"2345");
        let response = get("bytes=-3").await.unwrap();
        assert_eq!(response.status(), 206);
        assert_eq!(&response.bytes().await.unwrap()[..], b"789");
        let response = get("bytes=10-").await.unwrap();
        assert_eq!(response.status(), 416);
        assert_eq!(response.headers()["content-range"], "bytes */10");
        // Several ranges: the whole content, as the RFC allows.
        let response = get("bytes=0-1,3-4").await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["accept-ranges"], "bytes");
        assert_eq!(&response.bytes().await.unwrap()[..], b"0123456789");
        server.stop().await;
    }
}

/// A web server on loopback serving a page with OpenGraph properties, whose `og:image` is a
/// relative URL, and that image (a 64×32 PNG); counts the page's requests.
async fn web_page() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::{Arc, atomic::AtomicUsize};
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let png = test_image(image::ImageFormat::Png);
    let app = axum::Router::new()
        .route(
            "/page",
            axum::routing::get(move || {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async {
                    (
                        [(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")],
                        "<html><head><title>Fallback</title>\
                         <meta property=\"og:title\" content=\"Caf&#233; &amp; Co\">\
                         <meta property=\"og:description\" content=\"Größe\">\
                         <meta property=\"og:image\" content=\"img/pic.png\">\
                         <meta property=\"og:image:width\" content=\"9999\">\
                         </head><body>hi</body></html>",
                    )
                }
            }),
        )
        .route(
            "/img/pic.png",
            axum::routing::get(move || {
                let png = png.clone();
                async move { ([(axum::http::header::CONTENT_TYPE, "image/png")], png) }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (addr, hits)
}

#[tokio::test]
async fn url_previews_are_off_by_default_refuse_private_addresses_and_are_cached() {
    let (addr, hits) = web_page().await;
    let page = format!("http://{addr}/page");
    let preview_path = format!("/_matrix/client/v1/media/preview_url?url={}", enc(&page));
    for kind in test_backends() {
        // Off by default.
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let (status, body) = server.get(&preview_path, &alice.access_token).await;
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["errcode"], "M_UNRECOGNIZED");
        server.stop().await;

        // On, but the page is on loopback: refused without a request.
        let server = TestServer::start_with(kind, |config| {
            config.media.url_preview.enabled = true;
        })
        .await;
        let alice = server.register("alice").await;
        let before = hits.load(std::sync::atomic::Ordering::SeqCst);
        let (status, body) = server.get(&preview_path, &alice.access_token).await;
        assert_eq!(status, 403, "{kind:?}: {body}");
        assert_eq!(body["errcode"], "M_FORBIDDEN");
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), before);
        // Not a web URL.
        let (status, body) = server
            .get(
                &format!(
                    "/_matrix/client/v1/media/preview_url?url={}",
                    enc("file:///etc/passwd")
                ),
                &alice.access_token,
            )
            .await;
        assert_eq!(status, 400, "{body}");
        server.stop().await;

        // Allowed: the page's properties, fetched once for two asks; its image (a relative
        // URL) stored as alice's media and described by the stored copy, not by the page.
        let server = TestServer::start_with(kind, |config| {
            config.media.url_preview.enabled = true;
            config.media.url_preview.allow_private_addresses = true;
        })
        .await;
        let alice = server.register("alice").await;
        let before = hits.load(std::sync::atomic::Ordering::SeqCst);
        let png = test_image(image::ImageFormat::Png);
        let mut images = Vec::new();
        for _ in 0..2 {
            let (status, body) = server.get(&preview_path, &alice.access_token).await;
            assert_eq!(status, 200, "{kind:?}: {body}");
            assert_eq!(body["og:title"], "Café & Co", "{body}");
            assert_eq!(body["og:description"], "Größe");
            assert_eq!(body["og:image:type"], "image/png", "{body}");
            assert_eq!(body["og:image:width"], 64, "{body}");
            assert_eq!(body["og:image:height"], 32, "{body}");
            assert_eq!(body["matrix:image:size"], png.len(), "{body}");
            images.push(body["og:image"].as_str().expect("og:image").to_owned());
        }
        assert_eq!(
            hits.load(std::sync::atomic::Ordering::SeqCst) - before,
            1,
            "{kind:?}: the second ask was answered from the cache"
        );
        assert_eq!(
            images[0], images[1],
            "the cached preview names the same image"
        );
        let media_id = images[0]
            .strip_prefix("mxc://localhost/")
            .unwrap_or_else(|| panic!("{} is not a local mxc URI", images[0]));
        let bob = server.register("bob").await;
        let image = download(&server, &bob, media_id).await;
        assert_eq!(image.status, 200);
        assert_eq!(image.body, png, "the stored image is the page's");
        // A link to an image previews as that image.
        let (status, body) = server
            .get(
                &format!(
                    "/_matrix/client/v1/media/preview_url?url={}",
                    enc(&format!("http://{addr}/img/pic.png"))
                ),
                &alice.access_token,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["og:image:width"], 64, "{body}");
        assert!(
            body["og:image"]
                .as_str()
                .unwrap()
                .starts_with("mxc://localhost/")
        );
        server.stop().await;

        // A host override reaches a name DNS does not know.
        let server = TestServer::start_with(kind, |config| {
            config.media.url_preview.enabled = true;
            config.media.url_preview.allow_private_addresses = true;
            config
                .media
                .url_preview
                .host_overrides
                .insert("pages.example".to_owned(), addr.ip());
        })
        .await;
        let alice = server.register("alice").await;
        let (status, body) = server
            .get(
                &format!(
                    "/_matrix/client/v1/media/preview_url?url={}",
                    enc(&format!("http://pages.example:{}/page", addr.port()))
                ),
                &alice.access_token,
            )
            .await;
        assert_eq!(status, 200, "{kind:?}: {body}");
        assert_eq!(body["og:title"], "Café & Co", "{body}");
        server.stop().await;
    }
}

#[tokio::test]
async fn common_thumbnails_are_made_at_upload() {
    for kind in test_backends() {
        let server = TestServer::start(kind).await;
        let alice = server.register("alice").await;
        let media_id = upload(
            &server,
            &alice,
            &test_image(image::ImageFormat::Png),
            "image/png",
            None,
        )
        .await;
        let store = &services(&server).store;
        let wanted = [
            (32, 32, "crop"),
            (96, 96, "crop"),
            (320, 240, "scale"),
            (640, 480, "scale"),
            (800, 600, "scale"),
        ];
        let mut made = Vec::new();
        for _ in 0..200 {
            made.clear();
            for (w, h, method) in wanted {
                if let Some(row) = store.thumbnail(&media_id, w, h, method).await.unwrap() {
                    made.push(row);
                }
            }
            if made.len() == wanted.len() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(made.len(), wanted.len(), "{kind:?}: {made:?}");
        assert_eq!((made[0].width, made[0].height), (32, 32));
        assert_eq!((made[4].width, made[4].height), (64, 32), "never larger");
        // A request finds the one made at upload.
        let reply = thumbnail(&server, &alice, &media_id, 96, 96, "crop").await;
        assert_eq!(reply.status, 200);
        let thumb = image::load_from_memory(&reply.body).unwrap();
        assert_eq!((thumb.width(), thumb.height()), (64, 32));
        assert_eq!(
            store.thumbnail(&media_id, 96, 96, "crop").await.unwrap(),
            Some(made[1].clone())
        );
        // Not images: nothing made.
        let text = upload(&server, &alice, b"text", "text/plain", None).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(store.thumbnail(&text, 32, 32, "crop").await.unwrap(), None);
        server.stop().await;
    }
}

#[tokio::test]
async fn per_user_quotas_when_configured() {
    for kind in test_backends() {
        let server = TestServer::start_with(kind, |config| {
            config.media.max_bytes_per_user = Some(10);
        })
        .await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let first = upload(&server, &alice, b"123456", "text/plain", None).await;
        upload_raw(&server, &alice, b"12345", "text/plain", None)
            .await
            .assert_error(403, "M_FORBIDDEN");
        assert!(temporary_files(&server).is_empty());
        upload(&server, &alice, b"1234", "text/plain", None).await;
        // Asynchronous uploads count too.
        let pending = create_pending(&server, &alice).await.json()["content_uri"]
            .as_str()
            .unwrap()
            .strip_prefix("mxc://localhost/")
            .unwrap()
            .to_owned();
        raw(
            &server,
            Method::PUT,
            &format!("/_matrix/media/v3/upload/localhost/{pending}"),
            Some(&alice.access_token),
            Some((b"x".to_vec(), "text/plain")),
        )
        .await
        .assert_error(403, "M_FORBIDDEN");
        // Per user; deleting frees the space.
        upload(&server, &bob, b"1234567890", "text/plain", None).await;
        services(&server).media.delete(&[first]).await.unwrap();
        upload(&server, &alice, b"12345", "text/plain", None).await;
        server.stop().await;
    }
}
