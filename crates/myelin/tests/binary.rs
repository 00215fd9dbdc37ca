//! The `myelin` binary as an operator runs it: no config file and no database server; the same
//! on PostgreSQL; broken configuration exits 2 naming the key and writes nothing; SIGTERM stops
//! it cleanly.

use std::{
    net::{SocketAddr, TcpListener},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use myelin_store::{DatabaseKind, test_support::TestDatabase};
use myelin_testkit::test_backends;

const BIN: &str = env!("CARGO_BIN_EXE_myelin");

fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// `myelin` in `dir` with only the environment given (plus PATH): no config file.
fn myelin(dir: &Path, env: &[(&str, String)]) -> Command {
    let mut command = Command::new(BIN);
    command
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (key, value) in env {
        command.env(key, value);
    }
    command
}

struct Running {
    child: Child,
    client: SocketAddr,
    federation: SocketAddr,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start(dir: &Path, extra_env: &[(&str, String)]) -> Running {
    let client = free_addr();
    let federation = free_addr();
    let mut env = vec![
        ("MYELIN_LISTEN__CLIENT", client.to_string()),
        ("MYELIN_LISTEN__FEDERATION", federation.to_string()),
    ];
    env.extend(extra_env.iter().cloned());
    let child = myelin(dir, &env)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let running = Running {
        child,
        client,
        federation,
    };
    myelin_testkit::install_crypto_provider();
    myelin_testkit::process::wait_until_answering(client).await;
    running
}

/// Sends SIGTERM and waits for the exit without blocking the test's runtime, which must stay free
/// to close its own connections when the server asks it to.
async fn terminate(mut running: Running) -> std::process::ExitStatus {
    let pid = running.child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = running.child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "myelin did not stop within 20 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn published_key(federation: SocketAddr) -> serde_json::Value {
    myelin_testkit::install_crypto_provider();
    // The certificate is self-signed; this test is about the key object, the in-process tests
    // verify the certificate and host name.
    let client = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let body: serde_json::Value = client
        .get(format!("https://{federation}/_matrix/key/v2/server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["verify_keys"].clone()
}

#[tokio::test]
async fn runs_with_no_config_and_no_database_server_then_restarts_with_the_same_key() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path(), &[]).await;
    let first = published_key(running.federation).await;
    assert!(
        first.as_object().is_some_and(|keys| keys.len() == 1),
        "{first}"
    );
    assert!(terminate(running).await.success(), "SIGTERM exits 0");
    assert!(
        dir.path().join("data/myelin.db").exists(),
        "SQLite database in ./data"
    );
    assert!(dir.path().join("data/sealing.key").exists());

    let running = start(dir.path(), &[]).await;
    assert_eq!(
        published_key(running.federation).await,
        first,
        "same key after restart"
    );
    assert!(terminate(running).await.success());
}

#[tokio::test]
async fn runs_on_postgres_from_the_environment() {
    if !test_backends().contains(&DatabaseKind::Postgres) {
        return;
    }
    let db = TestDatabase::create(DatabaseKind::Postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let env = [("MYELIN_DATABASE__URL", db.url.clone())];
    let running = start(dir.path(), &env).await;
    let first = published_key(running.federation).await;
    assert!(terminate(running).await.success());
    assert!(
        !dir.path().join("data/myelin.db").exists(),
        "no SQLite file when on PostgreSQL"
    );

    let running = start(dir.path(), &env).await;
    assert_eq!(published_key(running.federation).await, first);
    assert!(terminate(running).await.success());
}

fn assert_config_error(toml: &str, key: &str) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("broken.toml"), toml).unwrap();
    let output = myelin(dir.path(), &[])
        .args(["--config", "broken.toml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{toml}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains(&format!("key `{key}`")), "{stderr}");
    let entries: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        entries,
        vec![std::ffi::OsString::from("broken.toml")],
        "created nothing"
    );
}

#[test]
fn broken_config_exits_2_naming_the_key_and_creates_nothing() {
    assert_config_error("[database]\nurll = \"x\"\n", "database.urll");
    assert_config_error("[listen]\nclient = 8008\n", "listen.client");
    assert_config_error(
        "[database]\nmax_connections = \"many\"\n",
        "database.max_connections",
    );
    assert_config_error("server_name = \"bad name\"\n", "server_name");
}

#[test]
fn unreadable_config_and_bad_environment_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let output = myelin(dir.path(), &[])
        .args(["--config", "missing.toml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("missing.toml"));

    let output = myelin(
        dir.path(),
        &[("MYELIN_LISTEN__CLIENT", "nonsense".to_owned())],
    )
    .arg("check-config")
    .output()
    .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("key `listen.client`"));
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "created nothing"
    );
}

#[test]
fn generate_config_prints_a_config_that_checks() {
    let dir = tempfile::tempdir().unwrap();
    let output = myelin(dir.path(), &[])
        .arg("generate-config")
        .output()
        .unwrap();
    assert!(output.status.success());
    std::fs::write(dir.path().join("generated.toml"), &output.stdout).unwrap();
    let check = myelin(dir.path(), &[])
        .args(["check-config", "--config", "generated.toml"])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

#[tokio::test]
async fn register_user_creates_an_account_that_can_log_in() {
    let dir = tempfile::tempdir().unwrap();
    let cheap = [
        ("MYELIN_PASSWORDS__MEMORY_KIB", "8".to_owned()),
        ("MYELIN_PASSWORDS__ITERATIONS", "1".to_owned()),
    ];
    let output = myelin(dir.path(), &cheap)
        .args([
            "register-user",
            "--username",
            "opal",
            "--password",
            "s3cret",
            "--admin",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("@opal:localhost"));

    let again = myelin(dir.path(), &cheap)
        .args(["register-user", "--username", "opal", "--password", "x"])
        .output()
        .unwrap();
    assert!(!again.status.success(), "a taken name fails");

    let running = start(dir.path(), &cheap).await;
    let login: serde_json::Value = reqwest::Client::new()
        .post(format!("http://{}/_matrix/client/v3/login", running.client))
        .json(&serde_json::json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "opal"}, "password": "s3cret"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(login["user_id"], "@opal:localhost", "{login}");
    assert!(terminate(running).await.success());
}

/// Registers `alice`, creates a room and sends a message; returns (token, room, event id).
async fn send_one(client: SocketAddr) -> (String, String, String) {
    let http = reqwest::Client::new();
    let base = format!("http://{client}/_matrix/client/v3");
    let reg: serde_json::Value = http
        .post(format!("{base}/register"))
        .json(&serde_json::json!({"username": "alice", "password": "pw", "auth": {"type": "m.login.dummy"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = reg["access_token"].as_str().unwrap().to_owned();
    let room: serde_json::Value = http
        .post(format!("{base}/createRoom"))
        .bearer_auth(&token)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let room_id = room["room_id"].as_str().unwrap().to_owned();
    let response = http
        .put(format!(
            "{base}/rooms/{}/send/m.room.message/t1",
            room_id.replace('!', "%21").replace(':', "%3A")
        ))
        .bearer_auth(&token)
        .json(&serde_json::json!({"msgtype": "m.text", "body": "durable"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let sent: serde_json::Value = response.json().await.unwrap();
    (
        token,
        room_id,
        sent["event_id"].as_str().unwrap().to_owned(),
    )
}

async fn sigkill_then_find(extra_env: &[(&str, String)]) {
    let dir = tempfile::tempdir().unwrap();
    let mut env = vec![
        ("MYELIN_REGISTRATION__ENABLED", "true".to_owned()),
        ("MYELIN_PASSWORDS__MEMORY_KIB", "8".to_owned()),
        ("MYELIN_PASSWORDS__ITERATIONS", "1".to_owned()),
    ];
    env.extend(extra_env.iter().cloned());
    let mut running = start(dir.path(), &env).await;
    let (token, room_id, event_id) = send_one(running.client).await;
    // No shutdown at all: the process dies the moment after the 200.
    running.child.kill().unwrap();
    running.child.wait().unwrap();
    drop(running);

    let running = start(dir.path(), &env).await;
    let response = reqwest::Client::new()
        .get(format!(
            "http://{}/_matrix/client/v3/rooms/{}/event/{}",
            running.client,
            room_id.replace('!', "%21").replace(':', "%3A"),
            event_id.replace('$', "%24")
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        200,
        "the acknowledged event survived SIGKILL"
    );
    let event: serde_json::Value = response.json().await.unwrap();
    assert_eq!(event["content"]["body"], "durable");
    assert!(terminate(running).await.success());
}

#[tokio::test]
async fn an_acknowledged_send_survives_sigkill_on_sqlite() {
    sigkill_then_find(&[]).await;
}

#[tokio::test]
async fn an_acknowledged_send_survives_sigkill_on_postgres() {
    if !test_backends().contains(&DatabaseKind::Postgres) {
        return;
    }
    let db = TestDatabase::create(DatabaseKind::Postgres).await;
    sigkill_then_find(&[("MYELIN_DATABASE__URL", db.url.clone())]).await;
}
