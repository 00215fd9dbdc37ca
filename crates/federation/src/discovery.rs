//! Server discovery: from a server name to where to connect, what to send as `Host` and which
//! name the certificate must carry (Server-Server API, "Resolving server names"), with the
//! `/.well-known/matrix/server` cache.
//!
//! The order is the spec's: an IP literal; a host name with an explicit port; the well-known
//! delegation (then, on the delegated name: IP literal, explicit port, SRV `_matrix-fed._tcp`,
//! SRV `_matrix._tcp`, port 8448); without delegation SRV `_matrix-fed._tcp`, SRV `_matrix._tcp`
//! and port 8448 on the name itself. DNS and HTTP are behind [`DiscoveryBackend`] so the order
//! and the cache rules are tested without a network.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

/// The port federation uses when nothing names another.
pub const DEFAULT_PORT: u16 = 8448;
/// How long a well-known answer is kept without cache headers saying otherwise.
pub const WELL_KNOWN_SUCCESS_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// How long a failed well-known lookup is remembered without cache headers saying otherwise.
pub const WELL_KNOWN_FAILURE_TTL: Duration = Duration::from_secs(60 * 60);
/// No well-known answer is kept longer than this, whatever its headers say.
pub const WELL_KNOWN_MAX_TTL: Duration = Duration::from_secs(48 * 60 * 60);

/// Where to connect for a server name, and as whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The name the certificate must carry (and the TLS SNI): the server's host name, or the
    /// delegated one; never an SRV target.
    pub tls_name: String,
    /// The `Host` header: the host name, with the port when one was given explicitly.
    pub host_header: String,
    /// What to look up (or the IP to use) for the connection: an SRV target, the host name, or
    /// an IP literal.
    pub connect_host: String,
    pub port: u16,
}

/// One SRV record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvRecord {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    pub target: String,
}

/// What a `/.well-known/matrix/server` request returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WellKnownResponse {
    /// The `m.server` value of a 200 answer with a JSON body, or `None` for any failure (no
    /// answer, an error status, a body that is not the expected JSON).
    pub server: Option<String>,
    /// `Cache-Control` of the answer, if any.
    pub cache_control: Option<String>,
}

/// DNS and HTTP for discovery.
pub trait DiscoveryBackend: Send + Sync {
    /// The SRV records of `name` (e.g. `_matrix-fed._tcp.example.org`); empty when there are none
    /// or the lookup failed.
    fn srv(&self, name: &str) -> impl Future<Output = Vec<SrvRecord>> + Send;
    /// `GET https://<host>/.well-known/matrix/server`.
    fn well_known(&self, host: &str) -> impl Future<Output = WellKnownResponse> + Send;
}

/// Splits a server name into host and optional port. `[v6]:port` keeps its brackets in the
/// host (that is how it goes in `Host` and URLs).
pub fn split_server_name(name: &str) -> Option<(&str, Option<u16>)> {
    if name.starts_with('[') {
        let end = name.find(']')?;
        let (host, rest) = name.split_at(end + 1);
        return match rest.strip_prefix(':') {
            Some(port) => Some((host, Some(port.parse().ok()?))),
            None if rest.is_empty() => Some((host, None)),
            None => None,
        };
    }
    match name.rsplit_once(':') {
        Some((host, port)) => Some((host, Some(port.parse().ok()?))),
        None => Some((name, None)),
    }
}

