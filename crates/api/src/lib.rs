//! HTTP surface (axum): client, federation, key, media, admin, well-known, metrics.
//!
//! Handlers are thin: `async fn(AppState, Ruma<Request>) -> Result<Response, MatrixError>`, where
//! `Request` is a ruma endpoint type. [`ruma_bridge`] registers each handler under every path its
//! endpoint's metadata lists, parses the request, and runs the authentication the endpoint
//! declares; [`error`] maps every failure to the spec's `{errcode, error}` body in one place.
//!
//! Two routers, one per listener: [`client_router`] (plain HTTP: client API, well-known, health,
//! metrics; the federation and key APIs too with `listen.federation_on_client`) and
//! [`federation_router`] (TLS: federation and key APIs, well-known, health).

mod admin;
mod client;
mod client_address;
pub mod error;
mod federation;
mod layers;
mod media;
pub mod metrics;
pub mod ruma_bridge;
mod well_known;

use std::sync::Arc;

use axum::Router;
use myelin_service::Services;

pub use error::MatrixError;
pub use ruma_bridge::Ruma;

/// What every handler is handed: the services and the metrics registry.
#[derive(Clone, Debug)]
pub struct AppState {
    pub services: Arc<Services>,
    pub metrics: Arc<metrics::Metrics>,
    /// `http.trusted_proxies`, parsed once.
    pub(crate) trusted_proxies: Arc<client_address::TrustedProxies>,
}

impl AppState {
    pub fn new(services: Arc<Services>) -> Self {
        let trusted_proxies = Arc::new(client_address::TrustedProxies::new(
            &services.config.http.trusted_proxies,
        ));
        AppState {
            services,
            metrics: Arc::new(metrics::Metrics::new()),
            trusted_proxies,
        }
    }

    /// The client address of a request, for rate limits (see [`client_address`]).
    pub(crate) fn client_address<B>(&self, request: &http::Request<B>) -> std::net::IpAddr {
        let peer = request
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |info| info.0.ip());
        self.trusted_proxies.client(peer, request.headers())
    }
}

/// The router for the client listener.
pub fn client_router(state: AppState) -> Router {
    let router = client::routes()
        .merge(media::routes(
            state.services.media.legacy_endpoints(),
            state.services.url_previews.is_some(),
        ))
        .merge(admin::routes())
        .merge(well_known::routes())
        .route("/health", axum::routing::get(health));
    let config = &state.services.config;
    let router = if config.listen.federation_on_client {
        router.merge(federation::routes())
    } else {
        router
    };
    // With a listener of its own, `/metrics` is served there only.
    let router = if config.http.serve_metrics && config.listen.metrics.is_none() {
        router.route("/metrics", axum::routing::get(metrics::serve))
    } else {
        router
    };
    layers::finish(router, state, layers::Cors::Enabled)
}

/// The router for the metrics listener (`listen.metrics`): `GET /metrics` alone, when
/// `http.serve_metrics` is on.
pub fn metrics_router(state: AppState) -> Router {
    let router = if state.services.config.http.serve_metrics {
        Router::new().route("/metrics", axum::routing::get(metrics::serve))
    } else {
        Router::new()
    };
    layers::finish(router, state, layers::Cors::Disabled)
}

/// The router for the federation listener.
pub fn federation_router(state: AppState) -> Router {
    let router = federation::routes()
        .merge(well_known::routes())
        .route("/health", axum::routing::get(health));
    layers::finish(router, state, layers::Cors::Disabled)
}

/// `GET /health`: 200 when the database answers, 503 otherwise.
async fn health(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> impl axum::response::IntoResponse {
    match state.services.store.ping().await {
        Ok(()) => (http::StatusCode::OK, "OK"),
        Err(err) => {
            tracing::warn!(%err, "health check: database did not answer");
            (
                http::StatusCode::SERVICE_UNAVAILABLE,
                "database unavailable",
            )
        }
    }
}

/// Parses a JSON body for the few endpoints outside ruma's types, with the spec's errors.
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, MatrixError> {
    serde_json::from_slice(bytes).map_err(|err| {
        let kind = if err.is_syntax() || err.is_eof() {
            ruma::api::error::ErrorKind::NotJson
        } else {
            ruma::api::error::ErrorKind::BadJson
        };
        MatrixError::new(http::StatusCode::BAD_REQUEST, kind, err.to_string())
    })
}
