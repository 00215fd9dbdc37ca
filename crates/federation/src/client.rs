//! The federation HTTP client: every request to another server goes through
//! [`FederationClient::send`], which finds the server ([`crate::discovery`], or
//! `destination_overrides`), connects over TLS (system roots plus the configured CA files),
//! signs the request with X-Matrix ([`crate::xmatrix`]) and reads a bounded answer into the
//! endpoint's ruma response type.
//!
//! Address policy: unless private addresses are allowed, connections only go to publicly
//! routable addresses ([`crate::public_addresses::is_public`]). The check is made by the
//! resolver reqwest connects through (so a name cannot resolve to a public address when checked
//! and a private one when connecting) and, for IP literals that reqwest does not resolve, before
//! the request. No proxy is taken from the environment.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{Arc, RwLock},
    time::Duration,
};

use hickory_resolver::{TokioResolver, proto::rr::RData};
use myelin_room_version::KeyPair;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use ruma::{
    OwnedServerName, ServerName,
    api::{IncomingResponse, OutgoingRequest, path_builder::SinglePath},
};

use crate::{
    discovery::{
        Destination, DiscoveryBackend, Resolver, SrvRecord, WellKnownResponse, ip_literal,
        parse_well_known, split_server_name,
    },
    public_addresses::is_public,
    push_gateway::with_causes,
    xmatrix,
};

/// The largest well-known body read.
const MAX_WELL_KNOWN_SIZE: usize = 64 * 1024;

/// What a [`FederationClient`] needs to know.
#[derive(Debug, Clone)]
pub struct FederationClientConfig {
    /// This server's name: the X-Matrix origin.
    pub server_name: OwnedServerName,
    /// `ed25519:<version>` of the key requests are signed with.
    pub key_id: String,
    /// PEM files of extra CAs trusted beside the system roots.
    pub trusted_ca_files: Vec<PathBuf>,
    pub verify_certificates: bool,
    /// Server name (or host without port) → `ip` or `ip:port`: skips discovery.
    pub destination_overrides: BTreeMap<String, String>,
    pub allow_private_addresses: bool,
    /// The whole request, connection included.
    pub timeout: Duration,
    /// The largest answer read, in bytes.
    pub max_response_size: usize,
}

/// Why a request to another server failed.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    #[error("could not build the federation client: {0}")]
    Client(String),
    #[error("`{0}` is not a server name this server can resolve")]
    BadServerName(String),
    #[error("address {0} is not publicly routable (see federation.allow_private_addresses)")]
    PrivateAddress(String),
    #[error("could not build the request: {0}")]
    Request(String),
    #[error("could not reach the server: {0}")]
    Transport(String),
    #[error("the server answered with more than {0} bytes")]
    TooLarge(usize),
    #[error("the server answered HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("the server's answer is not what the endpoint returns: {0}")]
    Response(String),
    /// Not sent: earlier requests to the server failed and its backoff has not run out (the
    /// service's per-destination backoff).
    #[error(
        "not retrying the server before {retry_at_ms} (ms since the epoch): earlier requests failed"
    )]
    NotRetrying { retry_at_ms: i64 },
}

impl FederationError {
    /// Whether the error says the server is unreachable or failing (so its backoff should
    /// grow), rather than that it answered (even with an error about the request) or that the
    /// request could not be made here. HTTP 5xx, 429 and timeouts count as failing.
    pub fn is_destination_failure(&self) -> bool {
        match self {
            FederationError::BadServerName(_)
            | FederationError::PrivateAddress(_)
            | FederationError::Transport(_) => true,
            FederationError::Status { status, .. } => {
                *status >= 500 || *status == 429 || *status == 408
            }
            FederationError::Client(_)
            | FederationError::Request(_)
            | FederationError::TooLarge(_)
            | FederationError::Response(_)
            | FederationError::NotRetrying { .. } => false,
        }
    }
}

