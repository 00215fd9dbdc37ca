//! A minimal Matrix client-server API client: only what the scenarios need, plain JSON over
//! reqwest, so it works against any homeserver.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha1::Sha1;

/// The MAC Synapse's `/_synapse/admin/v1/register` expects: HMAC-SHA1 keyed by the shared
/// secret over `nonce\0username\0password\0admin|notadmin`, lower-case hex.
pub fn registration_mac(
    secret: &str,
    nonce: &str,
    username: &str,
    password: &str,
    admin: bool,
) -> String {
    let mut mac =
        Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(nonce.as_bytes());
    mac.update(b"\0");
    mac.update(username.as_bytes());
    mac.update(b"\0");
    mac.update(password.as_bytes());
    mac.update(b"\0");
    mac.update(if admin {
        b"admin" as &[u8]
    } else {
        b"notadmin"
    });
    hex::encode(mac.finalize().into_bytes())
}

static ROOM_NONCE: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone)]
pub struct Server {
    pub http: reqwest::Client,
    pub base: String,
}

/// A logged-in user.
#[derive(Debug)]
pub struct User {
    pub user_id: String,
    pub token: String,
    txn: AtomicU64,
}

impl Server {
    pub fn new(base: &str) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(900))
            .pool_max_idle_per_host(256)
            .build()?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Value> {
        Ok(self.call_sized(method, path, token, body).await?.0)
    }

    /// [`Self::call`] that also returns the size of the response body in bytes, as sent.
    async fn call_sized(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<(Value, usize)> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{}", self.base, path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let body = self.finish(req, &method, path).await?;
        let value = serde_json::from_slice(&body.bytes)
            .with_context(|| format!("{method} {path}: JSON"))?;
        Ok((value, body.bytes.len()))
    }

    /// Sends `req`, reads the whole body, and fails unless the status is 200.
    async fn finish(
        &self,
        req: reqwest::RequestBuilder,
        method: &Method,
        path: &str,
    ) -> Result<Body> {
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = resp.status();
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = resp
            .bytes()
            .await
            .with_context(|| format!("{method} {path}: body"))?;
        if status != StatusCode::OK {
            bail!(
                "{method} {path}: {status}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(500)])
            );
        }
        Ok(Body {
            bytes,
            content_type,
        })
    }

    /// Waits until `/_matrix/client/versions` answers, for at most `limit`.
    pub async fn wait_ready(&self, limit: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match self
                .call(Method::GET, "/_matrix/client/versions", None, None)
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Registers `username` through the shared-secret admin API and returns the logged-in user.
    pub async fn register(&self, secret: &str, username: &str, password: &str) -> Result<User> {
        let path = "/_synapse/admin/v1/register";
        let nonce = self.call(Method::GET, path, None, None).await?;
        let nonce = nonce["nonce"].as_str().context("no nonce")?.to_owned();
        let mac = registration_mac(secret, &nonce, username, password, false);
        let body = json!({
            "nonce": nonce, "username": username, "password": password, "admin": false, "mac": mac,
        });
        let resp = self.call(Method::POST, path, None, Some(&body)).await?;
        Ok(User {
            user_id: resp["user_id"].as_str().context("no user_id")?.to_owned(),
            token: resp["access_token"]
                .as_str()
                .context("no access_token")?
                .to_owned(),
            txn: AtomicU64::new(0),
        })
    }

    pub async fn create_room(&self, user: &User, name: &str) -> Result<String> {
        self.create_room_version(user, name, None).await
    }

    /// A public room, of `version` when given (else the server's default).
    pub async fn create_room_version(
        &self,
        user: &User,
        name: &str,
        version: Option<&str>,
    ) -> Result<String> {
        // A distinct key in the create event: in room version 12 the room ID is the create
        // event's hash, so two identical creates in the same millisecond would collide.
        let nonce = ROOM_NONCE.fetch_add(1, Ordering::Relaxed);
        let mut body = json!({
            "preset": "public_chat",
            "name": name,
            "creation_content": { "org.myelin.bench.nonce": format!("{}-{nonce}", std::process::id()) },
        });
        if let Some(version) = version {
            body["room_version"] = json!(version);
        }
        let resp = self
            .call(
                Method::POST,
                "/_matrix/client/v3/createRoom",
                Some(&user.token),
                Some(&body),
            )
            .await?;
        Ok(resp["room_id"].as_str().context("no room_id")?.to_owned())
    }

    pub async fn join(&self, user: &User, room_id: &str) -> Result<()> {
        let path = format!("/_matrix/client/v3/join/{}", enc(room_id));
        self.call(Method::POST, &path, Some(&user.token), Some(&json!({})))
            .await?;
        Ok(())
    }

    /// `POST /join/{room}?server_name=..` for each of `via`: a join through those servers when
    /// this one is not in the room.
    pub async fn join_via(&self, user: &User, room_id: &str, via: &[&str]) -> Result<()> {
        let mut path = format!("/_matrix/client/v3/join/{}", enc(room_id));
        for (i, server) in via.iter().enumerate() {
            path.push(if i == 0 { '?' } else { '&' });
            path.push_str(&format!("server_name={}", enc(server)));
        }
        self.call(Method::POST, &path, Some(&user.token), Some(&json!({})))
            .await?;
        Ok(())
    }

    /// How many members `GET /rooms/{room}/joined_members` lists.
    pub async fn joined_member_count(&self, user: &User, room_id: &str) -> Result<usize> {
        let path = format!("/_matrix/client/v3/rooms/{}/joined_members", enc(room_id));
        let resp = self
            .call(Method::GET, &path, Some(&user.token), None)
            .await?;
        Ok(resp["joined"].as_object().map_or(0, |j| j.len()))
    }

    /// `GET /metrics` (Prometheus text), served on the client listener unless the server has a
    /// separate metrics listener.
    pub async fn metrics(&self) -> Result<String> {
        let resp = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .context("GET /metrics")?;
        let status = resp.status();
        let text = resp.text().await.context("GET /metrics: body")?;
        if status != StatusCode::OK {
            bail!("GET /metrics: {status}");
        }
        Ok(text)
    }

    /// Sends an `m.room.message` and returns its event ID.
    pub async fn send(&self, user: &User, room_id: &str, text: &str) -> Result<String> {
        let txn = user.txn.fetch_add(1, Ordering::Relaxed);
        let path = format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.message/b{}-{txn}",
            enc(room_id),
            std::process::id()
        );
        let body = json!({ "msgtype": "m.text", "body": text });
        let resp = self
            .call(Method::PUT, &path, Some(&user.token), Some(&body))
            .await?;
        Ok(resp["event_id"].as_str().context("no event_id")?.to_owned())
    }

    /// `GET /sync`; `since` None is an initial sync.
    pub async fn sync(
        &self,
        user: &User,
        since: Option<&str>,
        timeout_ms: u64,
        filter: Option<&str>,
    ) -> Result<Value> {
        let mut path = format!("/_matrix/client/v3/sync?timeout={timeout_ms}");
        if let Some(since) = since {
            path.push_str(&format!("&since={}", enc(since)));
        }
        if let Some(filter) = filter {
            path.push_str(&format!("&filter={}", enc(filter)));
        }
        self.call(Method::GET, &path, Some(&user.token), None).await
    }

    /// Whether `GET /rooms/{room}/event/{id}` shows `user` the event (200) or not yet (404).
    pub async fn event_visible(&self, user: &User, room_id: &str, event_id: &str) -> Result<bool> {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/event/{}",
            enc(room_id),
            enc(event_id)
        );
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&user.token)
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        match resp.status() {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            status => bail!(
                "GET {path}: {status}: {}",
                resp.text().await.unwrap_or_default()
            ),
        }
    }

    /// `GET /rooms/{room}/messages?dir=b`, from the end or from `from`, `limit` events.
    pub async fn messages(
        &self,
        user: &User,
        room_id: &str,
        from: Option<&str>,
        limit: usize,
    ) -> Result<Value> {
        let mut path = format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit={limit}",
            enc(room_id)
        );
        if let Some(from) = from {
            path.push_str(&format!("&from={}", enc(from)));
        }
        self.call(Method::GET, &path, Some(&user.token), None).await
    }

    /// `POST /login` with the password: a new device of `user` (its access token and device).
    pub async fn login(&self, user_id: &str, password: &str, device_name: &str) -> Result<User> {
        let body = json!({
            "type": "m.login.password",
            "identifier": { "type": "m.id.user", "user": user_id },
            "password": password,
            "initial_device_display_name": device_name,
        });
        let resp = self
            .call(Method::POST, "/_matrix/client/v3/login", None, Some(&body))
            .await?;
        Ok(User {
            user_id: resp["user_id"].as_str().context("no user_id")?.to_owned(),
            token: resp["access_token"]
                .as_str()
                .context("no access_token")?
                .to_owned(),
            txn: AtomicU64::new(0),
        })
    }

    /// `GET /account/whoami`: the device ID of `user`'s access token.
    pub async fn device_id(&self, user: &User) -> Result<String> {
        let resp = self
            .call(
                Method::GET,
                "/_matrix/client/v3/account/whoami",
                Some(&user.token),
                None,
            )
            .await?;
        Ok(resp["device_id"]
            .as_str()
            .context("no device_id")?
            .to_owned())
    }

    /// `POST /keys/upload` with `body` (device keys and/or one-time keys); the one-time key
    /// counts it answers.
    pub async fn upload_keys(&self, user: &User, body: &Value) -> Result<Value> {
        self.call(
            Method::POST,
            "/_matrix/client/v3/keys/upload",
            Some(&user.token),
            Some(body),
        )
        .await
    }

    /// `POST /keys/claim` with `body`, and the size of the answer in bytes.
    pub async fn claim_keys(&self, user: &User, body: &Value) -> Result<(Value, usize)> {
        self.call_sized(
            Method::POST,
            "/_matrix/client/v3/keys/claim",
            Some(&user.token),
            Some(body),
        )
        .await
    }

    /// `POST /keys/query` with `body`, and the size of the answer in bytes.
    pub async fn query_keys(&self, user: &User, body: &Value) -> Result<(Value, usize)> {
        self.call_sized(
            Method::POST,
            "/_matrix/client/v3/keys/query",
            Some(&user.token),
            Some(body),
        )
        .await
    }

    /// `POST /_matrix/media/v3/upload` of `content` as `content_type`; the `mxc://` it names.
    pub async fn upload_media(
        &self,
        user: &User,
        content: bytes::Bytes,
        content_type: &str,
        filename: &str,
    ) -> Result<Mxc> {
        let path = format!("/_matrix/media/v3/upload?filename={}", enc(filename));
        let req = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&user.token)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(content);
        let body = self.finish(req, &Method::POST, &path).await?;
        let resp: Value =
            serde_json::from_slice(&body.bytes).with_context(|| format!("POST {path}: JSON"))?;
        let uri = resp["content_uri"].as_str().context("no content_uri")?;
        parse_mxc(uri).with_context(|| format!("content_uri {uri} is not mxc://server/id"))
    }

    /// The authenticated `GET /_matrix/client/v1/media/download/{server}/{id}`, read whole.
    pub async fn download_media(&self, user: &User, mxc: &Mxc) -> Result<Body> {
        let path = format!(
            "/_matrix/client/v1/media/download/{}/{}",
            mxc.server,
            enc(&mxc.media_id)
        );
        let req = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&user.token);
        self.finish(req, &Method::GET, &path).await
    }

    /// The authenticated `GET /_matrix/client/v1/media/thumbnail/{server}/{id}`, read whole.
    pub async fn thumbnail(
        &self,
        user: &User,
        mxc: &Mxc,
        width: u32,
        height: u32,
        method: &str,
    ) -> Result<Body> {
        let path = format!(
            "/_matrix/client/v1/media/thumbnail/{}/{}?width={width}&height={height}&method={method}",
            mxc.server,
            enc(&mxc.media_id)
        );
        let req = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&user.token);
        self.finish(req, &Method::GET, &path).await
    }
}

