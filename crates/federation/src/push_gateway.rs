//! The push gateway client: `POST /_matrix/push/v1/notify` (Push Gateway API) to a pusher's
//! URL, and the gateway's answer (the pushkeys it rejected). Which notifications to send, to
//! whom and how often to retry is the service layer's business; this module only speaks HTTP.
//!
//! The client is reqwest on rustls with the ring provider, verifying certificates against the
//! system roots. It follows no redirects: a gateway is a fixed URL the client gave us. Unless
//! the operator allows private gateways, it only connects to publicly routable addresses
//! ([`crate::public_addresses`]): the URL is a user's choice.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::public_addresses::{PublicOnlyResolver, is_public};
use serde_json::{Map, Value};

/// The path every gateway URL must have (the spec fixes it).
pub const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";

/// Why a notification was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum PushGatewayError {
    #[error("could not build the push gateway client: {0}")]
    Client(String),
    #[error("push gateway unreachable: {0}")]
    Transport(String),
    #[error("push gateway answered HTTP {0}")]
    Status(u16),
    #[error("push gateway answered with a body that is not a notify response: {0}")]
    Body(String),
    #[error("push gateway address {0} is not publicly routable (see push.allow_private_gateways)")]
    PrivateAddress(String),
}

impl PushGatewayError {
    /// Whether trying again later may succeed: transport errors, 5xx and 429 may pass; other
    /// 4xx answers and bodies we cannot read will not change.
    pub fn is_transient(&self) -> bool {
        match self {
            PushGatewayError::Transport(_) => true,
            PushGatewayError::Status(code) => *code >= 500 || *code == 429,
            PushGatewayError::Client(_)
            | PushGatewayError::Body(_)
            | PushGatewayError::PrivateAddress(_) => false,
        }
    }
}

/// The `notification` object of a notify request.
#[derive(Debug, Clone, Serialize)]
pub struct Notification {
    pub event_id: String,
    pub room_id: String,
    /// `None` (with `sender` and `content`) for pushers with `format: "event_id_only"`.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender_display_name: Option<String>,
    /// The event's content; `None` for pushers with `format: "event_id_only"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<Value>,
    pub counts: Counts,
    /// `"high"` or `"low"`.
    pub prio: &'static str,
    pub devices: Vec<Device>,
}

/// `notification.counts`. The spec asks that zero counts be left out.
#[derive(Debug, Clone, Serialize)]
pub struct Counts {
    #[serde(skip_serializing_if = "is_zero")]
    pub unread: u64,
}

fn is_zero(count: &u64) -> bool {
    *count == 0
}

/// One entry of `notification.devices`: the pusher being notified.
#[derive(Debug, Clone, Serialize)]
pub struct Device {
    pub app_id: String,
    pub pushkey: String,
    /// When the pushkey was set, in seconds.
    pub pushkey_ts: i64,
    /// The pusher's `data` without `url`.
    pub data: Map<String, Value>,
    pub tweaks: Map<String, Value>,
}

/// An error with its chain of causes, which reqwest's own message leaves out ("error sending
/// request" says nothing of the refused connection or the private address under it).
pub(crate) fn with_causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[derive(Serialize)]
struct NotifyRequest<'a> {
    notification: &'a Notification,
}

#[derive(Deserialize)]
struct NotifyResponse {
    #[serde(default)]
    rejected: Vec<String>,
}

/// An HTTP client for push gateways, cheap to clone.
#[derive(Debug, Clone)]
pub struct PushGatewayClient {
    http: reqwest::Client,
    allow_private: bool,
}