/// Where connections for a TLS name really go: set by [`FederationClient::send`] before the
/// request, read by the resolver reqwest connects through.
type ConnectTargets = Arc<RwLock<HashMap<String, String>>>;

/// The DNS resolver reqwest connects through: looks up the connect host registered for a name
/// (an SRV target, an override's IP) or else the name, and keeps public addresses only unless
/// private ones are allowed.
#[derive(Clone)]
struct ConnectResolver {
    dns: TokioResolver,
    targets: ConnectTargets,
    allow_private: bool,
}

impl Resolve for ConnectResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let this = self.clone();
        let name = name.as_str().to_owned();
        Box::pin(async move {
            let host = this
                .targets
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(&name)
                .cloned()
                .unwrap_or_else(|| name.clone());
            let ips: Vec<IpAddr> = match ip_literal(&host) {
                Some(ip) => vec![ip],
                None => this
                    .dns
                    .lookup_ip(host.as_str())
                    .await
                    .map_err(|e| format!("{host}: {e}"))?
                    .iter()
                    .collect(),
            };
            let addrs: Vec<SocketAddr> = ips
                .into_iter()
                .filter(|ip| this.allow_private || is_public(*ip))
                .map(|ip| SocketAddr::new(ip, 0))
                .collect();
            if addrs.is_empty() {
                return Err(format!(
                    "{host} has no publicly routable address (see federation.allow_private_addresses)"
                )
                .into());
            }
            let addrs: Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// Discovery over the network: SRV through hickory, well-known over HTTPS with the federation
/// client's TLS and address policy.
struct NetBackend {
    dns: TokioResolver,
    http: reqwest::Client,
}

impl DiscoveryBackend for NetBackend {
    async fn srv(&self, name: &str) -> Vec<SrvRecord> {
        let Ok(lookup) = self.dns.srv_lookup(name).await else {
            return Vec::new();
        };
        lookup
            .answers()
            .iter()
            .filter_map(|record| match &record.data {
                RData::SRV(srv) => Some(SrvRecord {
                    priority: srv.priority,
                    weight: srv.weight,
                    port: srv.port,
                    target: srv.target.to_string(),
                }),
                _ => None,
            })
            .collect()
    }

    async fn well_known(&self, host: &str) -> WellKnownResponse {
        let failed = WellKnownResponse {
            server: None,
            cache_control: None,
        };
        let url = format!("https://{host}/.well-known/matrix/server");
        let Ok(mut response) = self.http.get(&url).send().await else {
            return failed;
        };
        let cache_control = response
            .headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if !response.status().is_success() {
            return WellKnownResponse {
                server: None,
                cache_control,
            };
        }
        let mut body = Vec::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            if body.len() + chunk.len() > MAX_WELL_KNOWN_SIZE {
                return failed;
            }
            body.extend_from_slice(&chunk);
        }
        WellKnownResponse {
            server: parse_well_known(&body),
            cache_control,
        }
    }
}

/// An HTTP client for other homeservers, cheap to share behind an `Arc`.
pub struct FederationClient {
    config: FederationClientConfig,
    key: KeyPair,
    http: reqwest::Client,
    targets: ConnectTargets,
    resolver: Resolver<NetBackend>,
}

impl std::fmt::Debug for FederationClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FederationClient")
            .field("server_name", &self.config.server_name)
            .finish_non_exhaustive()
    }
}

