//! Remote media across servers, on both databases. Two real Myelin servers over TLS: a user of
//! hs1 downloads media uploaded on hs2 (bytes, type, a non-ASCII file name), its thumbnails,
//! then both again from hs1's cache with hs2 stopped; an unknown id is 404, a pending upload
//! 504 `M_NOT_YET_UPLOADED`; the federation endpoints want X-Matrix and serve only their own
//! server's media; `/metrics` counts the cache and `delete-media` empties it. A simulated peer
//! (an HTTPS server on loopback that counts requests) shows concurrent requests sharing one
//! download, a too-large file refused with nothing kept, the fallback to the legacy endpoints
//! for an old server, and `allow_remote=false` fetching nothing.

use std::{
    net::SocketAddr,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use myelin_federation::media::{MediaEndpoint, MediaRequest};
use myelin_store::DatabaseKind;
use myelin_testkit::{
    TestServer, TestUser,
    federation::{TestCa, start_federation},
    test_backends,
};
use ruma::{ServerName, http_headers::ContentDisposition};
use serde_json::{Value, json};

const DOWNLOAD: &str = "/_matrix/client/v1/media/download";
const THUMBNAIL: &str = "/_matrix/client/v1/media/thumbnail";
const PEER: &str = "peer.test";
/// A file name a header cannot carry as it is.
const FILE_NAME: &str = "Größe Bild ✓.png";

/// A raw answer.
struct Raw {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
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

    fn assert_ok(&self) {
        assert_eq!(self.status, 200, "{}", String::from_utf8_lossy(&self.body));
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

async fn get(server: &TestServer, path: &str, token: Option<&str>) -> Raw {
    let mut request = server.http.get(server.client_url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("request");
    Raw {
        status: response.status(),
        headers: response.headers().clone(),
        body: response.bytes().await.expect("body").to_vec(),
    }
}

async fn upload(server: &TestServer, user: &TestUser, bytes: &[u8], content_type: &str) -> String {
    let response = server
        .http
        .post(server.client_url(&format!(
            "/_matrix/media/v3/upload?filename={}",
            myelin_testkit::enc(FILE_NAME)
        )))
        .bearer_auth(&user.access_token)
        .header(header::CONTENT_TYPE, content_type)
        .body(bytes.to_vec())
        .send()
        .await
        .expect("upload");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let uri = body["content_uri"].as_str().unwrap();
    uri.rsplit('/').next().unwrap().to_owned()
}

fn png(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
    });
    let mut out = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

fn dimensions(bytes: &[u8]) -> (u32, u32) {
    let image = image::load_from_memory(bytes).expect("an image");
    (image.width(), image.height())
}

fn files_under(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| {
            let path = entry.path();
            if path.is_dir() { files_under(&path) } else { 1 }
        })
        .sum()
}

async fn metric(server: &TestServer, name: &str) -> Option<i64> {
    let text = server
        .http
        .get(server.client_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = format!("myelin_{name} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map(|value| value.trim().parse().unwrap())
}

/// Runs `myelin delete-media ARGS` on `server`'s database and data directory.
async fn delete_media_command(server: &TestServer, args: &[&str]) -> String {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_myelin"))
        .current_dir(server.data_dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("MYELIN_DATA_DIR", server.data_dir.path())
        .env("MYELIN_DATABASE__URL", &server.db.url)
        .env("MYELIN_SERVER_NAME", server.name())
        .arg("delete-media")
        .args(args)
        .output()
        .await
        .expect("run myelin delete-media");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[tokio::test]
async fn media_of_another_server_is_fetched_once_and_served_from_the_cache() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let mut servers = start_federation(kind, &ca, &["hs1.test", "hs2.test"], |_, config| {
            config.media.thumbnails_at_upload = false;
        })
        .await;
        let (hs1, hs2) = (&servers[0], &servers[1]);
        let alice = hs1.register("alice").await;
        let bob = hs2.register("bob").await;
        let image = png(64, 48);
        let media_id = upload(hs2, &bob, &image, "image/png").await;
        let token = Some(alice.access_token.as_str());

        // Alice downloads bob's image through her server.
        let path = format!("{DOWNLOAD}/hs2.test/{media_id}");
        let first = get(hs1, &path, token).await;
        first.assert_ok();
        assert_eq!(first.body, image, "{kind:?}");
        assert_eq!(first.header("content-type"), "image/png");
        let disposition: ContentDisposition = first.header("content-disposition").parse().unwrap();
        assert_eq!(disposition.filename.as_deref(), Some(FILE_NAME), "{kind:?}");
        let thumb_path = format!("{THUMBNAIL}/hs2.test/{media_id}?width=32&height=32&method=crop");
        let thumb = get(hs1, &thumb_path, token).await;
        thumb.assert_ok();
        assert_eq!(dimensions(&thumb.body), (32, 32), "{kind:?}");
        let scaled_path =
            format!("{THUMBNAIL}/hs2.test/{media_id}?width=16&height=16&method=scale");
        let scaled = get(hs1, &scaled_path, token).await;
        scaled.assert_ok();
        assert_eq!(dimensions(&scaled.body), (16, 12));

        // An unknown id is not found; a pending upload is not yet uploaded, over both hops.
        get(hs1, &format!("{DOWNLOAD}/hs2.test/NoSuchMedia"), token)
            .await
            .assert_error(404, "M_NOT_FOUND");
        get(
            hs1,
            &format!("{THUMBNAIL}/hs2.test/NoSuchMedia?width=8&height=8"),
            token,
        )
        .await
        .assert_error(404, "M_NOT_FOUND");
        let (status, pending) = hs2
            .post("/_matrix/media/v1/create", &bob.access_token, json!({}))
            .await;
        assert_eq!(status, 200);
        let pending_id = pending["content_uri"]
            .as_str()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap()
            .to_owned();
        get(
            hs1,
            &format!("{DOWNLOAD}/hs2.test/{pending_id}?timeout_ms=200"),
            token,
        )
        .await
        .assert_error(504, "M_NOT_YET_UPLOADED");

        // The federation endpoints: X-Matrix required; each server serves only its own media
        // (hs1 holds a copy of bob's image, and still says it does not have it).
        let unsigned = ca
            .client(&[("hs2.test", hs2.addrs().1)])
            .get(hs2.federation_url(&format!("/_matrix/federation/v1/media/download/{media_id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(unsigned.status(), 401, "{kind:?}");
        let hs2_outbound = &hs2.services().federation;
        let hs1_name = <&ServerName>::try_from("hs1.test").unwrap();
        let refused = hs2_outbound
            .get_media(
                hs1_name,
                &MediaRequest::Download {
                    media_id: &media_id,
                    timeout_ms: 1000,
                },
                MediaEndpoint::Federation,
            )
            .await
            .expect_err("hs1 does not serve hs2's media");
        assert!(refused.to_string().contains("M_NOT_FOUND"), "{refused}");
        let mut own = hs1
            .services()
            .federation
            .get_media(
                <&ServerName>::try_from("hs2.test").unwrap(),
                &MediaRequest::Download {
                    media_id: &media_id,
                    timeout_ms: 1000,
                },
                MediaEndpoint::Federation,
            )
            .await
            .expect("hs2 serves its own media as multipart");
        assert_eq!(own.content_type.as_deref(), Some("image/png"));
        let mut bytes = Vec::new();
        while let Some(chunk) = own.chunk().await.unwrap() {
            bytes.extend_from_slice(&chunk);
        }
        assert_eq!(bytes, image);

        assert_eq!(metric(hs1, "remote_media_ids").await, Some(1), "{kind:?}");
        assert_eq!(
            metric(hs1, "remote_media_bytes").await,
            Some(image.len() as i64)
        );
        assert_eq!(metric(hs1, "remote_media_thumbnails").await, Some(2));
        assert_eq!(metric(hs2, "remote_media_ids").await, Some(0));

        // hs2 goes away: hs1 answers from its cache.
        servers.pop().unwrap().stop().await;
        let hs1 = &servers[0];
        let again = get(hs1, &path, token).await;
        again.assert_ok();
        assert_eq!(again.body, image, "{kind:?}: from the cache");
        let thumb_again = get(hs1, &thumb_path, token).await;
        thumb_again.assert_ok();
        assert_eq!(thumb_again.body, thumb.body);

        // The operator deletes the cached copy: now it has to be fetched, and cannot be.
        let out = delete_media_command(hs1, &["--id", &format!("mxc://hs2.test/{media_id}")]).await;
        assert_eq!(out, "deleted 1 media", "{kind:?}");
        assert_eq!(metric(hs1, "remote_media_ids").await, Some(0));
        assert_eq!(metric(hs1, "remote_media_thumbnails").await, Some(0));
        assert_eq!(files_under(&hs1.data_dir.path().join("media/content")), 0);
        let gone = get(hs1, &path, token).await;
        assert_eq!(
            gone.status,
            502,
            "{kind:?}: {}",
            String::from_utf8_lossy(&gone.body)
        );
        for server in servers {
            server.stop().await;
        }
    }
}

/// What the simulated peer saw: each request's path and query, and whether it was signed.
#[derive(Debug, Default)]
struct PeerLog {
    /// Answer the federation media endpoints with 404 `M_UNRECOGNIZED` (an old server).
    old: AtomicBool,
    /// The peer's port, for the `Location` it answers `moved` with.
    port: std::sync::atomic::AtomicU16,
    seen: Mutex<Vec<(String, bool)>>,
}

/// The peer's media: `img` (a PNG), `big` (5000 bytes), anything else unknown.
fn peer_media(media_id: &str) -> Option<(Vec<u8>, &'static str)> {
    match media_id {
        "img" | "old" | "later" | "moved" => Some((png(40, 20), "image/png")),
        "big" => Some((vec![b'x'; 5000], "application/octet-stream")),
        _ => None,
    }
}

async fn peer_answer(State(log): State<Arc<PeerLog>>, uri: Uri, headers: HeaderMap) -> Response {
    let signed = headers.contains_key(header::AUTHORIZATION);
    let path_and_query = uri.path_and_query().map_or("", |p| p.as_str()).to_owned();
    log.seen.lock().unwrap().push((path_and_query, signed));
    // Slow enough that concurrent requests overlap.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let path = uri.path();
    if path == "/cdn/moved" {
        let (bytes, content_type) = peer_media("moved").unwrap();
        return ([(header::CONTENT_TYPE, content_type)], bytes).into_response();
    }
    let federation = path.starts_with("/_matrix/federation/v1/media/");
    let legacy = path.starts_with(&format!("/_matrix/media/v3/download/{PEER}/"))
        || path.starts_with(&format!("/_matrix/media/v3/thumbnail/{PEER}/"));
    let not_found = || {
        (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"errcode": "M_NOT_FOUND", "error": "no such media"})),
        )
            .into_response()
    };
    if federation && log.old.load(Ordering::SeqCst) || !federation && !legacy {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"})),
        )
            .into_response();
    }
    let media_id = path.rsplit('/').next().unwrap_or_default();
    let Some((bytes, content_type)) = peer_media(media_id) else {
        return not_found();
    };
    let disposition = "inline; filename*=utf-8''caf%C3%A9.png";
    if legacy {
        return (
            [
                (header::CONTENT_TYPE, content_type),
                (header::CONTENT_DISPOSITION, disposition),
            ],
            bytes,
        )
            .into_response();
    }
    if federation && media_id == "moved" {
        // The content elsewhere: the spec's `Location` part.
        let port = log.port.load(Ordering::SeqCst);
        let body = format!(
            "--xyz\r\nContent-Type: application/json\r\n\r\n{{}}\r\n--xyz\r\nLocation: https://{PEER}:{port}/cdn/moved\r\n\r\n\r\n--xyz--\r\n"
        );
        return (
            [(header::CONTENT_TYPE, "multipart/mixed; boundary=xyz")],
            body,
        )
            .into_response();
    }
    let mut body = format!(
        "--xyz\r\nContent-Type: application/json\r\n\r\n{{}}\r\n--xyz\r\nContent-Type: {content_type}\r\nContent-Disposition: {disposition}\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(&bytes);
    body.extend_from_slice(b"\r\n--xyz--\r\n");
    (
        [(header::CONTENT_TYPE, "multipart/mixed; boundary=xyz")],
        body,
    )
        .into_response()
}

struct Peer {
    addr: SocketAddr,
    log: Arc<PeerLog>,
    task: tokio::task::JoinHandle<()>,
}

impl Peer {
    async fn start(ca: &TestCa) -> Peer {
        let (cert, key) = ca.issue(PEER);
        let tls = myelin::tls::server_config(&cert, &key).unwrap();
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let listener = myelin::tls::TlsListener::new(tcp, tls).unwrap();
        let log = Arc::new(PeerLog::default());
        log.port.store(addr.port(), Ordering::SeqCst);
        let app = Router::new().fallback(peer_answer).with_state(log.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Peer { addr, log, task }
    }

    fn seen(&self) -> Vec<(String, bool)> {
        self.log.seen.lock().unwrap().clone()
    }

    fn requests_for(&self, media_id: &str) -> Vec<(String, bool)> {
        let needle = format!("/{media_id}?");
        self.seen()
            .into_iter()
            .filter(|(path, _)| path.contains(&needle))
            .collect()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start_with_peer(kind: DatabaseKind, ca: &TestCa, peer: &Peer) -> TestServer {
    TestServer::start_with(kind, |config| {
        config.server_name = "hs.test".try_into().unwrap();
        config.federation.trusted_ca_files = vec![ca.cert_path()];
        config.federation.allow_private_addresses = true;
        config
            .federation
            .destination_overrides
            .insert(PEER.to_owned(), peer.addr.to_string());
        config.media.max_remote_size = Some(4096);
        config.media.legacy_endpoints = true;
    })
    .await
}

#[tokio::test]
async fn concurrent_requests_share_one_download_and_large_media_is_refused() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let peer = Peer::start(&ca).await;
        let server = start_with_peer(kind, &ca, &peer).await;
        let alice = server.register("alice").await;
        let token = alice.access_token.clone();

        let path = format!("{DOWNLOAD}/{PEER}/img");
        let answers =
            futures::future::join_all((0..8).map(|_| get(&server, &path, Some(&token)))).await;
        let (expected, _) = peer_media("img").unwrap();
        for answer in &answers {
            answer.assert_ok();
            assert_eq!(answer.body, expected);
        }
        let fetched = peer.requests_for("img");
        assert_eq!(fetched.len(), 1, "{kind:?}: {fetched:?}");
        assert!(fetched[0].1, "the federation request is signed");
        assert!(
            fetched[0]
                .0
                .starts_with("/_matrix/federation/v1/media/download/img?")
        );
        let disposition: ContentDisposition =
            answers[0].header("content-disposition").parse().unwrap();
        assert_eq!(disposition.filename.as_deref(), Some("café.png"));

        // Past media.max_remote_size: 502 M_TOO_LARGE, and nothing kept on disk or in the store.
        let content_before = files_under(&server.data_dir.path().join("media/content"));
        get(&server, &format!("{DOWNLOAD}/{PEER}/big"), Some(&token))
            .await
            .assert_error(502, "M_TOO_LARGE");
        assert_eq!(
            files_under(&server.data_dir.path().join("media/content")),
            content_before
        );
        // Nothing left being written either (each process's `tmp/<name>/`, beside its lock).
        let tmp = server.data_dir.path().join("media/tmp");
        let writing: usize = std::fs::read_dir(&tmp)
            .unwrap()
            .flatten()
            .filter(|entry| entry.path().is_dir())
            .map(|entry| files_under(&entry.path()))
            .sum();
        assert_eq!(writing, 0, "{kind:?}");
        assert_eq!(
            server.store().remote_media(PEER, "big").await.unwrap(),
            None
        );
        assert_eq!(metric(&server, "remote_media_ids").await, Some(1));
        // Refused again (nothing was cached), by asking again.
        get(&server, &format!("{DOWNLOAD}/{PEER}/big"), Some(&token))
            .await
            .assert_error(502, "M_TOO_LARGE");
        assert_eq!(peer.requests_for("big").len(), 2);

        // The deprecated endpoints with allow_remote=false fetch nothing.
        get(
            &server,
            &format!("/_matrix/media/v3/download/{PEER}/later?allow_remote=false"),
            None,
        )
        .await
        .assert_error(404, "M_NOT_FOUND");
        get(
            &server,
            &format!(
                "/_matrix/media/v3/thumbnail/{PEER}/later?width=8&height=8&allow_remote=false"
            ),
            None,
        )
        .await
        .assert_error(404, "M_NOT_FOUND");
        assert!(peer.requests_for("later").is_empty(), "{kind:?}");
        // Without it they do, like the authenticated endpoints.
        get(
            &server,
            &format!("/_matrix/media/v3/download/{PEER}/later"),
            None,
        )
        .await
        .assert_ok();
        assert_eq!(peer.requests_for("later").len(), 1);

        // Content the peer answers with a `Location` is fetched from there.
        let moved = get(&server, &format!("{DOWNLOAD}/{PEER}/moved"), Some(&token)).await;
        moved.assert_ok();
        assert_eq!(moved.body, peer_media("moved").unwrap().0, "{kind:?}");
        assert_eq!(moved.header("content-type"), "image/png");
        assert!(peer.seen().iter().any(|(path, _)| path == "/cdn/moved"));

        // The operator empties the cache by age: everything fetched until now.
        assert_eq!(metric(&server, "remote_media_ids").await, Some(3));
        let out = delete_media_command(&server, &["--older-than-days", "1"]).await;
        assert_eq!(out, "deleted 0 media");
        let out = delete_media_command(&server, &["--older-than-days", "0"]).await;
        assert_eq!(out, "deleted 3 media", "{kind:?}: img, later, moved");
        assert_eq!(metric(&server, "remote_media_ids").await, Some(0));
        assert_eq!(
            files_under(&server.data_dir.path().join("media/content")),
            0
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn an_old_server_is_asked_through_the_legacy_endpoints() {
    for kind in test_backends() {
        let ca = TestCa::new();
        let peer = Peer::start(&ca).await;
        peer.log.old.store(true, Ordering::SeqCst);
        let server = start_with_peer(kind, &ca, &peer).await;
        let alice = server.register("alice").await;
        let token = Some(alice.access_token.as_str());

        let answer = get(&server, &format!("{DOWNLOAD}/{PEER}/old"), token).await;
        answer.assert_ok();
        assert_eq!(answer.body, peer_media("old").unwrap().0, "{kind:?}");
        assert_eq!(answer.header("content-type"), "image/png");
        let disposition: ContentDisposition = answer.header("content-disposition").parse().unwrap();
        assert_eq!(disposition.filename.as_deref(), Some("café.png"));
        let thumb = get(
            &server,
            &format!("{THUMBNAIL}/{PEER}/old?width=10&height=10&method=crop"),
            token,
        )
        .await;
        thumb.assert_ok();

        let seen = peer.requests_for("old");
        let paths: Vec<&str> = seen.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/_matrix/federation/v1/media/download/old?timeout_ms=20000",
                "/_matrix/media/v3/download/peer.test/old?timeout_ms=20000&allow_remote=false",
                "/_matrix/federation/v1/media/thumbnail/old?width=10&height=10&method=crop&timeout_ms=20000",
                "/_matrix/media/v3/thumbnail/peer.test/old?width=10&height=10&method=crop&timeout_ms=20000&allow_remote=false",
            ],
            "{kind:?}"
        );
        // The unauthenticated endpoints are asked without X-Matrix.
        assert_eq!(
            seen.iter().map(|(_, signed)| *signed).collect::<Vec<_>>(),
            [true, false, true, false]
        );
        // An unknown id on the old server is still not found.
        get(&server, &format!("{DOWNLOAD}/{PEER}/nothing"), token)
            .await
            .assert_error(404, "M_NOT_FOUND");
        server.stop().await;
    }
}