impl PushGatewayClient {
    /// A client whose requests give up after `timeout`, and reach private addresses only if
    /// `allow_private`.
    pub fn new(timeout: Duration, allow_private: bool) -> Result<Self, PushGatewayError> {
        // reqwest is built without a crypto provider; the process uses ring (installing it
        // again is a no-op).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            // No proxy from the environment (`HTTP_PROXY`, `ALL_PROXY`, ...): the address
            // checks below see only the proxy's address, and the proxy would then reach
            // whatever the user's URL names, private addresses included.
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("Myelin/", env!("CARGO_PKG_VERSION")));
        if !allow_private {
            builder = builder.dns_resolver(std::sync::Arc::new(PublicOnlyResolver));
        }
        let http = builder
            .build()
            .map_err(|e| PushGatewayError::Client(e.to_string()))?;
        Ok(PushGatewayClient {
            http,
            allow_private,
        })
    }

    /// Refuses a URL whose host is a private IP literal (names are checked by the resolver).
    fn check_literal_host(&self, url: &str) -> Result<(), PushGatewayError> {
        if self.allow_private {
            return Ok(());
        }
        let parsed =
            reqwest::Url::parse(url).map_err(|e| PushGatewayError::Client(e.to_string()))?;
        let host = parsed.host_str().unwrap_or_default();
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        match literal.parse::<std::net::IpAddr>() {
            Ok(ip) if !is_public(ip) => Err(PushGatewayError::PrivateAddress(host.to_owned())),
            _ => Ok(()),
        }
    }

    /// Posts `notification` to the gateway at `url` and returns the pushkeys it rejected.
    pub async fn notify(
        &self,
        url: &str,
        notification: &Notification,
    ) -> Result<Vec<String>, PushGatewayError> {
        self.check_literal_host(url)?;
        let response = self
            .http
            .post(url)
            .json(&NotifyRequest { notification })
            .send()
            .await
            .map_err(|e| PushGatewayError::Transport(with_causes(&e)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(PushGatewayError::Status(status.as_u16()));
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| PushGatewayError::Transport(with_causes(&e)))?;
        let body: NotifyResponse =
            serde_json::from_slice(&bytes).map_err(|e| PushGatewayError::Body(e.to_string()))?;
        Ok(body.rejected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notification_serialises_as_the_spec_shows() {
        let notification = Notification {
            event_id: "$e".to_owned(),
            room_id: "!r:x".to_owned(),
            event_type: Some("m.room.message".to_owned()),
            sender: Some("@a:x".to_owned()),
            sender_display_name: None,
            content: None,
            counts: Counts { unread: 2 },
            prio: "low",
            devices: vec![Device {
                app_id: "app".to_owned(),
                pushkey: "k".to_owned(),
                pushkey_ts: 12,
                data: Map::new(),
                tweaks: Map::new(),
            }],
        };
        let json = serde_json::to_value(NotifyRequest {
            notification: &notification,
        })
        .unwrap();
        assert_eq!(json["notification"]["type"], "m.room.message");
        assert!(json["notification"].get("content").is_none());
        assert!(json["notification"].get("sender_display_name").is_none());
        assert_eq!(json["notification"]["counts"]["unread"], 2);
        assert_eq!(json["notification"]["devices"][0]["pushkey_ts"], 12);
        let zero = serde_json::to_value(Counts { unread: 0 }).unwrap();
        assert_eq!(zero, serde_json::json!({}), "zero counts are left out");
    }

    #[tokio::test]
    async fn private_gateways_are_refused_unless_allowed() {
        let notification = Notification {
            event_id: "$e".to_owned(),
            room_id: "!r:x".to_owned(),
            event_type: None,
            sender: None,
            sender_display_name: None,
            content: None,
            counts: Counts { unread: 0 },
            prio: "low",
            devices: Vec::new(),
        };
        let strict = PushGatewayClient::new(Duration::from_secs(2), false).unwrap();
        for url in [
            "http://127.0.0.1:9/_matrix/push/v1/notify",
            "http://[::1]:9/_matrix/push/v1/notify",
            "http://10.0.0.1:9/_matrix/push/v1/notify",
        ] {
            let err = strict.notify(url, &notification).await.unwrap_err();
            assert!(
                matches!(err, PushGatewayError::PrivateAddress(_)),
                "{url}: {err}"
            );
            assert!(!err.is_transient());
        }
        // A name that resolves to loopback only: refused by the resolver, before any connect.
        let err = strict
            .notify("http://localhost:9/_matrix/push/v1/notify", &notification)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("publicly routable"), "{err}");

        // Allowed: the request is made (and fails to connect: nothing listens on port 9).
        let lax = PushGatewayClient::new(Duration::from_secs(2), true).unwrap();
        let err = lax
            .notify("http://127.0.0.1:9/_matrix/push/v1/notify", &notification)
            .await
            .unwrap_err();
        assert!(matches!(err, PushGatewayError::Transport(_)), "{err}");
    }

    /// Run in a child process with `HTTP_PROXY` and `ALL_PROXY` pointing at a listener (see
    /// the test below): a plain reqwest client goes through it (the positive control), the
    /// push gateway client does not.
    #[tokio::test]
    #[ignore = "run by push_gateway_client_ignores_proxies_from_the_environment"]
    async fn proxy_child() {
        let proxy = std::env::var("MYELIN_TEST_PROXY_LISTENER").unwrap();
        let listener = std::net::TcpListener::bind(&proxy).unwrap();
        listener.set_nonblocking(true).unwrap();
        let accepted = || {
            let mut n = 0;
            while listener.accept().is_ok() {
                n += 1;
            }
            n
        };
        // A gateway that is allowed (private addresses allowed) but not listening: directly,
        // the connection is refused at once.
        let url = "http://127.0.0.2:9/_matrix/push/v1/notify";
        let _ = rustls::crypto::ring::default_provider().install_default();
        let plain = reqwest::Client::builder()
            .timeout(Duration::from_millis(500))
            .build()
            .unwrap();
        let _ = plain.post(url).body("{}").send().await;
        assert_eq!(
            accepted(),
            1,
            "the plain client uses the environment's proxy"
        );

        let notification = Notification {
            event_id: "$e".to_owned(),
            room_id: "!r:x".to_owned(),
            event_type: None,
            sender: None,
            sender_display_name: None,
            content: None,
            counts: Counts { unread: 0 },
            prio: "low",
            devices: Vec::new(),
        };
        let client = PushGatewayClient::new(Duration::from_millis(500), true).unwrap();
        let err = client.notify(url, &notification).await.unwrap_err();
        assert!(matches!(err, PushGatewayError::Transport(_)), "{err}");
        assert_eq!(
            accepted(),
            0,
            "the push gateway client connected to the proxy"
        );
    }

    #[test]
    fn push_gateway_client_ignores_proxies_from_the_environment() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let proxy = format!("127.0.0.1:{port}");
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "push_gateway::tests::proxy_child",
                "--ignored",
                "--nocapture",
            ])
            .env("MYELIN_TEST_PROXY_LISTENER", &proxy)
            .env("HTTP_PROXY", format!("http://{proxy}"))
            .env("http_proxy", format!("http://{proxy}"))
            .env("ALL_PROXY", format!("http://{proxy}"))
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("1 passed"),
            "{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    #[test]
    fn only_transport_5xx_and_429_are_transient() {
        assert!(PushGatewayError::Transport(String::new()).is_transient());
        assert!(PushGatewayError::Status(503).is_transient());
        assert!(PushGatewayError::Status(429).is_transient());
        assert!(!PushGatewayError::Status(404).is_transient());
        assert!(!PushGatewayError::Body(String::new()).is_transient());
    }
}