/// A response body read to the end, with its `Content-Type`.
#[derive(Debug)]
pub struct Body {
    pub bytes: bytes::Bytes,
    pub content_type: Option<String>,
}

/// A media id as `mxc://` names it: the server and the id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mxc {
    pub server: String,
    pub media_id: String,
}

/// Splits `mxc://server/id`; `None` for anything else.
pub fn parse_mxc(uri: &str) -> Option<Mxc> {
    let (server, media_id) = uri.strip_prefix("mxc://")?.split_once('/')?;
    if server.is_empty() || media_id.is_empty() || media_id.contains('/') {
        return None;
    }
    Some(Mxc {
        server: server.to_owned(),
        media_id: media_id.to_owned(),
    })
}

/// Percent-encodes everything but unreserved characters.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The value of the sample `name` (with its labels, as written) in Prometheus text; 0 when the
/// server has no such sample yet.
pub fn metric_value(text: &str, name: &str) -> f64 {
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Whether a sync response lists `room_id` under `rooms.join`.
pub fn sync_has_joined_room(sync: &Value, room_id: &str) -> bool {
    sync["rooms"]["join"].get(room_id).is_some()
}

/// Whether a sync response's timeline for `room_id` contains `event_id`.
pub fn sync_has_event(sync: &Value, room_id: &str, event_id: &str) -> bool {
    sync["rooms"]["join"][room_id]["timeline"]["events"]
        .as_array()
        .is_some_and(|events| events.iter().any(|e| e["event_id"] == event_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_mac_matches_synapse() {
        // Computed with Python's hmac.new(b"secret", b"abcdef\0alice\0hunter2\0notadmin", sha1).
        assert_eq!(
            registration_mac("secret", "abcdef", "alice", "hunter2", false),
            "0bd41f74cb12248a3b9641cb8f93198628290050"
        );
        assert_eq!(
            registration_mac("secret", "abcdef", "alice", "hunter2", true),
            "d6f1fc110e05e46e9015a23b98dc4dc0d8630b84"
        );
    }

    #[test]
    fn room_ids_are_percent_encoded() {
        assert_eq!(enc("!abc:localhost:8008"), "%21abc%3Alocalhost%3A8008");
        assert_eq!(enc("s12_3~x"), "s12_3~x");
    }

    #[test]
    fn finds_event_in_sync_timeline() {
        let sync =
            json!({"rooms": {"join": {"!r:x": {"timeline": {"events": [{"event_id": "$a"}]}}}}});
        assert!(sync_has_event(&sync, "!r:x", "$a"));
        assert!(!sync_has_event(&sync, "!r:x", "$b"));
        assert!(!sync_has_event(&sync, "!other:x", "$a"));
    }

    #[test]
    fn mxc_uris_split_into_server_and_id() {
        assert_eq!(
            parse_mxc("mxc://localhost:8008/AbC_1"),
            Some(Mxc {
                server: "localhost:8008".to_owned(),
                media_id: "AbC_1".to_owned()
            })
        );
        assert_eq!(parse_mxc("https://localhost/AbC"), None);
        assert_eq!(parse_mxc("mxc://localhost/"), None);
        assert_eq!(parse_mxc("mxc://localhost/a/b"), None);
        assert_eq!(parse_mxc("mxc:///abc"), None);
    }

    #[test]
    fn finds_joined_room_in_sync() {
        let sync = json!({"rooms": {"join": {"!r:x": {}}, "invite": {"!i:x": {}}}});
        assert!(sync_has_joined_room(&sync, "!r:x"));
        assert!(!sync_has_joined_room(&sync, "!i:x"));
        assert!(!sync_has_joined_room(&json!({}), "!r:x"));
    }
}