/// The IP address of an IP-literal host (`1.2.3.4`, `[::1]`).
pub fn ip_literal(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// The record to use among SRV answers: the lowest priority, then the highest weight (a
/// deterministic stand-in for RFC 2782's weighted choice: the connection takes one port, so
/// only one record is used), then the target name so that equal records give a stable answer.
/// A target of `.` means "no service here" and is skipped.
pub fn pick_srv(mut records: Vec<SrvRecord>) -> Option<SrvRecord> {
    records.retain(|r| !r.target.is_empty() && r.target != ".");
    records.sort_by(|a, b| {
        a.priority
            .cmp(&b.priority)
            .then(b.weight.cmp(&a.weight))
            .then(a.target.cmp(&b.target))
    });
    records.into_iter().next().map(|mut r| {
        if r.target.ends_with('.') {
            r.target.pop();
        }
        r
    })
}

/// How long a well-known answer (or failure) may be kept: `max-age` of `Cache-Control` when
/// given (`no-store`/`no-cache` mean not at all), else the default for success or failure;
/// never more than [`WELL_KNOWN_MAX_TTL`].
pub fn well_known_ttl(success: bool, cache_control: Option<&str>) -> Duration {
    let default = if success {
        WELL_KNOWN_SUCCESS_TTL
    } else {
        WELL_KNOWN_FAILURE_TTL
    };
    let mut ttl = default;
    if let Some(header) = cache_control {
        for directive in header.split(',').map(str::trim) {
            let lower = directive.to_ascii_lowercase();
            if lower == "no-store" || lower == "no-cache" {
                return Duration::ZERO;
            }
            if let Some(secs) = lower.strip_prefix("max-age=")
                && let Ok(secs) = secs.trim_matches('"').parse::<u64>()
            {
                ttl = Duration::from_secs(secs);
            }
        }
    }
    ttl.min(WELL_KNOWN_MAX_TTL)
}

/// Reads the `m.server` of a well-known body; `None` if the body is not a JSON object with a
/// valid server name there.
pub fn parse_well_known(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let server = value.get("m.server")?.as_str()?;
    let (host, _) = split_server_name(server)?;
    if host.is_empty() || ruma::ServerName::parse(server).is_err() {
        return None;
    }
    Some(server.to_owned())
}

/// Resolves server names, keeping well-known answers for as long as the rules allow.
#[derive(Debug)]
pub struct Resolver<B> {
    backend: B,
    well_known_cache: Mutex<HashMap<String, (Option<String>, Instant)>>,
}

impl<B: DiscoveryBackend> Resolver<B> {
    pub fn new(backend: B) -> Self {
        Resolver {
            backend,
            well_known_cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Where to reach `server_name`, or `None` if it is not a valid server name.
    pub async fn resolve(&self, server_name: &str) -> Option<Destination> {
        let (host, port) = split_server_name(server_name)?;
        if host.is_empty() {
            return None;
        }
        // 1. An IP literal, with its port or 8448.
        if ip_literal(host).is_some() {
            return Some(Destination {
                tls_name: host.to_owned(),
                host_header: server_name.to_owned(),
                connect_host: host.to_owned(),
                port: port.unwrap_or(DEFAULT_PORT),
            });
        }
        // 2. A host name with an explicit port.
        if let Some(port) = port {
            return Some(Destination {
                tls_name: host.to_owned(),
                host_header: server_name.to_owned(),
                connect_host: host.to_owned(),
                port,
            });
        }
        // 3. Delegation through well-known.
        if let Some(delegated) = self.well_known(host).await
            && let Some((d_host, d_port)) = split_server_name(&delegated)
        {
            if ip_literal(d_host).is_some() || d_port.is_some() {
                return Some(Destination {
                    tls_name: d_host.to_owned(),
                    host_header: delegated.clone(),
                    connect_host: d_host.to_owned(),
                    port: d_port.unwrap_or(DEFAULT_PORT),
                });
            }
            return Some(self.srv_or_default(d_host).await);
        }
        // 4-6. SRV on the name itself, then 8448.
        Some(self.srv_or_default(host).await)
    }

    /// SRV `_matrix-fed._tcp`, then the deprecated `_matrix._tcp`, then port 8448 of `host`;
    /// whatever the SRV target, `Host` and the certificate name stay `host`.
    async fn srv_or_default(&self, host: &str) -> Destination {
        for service in ["_matrix-fed._tcp", "_matrix._tcp"] {
            if let Some(record) = pick_srv(self.backend.srv(&format!("{service}.{host}")).await) {
                return Destination {
                    tls_name: host.to_owned(),
                    host_header: host.to_owned(),
                    connect_host: record.target,
                    port: record.port,
                };
            }
        }
        Destination {
            tls_name: host.to_owned(),
            host_header: host.to_owned(),
            connect_host: host.to_owned(),
            port: DEFAULT_PORT,
        }
    }

    /// The delegated server name of `host`, from the cache while it is fresh.
    async fn well_known(&self, host: &str) -> Option<String> {
        let now = Instant::now();
        if let Some((answer, expires)) = self
            .well_known_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(host)
            && *expires > now
        {
            return answer.clone();
        }
        let response = self.backend.well_known(host).await;
        let ttl = well_known_ttl(response.server.is_some(), response.cache_control.as_deref());
        let mut cache = self
            .well_known_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if ttl.is_zero() {
            cache.remove(host);
        } else {
            cache.insert(host.to_owned(), (response.server.clone(), now + ttl));
        }
        response.server
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// DNS and well-known answers from tables; counts well-known requests.
    #[derive(Default)]
    struct Fake {
        srv: HashMap<String, Vec<SrvRecord>>,
        well_known: HashMap<String, WellKnownResponse>,
        well_known_requests: AtomicUsize,
        srv_requests: Mutex<Vec<String>>,
    }

    impl DiscoveryBackend for Fake {
        async fn srv(&self, name: &str) -> Vec<SrvRecord> {
            self.srv_requests.lock().unwrap().push(name.to_owned());
            self.srv.get(name).cloned().unwrap_or_default()
        }
        async fn well_known(&self, host: &str) -> WellKnownResponse {
            self.well_known_requests.fetch_add(1, Ordering::SeqCst);
            self.well_known
                .get(host)
                .cloned()
                .unwrap_or(WellKnownResponse {
                    server: None,
                    cache_control: None,
                })
        }
    }

    fn srv(priority: u16, weight: u16, port: u16, target: &str) -> SrvRecord {
        SrvRecord {
            priority,
            weight,
            port,
            target: target.to_owned(),
        }
    }

    fn delegating(to: &str) -> WellKnownResponse {
        WellKnownResponse {
            server: Some(to.to_owned()),
            cache_control: None,
        }
    }

    fn dest(tls: &str, host: &str, connect: &str, port: u16) -> Destination {
        Destination {
            tls_name: tls.to_owned(),
            host_header: host.to_owned(),
            connect_host: connect.to_owned(),
            port,
        }
    }

    #[tokio::test]
    async fn ip_literals_and_explicit_ports_skip_every_lookup() {
        let resolver = Resolver::new(Fake::default());
        assert_eq!(
            resolver.resolve("1.2.3.4").await,
            Some(dest("1.2.3.4", "1.2.3.4", "1.2.3.4", 8448))
        );
        assert_eq!(
            resolver.resolve("[2001:db8::1]:8000").await,
            Some(dest(
                "[2001:db8::1]",
                "[2001:db8::1]:8000",
                "[2001:db8::1]",
                8000
            ))
        );
        assert_eq!(
            resolver.resolve("example.org:1234").await,
            Some(dest("example.org", "example.org:1234", "example.org", 1234))
        );
        assert_eq!(
            resolver
                .backend()
                .well_known_requests
                .load(Ordering::SeqCst),
            0
        );
        assert!(resolver.backend().srv_requests.lock().unwrap().is_empty());
        // Positive control: a bare name does ask.
        resolver.resolve("example.org").await;
        assert_eq!(
            resolver
                .backend()
                .well_known_requests
                .load(Ordering::SeqCst),
            1
        );
    }

    #[tokio::test]
    async fn well_known_delegation_uses_the_delegated_name_for_host_and_certificate() {
        let mut fake = Fake::default();
        fake.well_known
            .insert("example.org".into(), delegating("matrix.example.net"));
        fake.srv.insert(
            "_matrix-fed._tcp.matrix.example.net".into(),
            vec![srv(10, 0, 8449, "srv-target.example.com.")],
        );
        // SRV on the undelegated name must not be consulted.
        fake.srv.insert(
            "_matrix-fed._tcp.example.org".into(),
            vec![srv(0, 0, 1, "wrong.example.org")],
        );
        let resolver = Resolver::new(fake);
        assert_eq!(
            resolver.resolve("example.org").await,
            Some(dest(
                "matrix.example.net",
                "matrix.example.net",
                "srv-target.example.com",
                8449
            ))
        );
    }

    #[tokio::test]
    async fn delegation_to_an_explicit_port_or_ip_skips_srv() {
        let mut fake = Fake::default();
        fake.well_known
            .insert("a.org".into(), delegating("matrix.a.org:443"));
        fake.well_known
            .insert("b.org".into(), delegating("5.6.7.8"));
        let resolver = Resolver::new(fake);
        assert_eq!(
            resolver.resolve("a.org").await,
            Some(dest(
                "matrix.a.org",
                "matrix.a.org:443",
                "matrix.a.org",
                443
            ))
        );
        assert_eq!(
            resolver.resolve("b.org").await,
            Some(dest("5.6.7.8", "5.6.7.8", "5.6.7.8", 8448))
        );
        assert!(resolver.backend().srv_requests.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn srv_matrix_fed_comes_before_the_deprecated_matrix_then_8448() {
        let mut fake = Fake::default();
        fake.srv.insert(
            "_matrix-fed._tcp.both.org".into(),
            vec![srv(0, 0, 1111, "fed.both.org")],
        );
        fake.srv.insert(
            "_matrix._tcp.both.org".into(),
            vec![srv(0, 0, 2222, "old.both.org")],
        );
        fake.srv.insert(
            "_matrix._tcp.old.org".into(),
            vec![srv(0, 0, 3333, "old.old.org")],
        );
        let resolver = Resolver::new(fake);
        assert_eq!(
            resolver.resolve("both.org").await,
            Some(dest("both.org", "both.org", "fed.both.org", 1111))
        );
        assert_eq!(
            resolver.resolve("old.org").await,
            Some(dest("old.org", "old.org", "old.old.org", 3333))
        );
        assert_eq!(
            resolver.resolve("none.org").await,
            Some(dest("none.org", "none.org", "none.org", 8448))
        );
        let asked = resolver.backend().srv_requests.lock().unwrap().clone();
        assert_eq!(
            asked,
            vec![
                "_matrix-fed._tcp.both.org",
                "_matrix-fed._tcp.old.org",
                "_matrix._tcp.old.org",
                "_matrix-fed._tcp.none.org",
                "_matrix._tcp.none.org",
            ]
        );
    }

    #[test]
    fn srv_records_are_picked_by_priority_then_weight() {
        let picked = pick_srv(vec![
            srv(20, 100, 1, "late.org"),
            srv(10, 5, 2, "light.org"),
            srv(10, 50, 3, "heavy.org."),
            srv(0, 0, 4, "."),
        ]);
        assert_eq!(picked, Some(srv(10, 50, 3, "heavy.org")));
        assert_eq!(pick_srv(vec![srv(0, 0, 4, ".")]), None);
    }

    #[test]
    fn well_known_lifetimes_follow_the_spec() {
        assert_eq!(well_known_ttl(true, None), WELL_KNOWN_SUCCESS_TTL);
        assert_eq!(well_known_ttl(false, None), WELL_KNOWN_FAILURE_TTL);
        assert_eq!(
            well_known_ttl(true, Some("public, max-age=600")),
            Duration::from_secs(600)
        );
        assert_eq!(
            well_known_ttl(false, Some("max-age=60")),
            Duration::from_secs(60)
        );
        // Capped at 48 hours.
        assert_eq!(
            well_known_ttl(true, Some("max-age=31536000")),
            WELL_KNOWN_MAX_TTL
        );
        assert_eq!(well_known_ttl(true, Some("no-store")), Duration::ZERO);
        // Unreadable headers change nothing.
        assert_eq!(
            well_known_ttl(true, Some("max-age=soon")),
            WELL_KNOWN_SUCCESS_TTL
        );
    }

    #[test]
    fn well_known_bodies_are_parsed_strictly() {
        assert_eq!(
            parse_well_known(br#"{"m.server": "matrix.example.org:443"}"#),
            Some("matrix.example.org:443".to_owned())
        );
        for bad in [
            &b"not json"[..],
            br#"[]"#,
            br#"{"m.server": 12}"#,
            br#"{"m.server": ""}"#,
            br#"{"m.server": "bad name with spaces"}"#,
            br#"{"m.server": "host:notaport"}"#,
            br#"{}"#,
        ] {
            assert_eq!(
                parse_well_known(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[tokio::test]
    async fn well_known_answers_are_cached_and_no_store_is_not() {
        let mut fake = Fake::default();
        fake.well_known
            .insert("cached.org".into(), delegating("m.cached.org"));
        fake.well_known.insert(
            "uncached.org".into(),
            WellKnownResponse {
                server: Some("m.uncached.org".into()),
                cache_control: Some("no-store".into()),
            },
        );
        let resolver = Resolver::new(fake);
        let count = || {
            resolver
                .backend()
                .well_known_requests
                .load(Ordering::SeqCst)
        };
        resolver.resolve("cached.org").await;
        resolver.resolve("cached.org").await;
        assert_eq!(count(), 1, "the second resolution uses the cache");
        // Failures are cached too (for an hour).
        resolver.resolve("missing.org").await;
        resolver.resolve("missing.org").await;
        assert_eq!(count(), 2);
        resolver.resolve("uncached.org").await;
        resolver.resolve("uncached.org").await;
        assert_eq!(count(), 4, "no-store answers are asked again");
    }

    #[tokio::test]
    async fn expired_well_known_entries_are_fetched_again() {
        let mut fake = Fake::default();
        fake.well_known.insert(
            "short.org".into(),
            WellKnownResponse {
                server: Some("m.short.org".into()),
                cache_control: Some("max-age=0".into()),
            },
        );
        let resolver = Resolver::new(fake);
        resolver.resolve("short.org").await;
        resolver.resolve("short.org").await;
        assert_eq!(
            resolver
                .backend()
                .well_known_requests
                .load(Ordering::SeqCst),
            2
        );
    }
}
