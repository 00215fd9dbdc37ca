//! The `myelin` binary as a child process on loopback, for tests that kill it or restart it:
//! no config file, only the environment given (registration open, rate limits off), SQLite in
//! its working directory unless the environment names a database.

use std::{
    net::{SocketAddr, TcpListener},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A running `myelin` process; killed (SIGKILL) when dropped.
pub struct ServerProcess {
    child: Child,
    /// The client API's base URL, `http://<addr>/_matrix/client/v3`.
    pub base: String,
}

fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    listener.local_addr().expect("its address")
}

impl ServerProcess {
    /// Starts `bin` in `dir` with PATH, free loopback listeners, open registration, rate limits
    /// off, and `env` on top; returns once it answers `/versions` (panics after 30 s).
    pub async fn start(bin: &str, dir: &Path, env: &[(&str, &str)]) -> ServerProcess {
        let client = free_addr();
        let mut command = Command::new(bin);
        command
            .current_dir(dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("MYELIN_LISTEN__CLIENT", client.to_string())
            .env("MYELIN_LISTEN__FEDERATION", free_addr().to_string())
            .env("MYELIN_REGISTRATION__ENABLED", "true")
            .env("MYELIN_RATE_LIMITS__ENABLED", "false")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (key, value) in env {
            command.env(key, value);
        }
        let server = ServerProcess {
            child: command.spawn().expect("the myelin binary starts"),
            base: format!("http://{client}/_matrix/client/v3"),
        };
        wait_until_answering(client).await;
        server
    }

    /// SIGKILL: no shutdown, no flush, nothing in flight finished, no lease handed back.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("the killed process is reaped");
    }
}

/// Waits until a server's client listener at `client` answers `/versions` (panics after 30 s).
pub async fn wait_until_answering(client: SocketAddr) {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(response) = http
            .get(format!("http://{client}/_matrix/client/versions"))
            .send()
            .await
            && response.status() == 200
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "myelin did not answer /versions within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