impl FederationClient {
    /// A client signing as `config.server_name` with `key`. Reads the CA files.
    pub fn new(config: FederationClientConfig, key: KeyPair) -> Result<Self, FederationError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dns = match TokioResolver::builder_tokio() {
            Ok(builder) => builder.build(),
            Err(_) => TokioResolver::builder_with_config(
                hickory_resolver::config::ResolverConfig::default(),
                hickory_resolver::net::runtime::TokioRuntimeProvider::default(),
            )
            .build(),
        }
        .map_err(|e| FederationError::Client(format!("DNS resolver: {e}")))?;
        let targets = ConnectTargets::default();
        let mut certificates = Vec::new();
        for path in &config.trusted_ca_files {
            let pem = std::fs::read(path).map_err(|e| {
                FederationError::Client(format!(
                    "federation.trusted_ca_files {}: {e}",
                    path.display()
                ))
            })?;
            certificates.extend(reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                FederationError::Client(format!(
                    "federation.trusted_ca_files {}: {e}",
                    path.display()
                ))
            })?);
        }
        let resolver = ConnectResolver {
            dns: dns.clone(),
            targets: targets.clone(),
            allow_private: config.allow_private_addresses,
        };
        let builder = |redirects: reqwest::redirect::Policy| {
            reqwest::Client::builder()
                .no_proxy()
                .timeout(config.timeout)
                .connect_timeout(config.timeout)
                .redirect(redirects)
                .dns_resolver(Arc::new(resolver.clone()))
                .tls_certs_merge(certificates.clone())
                .tls_danger_accept_invalid_certs(!config.verify_certificates)
                .user_agent(concat!("Myelin/", env!("CARGO_PKG_VERSION")))
        };
        let http = builder(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| FederationError::Client(with_causes(&e)))?;
        // The spec lets well-known answers redirect; a few hops, never to a private literal
        // (names are checked by the resolver).
        let allow_private = config.allow_private_addresses;
        let well_known_http = builder(reqwest::redirect::Policy::custom(move |attempt| {
            let private_literal = attempt
                .url()
                .host_str()
                .and_then(ip_literal)
                .is_some_and(|ip| !is_public(ip));
            if attempt.previous().len() >= 5 {
                attempt.error("too many redirects")
            } else if !allow_private && private_literal {
                attempt.error("redirect to an address that is not publicly routable")
            } else {
                attempt.follow()
            }
        }))
        .timeout(config.timeout.min(Duration::from_secs(10)))
        .build()
        .map_err(|e| FederationError::Client(with_causes(&e)))?;
        Ok(FederationClient {
            resolver: Resolver::new(NetBackend {
                dns,
                http: well_known_http,
            }),
            config,
            key,
            http,
            targets,
        })
    }

    pub fn server_name(&self) -> &ServerName {
        &self.config.server_name
    }

    /// Where `server_name` is reached: an override, else discovery.
    pub async fn destination(&self, server_name: &str) -> Result<Destination, FederationError> {
        let bad = || FederationError::BadServerName(server_name.to_owned());
        let (host, port) = split_server_name(server_name).ok_or_else(bad)?;
        let over = self
            .config
            .destination_overrides
            .get(server_name)
            .or_else(|| self.config.destination_overrides.get(host));
        if let Some(target) = over {
            let (ip, target_port) = match target.parse::<SocketAddr>() {
                Ok(addr) => (addr.ip(), Some(addr.port())),
                Err(_) => (
                    ip_literal(target).ok_or_else(|| {
                        FederationError::Client(format!(
                            "federation.destination_overrides: {target} is not ip or ip:port"
                        ))
                    })?,
                    None,
                ),
            };
            return Ok(Destination {
                tls_name: host.to_owned(),
                host_header: server_name.to_owned(),
                connect_host: ip.to_string(),
                port: target_port
                    .or(port)
                    .unwrap_or(crate::discovery::DEFAULT_PORT),
            });
        }
        self.resolver.resolve(server_name).await.ok_or_else(bad)
    }

    /// Where requests to `destination` connect, registered with the connecting resolver, and
    /// the base URL they go to. A private IP literal is refused unless allowed.
    async fn connect_target(
        &self,
        destination: &ServerName,
    ) -> Result<(Destination, String), FederationError> {
        let target = self.destination(destination.as_str()).await?;
        if let Some(ip) = ip_literal(&target.connect_host)
            && !self.config.allow_private_addresses
            && !is_public(ip)
        {
            return Err(FederationError::PrivateAddress(ip.to_string()));
        }
        // Always written, also when the name is its own target: an SRV answer or delegation
        // that has since gone must not keep steering connections.
        self.targets
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(target.tls_name.clone(), target.connect_host.clone());
        let base = format!("https://{}:{}", target.tls_name, target.port);
        Ok((target, base))
    }

    /// Adds the X-Matrix `Authorization` of a request (`method`, `uri` as path and query) and
    /// the `Host` header naming `destination`.
    fn sign_into(
        &self,
        headers: &mut http::HeaderMap,
        destination: &ServerName,
        target: &Destination,
        (method, uri): (&str, &str),
        body: &[u8],
    ) -> Result<(), FederationError> {
        let object = xmatrix::request_object(
            method,
            uri,
            self.config.server_name.as_str(),
            destination.as_str(),
            body,
        )
        .map_err(|e| FederationError::Request(e.to_string()))?;
        let authorization = xmatrix::authorization_header(
            &object,
            self.config.server_name.as_str(),
            destination.as_str(),
            &self.config.key_id,
            &self.key,
        )
        .map_err(FederationError::Request)?;
        headers.insert(
            http::header::AUTHORIZATION,
            authorization
                .parse()
                .map_err(|e: http::header::InvalidHeaderValue| {
                    FederationError::Request(e.to_string())
                })?,
        );
        self.host_into(headers, target)
    }

    fn host_into(
        &self,
        headers: &mut http::HeaderMap,
        target: &Destination,
    ) -> Result<(), FederationError> {
        headers.insert(
            http::header::HOST,
            target
                .host_header
                .parse()
                .map_err(|e: http::header::InvalidHeaderValue| {
                    FederationError::Request(e.to_string())
                })?,
        );
        Ok(())
    }

    /// A `GET` of `path_and_query` on `destination` whose answer is read by the caller as it
    /// arrives (media): X-Matrix signed when `signed` (the federation endpoints), plain for the
    /// deprecated unauthenticated media endpoints old servers still serve. An answer that is
    /// not a success is read (at most 4 KiB) into [`FederationError::Status`]. `extra_time` is
    /// added to the client's timeout for the whole request (a wait the server was asked for,
    /// and a body that takes long to arrive).
    pub async fn get_streamed(
        &self,
        destination: &ServerName,
        path_and_query: &str,
        signed: bool,
        extra_time: Duration,
    ) -> Result<reqwest::Response, FederationError> {
        let (target, base) = self.connect_target(destination).await?;
        let mut headers = http::HeaderMap::new();
        if signed {
            self.sign_into(
                &mut headers,
                destination,
                &target,
                ("GET", path_and_query),
                &[],
            )?;
        } else {
            self.host_into(&mut headers, &target)?;
        }
        let url = reqwest::Url::parse(&format!("{base}{path_and_query}"))
            .map_err(|e| FederationError::Request(e.to_string()))?;
        let response = self
            .http
            .get(url)
            .headers(headers)
            .timeout(self.config.timeout.saturating_add(extra_time))
            .send()
            .await
            .map_err(|e| FederationError::Transport(with_causes(&e)))?;
        error_for_status(response).await
    }

    /// A plain `GET` of an absolute URL another server redirected a media request to, under
    /// the same address policy (the resolver refuses private addresses unless allowed; an IP
    /// literal is checked here) and without following further redirects.
    pub async fn get_redirected(
        &self,
        location: &str,
        extra_time: Duration,
    ) -> Result<reqwest::Response, FederationError> {
        let url = reqwest::Url::parse(location)
            .map_err(|e| FederationError::Response(format!("redirect to `{location}`: {e}")))?;
        if !matches!(url.scheme(), "https" | "http") {
            return Err(FederationError::Response(format!(
                "redirect to a non-HTTP URL `{location}`"
            )));
        }
        if let Some(ip) = url.host_str().and_then(ip_literal)
            && !self.config.allow_private_addresses
            && !is_public(ip)
        {
            return Err(FederationError::PrivateAddress(ip.to_string()));
        }
        let response = self
            .http
            .get(url)
            .timeout(self.config.timeout.saturating_add(extra_time))
            .send()
            .await
            .map_err(|e| FederationError::Transport(with_causes(&e)))?;
        error_for_status(response).await
    }

    /// Sends `request` to `destination`, signed, and parses the answer.
    pub async fn send<R>(
        &self,
        destination: &ServerName,
        request: R,
    ) -> Result<R::IncomingResponse, FederationError>
    where
        R: OutgoingRequest<PathBuilder = SinglePath>,
    {
        self.send_limited(destination, request, self.config.max_response_size)
            .await
    }

    /// [`Self::send`] reading at most `limit` bytes of the answer (and never more than the
    /// client's `max_response_size`): for requests whose answer has a known bound (one event,
    /// a page of a few events), so that a peer cannot make this server buffer and parse more.
    pub async fn send_limited<R>(
        &self,
        destination: &ServerName,
        request: R,
        limit: usize,
    ) -> Result<R::IncomingResponse, FederationError>
    where
        R: OutgoingRequest<PathBuilder = SinglePath>,
    {
        let (target, base) = self.connect_target(destination).await?;
        let built = request
            .try_into_http_request_inner(&base, ())
            .map_err(|e| FederationError::Request(e.to_string()))?;
        let (mut parts, body) = built.into_parts();
        if let Some(content_type) = ruma::api::OutgoingBody::content_type(&body)
            && !parts.headers.contains_key(http::header::CONTENT_TYPE)
        {
            parts
                .headers
                .insert(http::header::CONTENT_TYPE, content_type);
        }
        let body: Vec<u8> = ruma::api::OutgoingBody::try_into_buf(body).map_err(|e| {
            FederationError::Request(Into::<ruma::api::error::IntoHttpError>::into(e).to_string())
        })?;
        let uri = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let mut headers = parts.headers;
        self.sign_into(
            &mut headers,
            destination,
            &target,
            (parts.method.as_str(), &uri),
            &body,
        )?;
        let url = reqwest::Url::parse(&format!("{base}{uri}"))
            .map_err(|e| FederationError::Request(e.to_string()))?;
        let mut response = self
            .http
            .request(parts.method, url)
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(|e| FederationError::Transport(with_causes(&e)))?;
        let limit = limit.min(self.config.max_response_size);
        if response
            .content_length()
            .is_some_and(|len| len > limit as u64)
        {
            return Err(FederationError::TooLarge(limit));
        }
        let status = response.status();
        let response_headers = response.headers().clone();
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| FederationError::Transport(with_causes(&e)))?
        {
            if bytes.len() + chunk.len() > limit {
                return Err(FederationError::TooLarge(limit));
            }
            bytes.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            return Err(FederationError::Status {
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned(),
            });
        }
        let mut http_response = http::Response::builder().status(status);
        if let Some(h) = http_response.headers_mut() {
            *h = response_headers;
        }
        let http_response = http_response
            .body(&bytes[..])
            .map_err(|e| FederationError::Response(e.to_string()))?;
        <R::IncomingResponse as IncomingResponse>::try_from_http_response_inner(http_response)
            .map_err(|e| FederationError::Response(e.to_string()))
    }
}

/// A success as it is; anything else read (at most 4 KiB) into [`FederationError::Status`].
async fn error_for_status(
    mut response: reqwest::Response,
) -> Result<reqwest::Response, FederationError> {
    const MAX_ERROR_BODY: usize = 4096;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let mut bytes = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = MAX_ERROR_BODY - bytes.len();
        bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if bytes.len() >= MAX_ERROR_BODY {
            break;
        }
    }
    Err(FederationError::Status {
        status: status.as_u16(),
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
}
