//! Dev-only: start in-process Myelin servers with temporary databases and data directories, on
//! loopback ports chosen by the OS, with HTTP clients already pointed at them.
//!
//! A [`TestServer`] is one server on one backend; [`federation::start_federation`] starts
//! several that federate over real TLS with a private CA and `destination_overrides`.

use std::{net::SocketAddr, path::Path};

use myelin::server::RunningServer;
use myelin_service::Config;
use myelin_store::{DatabaseKind, test_support::TestDatabase};

pub mod federation;
pub mod peer_graph;
pub mod process;
pub mod projection;
pub mod rogue;
pub mod rooms;

pub use myelin_store::test_support::test_backends;

/// The shared secret test servers accept for `/_synapse/admin/v1/register`.
pub const SHARED_SECRET: &str = "testkit-shared-secret";

/// Installs ring as rustls' process-wide provider (reqwest is built without one). Idempotent.
pub fn install_crypto_provider() {
    myelin::tls::install_default_provider();
}

/// One running server with its own database and data directory.
#[derive(Debug)]
pub struct TestServer {
    pub server: Option<RunningServer>,
    pub config: Config,
    pub db: TestDatabase,
    pub data_dir: tempfile::TempDir,
    /// A plain HTTP client for the client listener.
    pub http: reqwest::Client,
}

impl TestServer {
    /// A config for a test server on `db`: loopback, OS-chosen ports, quiet shutdown.
    pub fn config(data_dir: &Path, db: &TestDatabase) -> Config {
        let mut config = Config {
            data_dir: data_dir.to_path_buf(),
            ..Config::default()
        };
        config.database.url = Some(db.url.clone());
        config.database.max_connections = 4;
        config.listen.client = SocketAddr::from(([127, 0, 0, 1], 0));
        config.listen.federation = SocketAddr::from(([127, 0, 0, 1], 0));
        config.http.shutdown_grace_period_secs = 5;
        config.registration.enabled = true;
        // Account-key rooms are on in tests (off by default for operators).
        config.experimental.msc4243 = true;
        // Tests send in bursts; the rate-limit tests turn limits back on.
        config.rate_limits.enabled = false;
        config.registration.shared_secret = Some(SHARED_SECRET.to_owned());
        // Cheap hashing: tests register many users.
        config.passwords.memory_kib = 8;
        config.passwords.iterations = 1;
        config.passwords.parallelism = 1;
        config
    }

    /// Starts a server on a fresh database of `kind`, after `customise` adjusts its config.
    pub async fn start_with(kind: DatabaseKind, customise: impl FnOnce(&mut Config)) -> Self {
        install_crypto_provider();
        let db = TestDatabase::create(kind).await;
        let data_dir = tempfile::tempdir().expect("temp data dir");
        let mut config = Self::config(data_dir.path(), &db);
        customise(&mut config);
        let server = myelin::server::start(config.clone())
            .await
            .expect("server starts");
        TestServer {
            server: Some(server),
            config,
            db,
            data_dir,
            http: reqwest::Client::new(),
        }
    }

    pub async fn start(kind: DatabaseKind) -> Self {
        Self::start_with(kind, |_| {}).await
    }

    fn running(&self) -> &RunningServer {
        self.server.as_ref().expect("server is running")
    }

    /// The running server's store, for tests that write what no API can bring yet: events as
    /// federation will (soft-failed, rejected, outliers, backfilled history, a fork's resolved
    /// state), written through the store's own persistence path.
    pub fn store(&self) -> &myelin_store::Store {
        &self.running().services.store
    }

    /// `http://<metrics listener><path>`, when the server has one (`listen.metrics`).
    pub fn metrics_url(&self, path: &str) -> Option<String> {
        self.running()
            .metrics_addr
            .map(|addr| format!("http://{addr}{path}"))
    }

    /// `http://<client listener><path>`.
    pub fn client_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running().client_addr)
    }

    /// `https://<server name>:<federation port><path>`; use with [`TestServer::federation_client`].
    pub fn federation_url(&self, path: &str) -> String {
        format!(
            "https://{}:{}{path}",
            self.config.server_name.host(),
            self.running().federation_addr.port()
        )
    }

    /// An HTTPS client that trusts exactly this server's certificate and resolves its server
    /// name to the federation listener, so certificate and host name are both verified.
    pub fn federation_client(&self) -> reqwest::Client {
        let cert_path = self.data_dir.path().join(myelin::tls::SELF_SIGNED_CERT);
        let pem = std::fs::read(&cert_path).expect("self-signed certificate exists");
        let cert = reqwest::Certificate::from_pem(&pem).expect("certificate parses");
        reqwest::Client::builder()
            .tls_certs_only([cert])
            .resolve(
                self.config.server_name.host(),
                self.running().federation_addr,
            )
            .build()
            .expect("federation client")
    }

    /// This server's name.
    pub fn name(&self) -> &str {
        self.config.server_name.as_str()
    }

    /// The running server's services: to drive the server from inside (the federation tests),
    /// or to test service logic that has no route yet.
    pub fn services(&self) -> &std::sync::Arc<myelin_service::Services> {
        &self.running().services
    }

    /// Stops the server gracefully and starts it again on the same database and data directory.
    /// Ports change (the OS picks them again).
    pub async fn restart(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.expect("clean shutdown");
        }
        self.server = Some(
            myelin::server::start(self.config.clone())
                .await
                .expect("restart"),
        );
    }

    /// Stops the server gracefully.
    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.expect("clean shutdown");
        }
    }

    /// The running server's listener addresses.
    pub fn addrs(&self) -> (SocketAddr, SocketAddr) {
        (self.running().client_addr, self.running().federation_addr)
    }

    /// Asks the running server to stop without waiting for it.
    pub fn signal_stop(&self) {
        let _ = self.running().stop_handle().send(true);
    }

    /// Waits for a server asked to stop with [`TestServer::signal_stop`].
    pub async fn wait_stopped(&mut self) {
        if let Some(server) = self.server.take() {
            server.wait().await.expect("clean shutdown");
        }
    }
}

/// A registered, logged-in user of a [`TestServer`].
#[derive(Debug, Clone)]
pub struct TestUser {
    pub user_id: String,
    pub device_id: String,
    pub access_token: String,
    pub password: String,
}

impl TestServer {
    /// Registers `localpart` through `/register` with `m.login.dummy` and returns its session.
    pub async fn register(&self, localpart: &str) -> TestUser {
        let password = format!("{localpart}-password");
        let response = self
            .http
            .post(self.client_url("/_matrix/client/v3/register"))
            .json(&serde_json::json!({
                "username": localpart,
                "password": password,
                "auth": { "type": "m.login.dummy" },
            }))
            .send()
            .await
            .expect("register request");
        let status = response.status();
        let body: serde_json::Value = response.json().await.expect("register JSON");
        assert_eq!(status, 200, "registering {localpart}: {body}");
        TestUser {
            user_id: body["user_id"].as_str().expect("user_id").to_owned(),
            device_id: body["device_id"].as_str().expect("device_id").to_owned(),
            access_token: body["access_token"]
                .as_str()
                .expect("access_token")
                .to_owned(),
            password,
        }
    }
}

/// What a test request returned: the status and the JSON body (or the text as a JSON string).
pub type Reply = (reqwest::StatusCode, serde_json::Value);

impl TestServer {
    /// Calls the client API as `token` (or anonymously) and returns status and JSON body.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> Reply {
        let mut request = self.http.request(method, self.client_url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let text = response.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.call(reqwest::Method::GET, path, Some(token), None)
            .await
    }

    pub async fn post(&self, path: &str, token: &str, body: serde_json::Value) -> Reply {
        self.call(reqwest::Method::POST, path, Some(token), Some(body))
            .await
    }

    pub async fn put(&self, path: &str, token: &str, body: serde_json::Value) -> Reply {
        self.call(reqwest::Method::PUT, path, Some(token), Some(body))
            .await
    }
}

/// Percent-encodes a path segment or query value: everything but the unreserved characters
/// (user ids hold `@` and `:`, room ids `!`, event ids `$`, aliases `#`).
pub fn enc(segment: &str) -> String {
    let mut out = String::new();
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

impl TestServer {
    /// `POST /createRoom` as `user`; asserts success and returns the room id.
    pub async fn create_room(&self, user: &TestUser, body: serde_json::Value) -> String {
        let (status, reply) = self
            .post("/_matrix/client/v3/createRoom", &user.access_token, body)
            .await;
        assert_eq!(status, 200, "createRoom: {reply}");
        reply["room_id"].as_str().expect("room_id").to_owned()
    }
}
