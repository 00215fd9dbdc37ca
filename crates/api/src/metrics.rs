//! Prometheus metrics: request counts and latency histograms by route, the media repository's
//! size, and each federation destination's delivery (events and EDUs queued, consecutive
//! failures, when the next attempt may go, when it last accepted a transaction), the last two
//! read at each scrape; and this server's asking of other servers about account keys
//! (`/query/accounts`: requests by outcome, bytes each way, keys asked and verified, kept by the
//! service's verifier and copied in at each scrape, and the keys still unverified, counted in
//! the store at each scrape). Served as text at `GET /metrics`.
//!
//! Destination labels are bounded by the destinations known at the scrape: the families are
//! emptied and filled again each time, so a destination that is gone leaves no series behind.

use std::time::Instant;

use axum::{
    extract::{MatchedPath, Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::AppState;

/// The label for requests that matched no route (404s and 405s), so that random paths cannot
/// grow the label set without bound.
pub const UNMATCHED_ROUTE: &str = "unmatched";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationLabels {
    destination: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    method: String,
    route: String,
}

/// The registry and the metrics in it.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<LatencyLabels, Histogram>,
    media_count: Gauge,
    media_bytes: Gauge,
    remote_media_count: Gauge,
    remote_media_bytes: Gauge,
    remote_thumbnail_count: Gauge,
    remote_thumbnail_bytes: Gauge,
    destination_events: Family<DestinationLabels, Gauge>,
    destination_edus: Family<DestinationLabels, Gauge>,
    destination_failures: Family<DestinationLabels, Gauge>,
    destination_retry_at: Family<DestinationLabels, Gauge>,
    destination_last_success: Family<DestinationLabels, Gauge>,
    account_queries: Family<OutcomeLabels, Counter>,
    account_query_request_bytes: Counter,
    account_query_response_bytes: Counter,
    account_keys_asked: Counter,
    account_keys_verified: Counter,
    account_keys_unverified: Gauge,
    /// Held while the account-key counters catch up (see [`Metrics::set_account_queries`]).
    account_catch_up: std::sync::Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("myelin");
        let requests = Family::<RequestLabels, Counter>::default();
        // 0.5 ms to ~33 s: a fast cached read to a slow federation join.
        let latency = Family::<LatencyLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.0005, 2.0, 17,
            ))
        });
        registry.register(
            "http_requests",
            "HTTP requests handled, by route and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to produce the response head, by route",
            latency.clone(),
        );
        let media_count = Gauge::default();
        let media_bytes = Gauge::default();
        registry.register(
            "media_ids",
            "Local media ids with uploaded content",
            media_count.clone(),
        );
        registry.register(
            "media_bytes",
            "Bytes of local media, counted once per media id",
            media_bytes.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let gauge = Gauge::default();
            registry.register(name, help, gauge.clone());
            gauge
        };
        let remote_media_count = gauge(
            &mut registry,
            "remote_media_ids",
            "Other servers' media cached here",
        );
        let remote_media_bytes = gauge(
            &mut registry,
            "remote_media_bytes",
            "Bytes of other servers' media cached here, counted once per media id",
        );
        let remote_thumbnail_count = gauge(
            &mut registry,
            "remote_media_thumbnails",
            "Thumbnails of other servers' media cached here",
        );
        let remote_thumbnail_bytes = gauge(
            &mut registry,
            "remote_media_thumbnail_bytes",
            "Bytes of thumbnails of other servers' media cached here",
        );
        let destination = |registry: &mut Registry, name: &str, help: &str| {
            let family = Family::<DestinationLabels, Gauge>::default();
            registry.register(name, help, family.clone());
            family
        };
        let destination_events = destination(
            &mut registry,
            "federation_destination_queued_events",
            "Local events not yet delivered to the destination (an upper bound)",
        );
        let destination_edus = destination(
            &mut registry,
            "federation_destination_queued_edus",
            "Persisted EDUs (to-device messages) not yet delivered to the destination",
        );
        let destination_failures = destination(
            &mut registry,
            "federation_destination_failures",
            "Consecutive failed requests to the destination (0: up)",
        );
        let destination_retry_at = destination(
            &mut registry,
            "federation_destination_retry_at_seconds",
            "While the destination backs off: when the next request may go (Unix time)",
        );
        let destination_last_success = destination(
            &mut registry,
            "federation_destination_last_success_seconds",
            "When the destination last accepted a transaction (Unix time)",
        );
        let account_queries = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "account_queries",
            "/query/accounts requests sent to other servers (MSC4243), by outcome: ok, error, timeout",
            account_queries.clone(),
        );
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let counter = Counter::default();
            registry.register(name, help, counter.clone());
            counter
        };
        let account_query_request_bytes = counter(
            &mut registry,
            "account_query_request_bytes",
            "Bytes of the JSON bodies of /query/accounts requests sent",
        );
        let account_query_response_bytes = counter(
            &mut registry,
            "account_query_response_bytes",
            "Bytes of the JSON bodies of /query/accounts answers read",
        );
        let account_keys_asked = counter(
            &mut registry,
            "account_keys_asked",
            "Other servers' account keys asked about (a key asked twice counts twice)",
        );
        let account_keys_verified = counter(
            &mut registry,
            "account_keys_verified",
            "Other servers' account keys an answer verified",
        );
        let account_keys_unverified = gauge(
            &mut registry,
            "account_keys_unverified",
            "Other servers' account keys held unverified (asked about, not vouched for)",
        );
        Metrics {
            registry,
            requests,
            latency,
            media_count,
            media_bytes,
            remote_media_count,
            remote_media_bytes,
            remote_thumbnail_count,
            remote_thumbnail_bytes,
            destination_events,
            destination_edus,
            destination_failures,
            destination_retry_at,
            destination_last_success,
            account_queries,
            account_query_request_bytes,
            account_query_response_bytes,
            account_keys_asked,
            account_keys_verified,
            account_keys_unverified,
            account_catch_up: std::sync::Mutex::new(()),
        }
    }

    /// Brings the account-key counters up to the verifier's totals: each only grows, so it is
    /// raised by what it lags, one scrape at a time (two at once would both add the lag).
    fn set_account_queries(&self, totals: &myelin_service::account_verification::QueryTotals) {
        let _one_scrape = self
            .account_catch_up
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let raise = |counter: &Counter, total: u64| {
            let behind = total.saturating_sub(counter.get());
            if behind > 0 {
                counter.inc_by(behind);
            }
        };
        let outcomes = [
            ("ok", totals.requests_ok),
            ("error", totals.requests_error),
            ("timeout", totals.requests_timeout),
        ];
        for (outcome, total) in outcomes {
            raise(
                &self
                    .account_queries
                    .get_or_create(&OutcomeLabels { outcome }),
                total,
            );
        }
        raise(&self.account_query_request_bytes, totals.request_bytes);
        raise(&self.account_query_response_bytes, totals.response_bytes);
        raise(&self.account_keys_asked, totals.keys_asked);
        raise(&self.account_keys_verified, totals.keys_verified);
    }

    fn observe(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.to_owned(),
                route: route.to_owned(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&LatencyLabels {
                method: method.to_owned(),
                route: route.to_owned(),
            })
            .observe(seconds);
    }

    /// Replaces the destination series with these.
    fn set_destinations(&self, statuses: &[myelin_service::federation::DestinationStatus]) {
        let families = [
            &self.destination_events,
            &self.destination_edus,
            &self.destination_failures,
            &self.destination_retry_at,
            &self.destination_last_success,
        ];
        for family in families {
            family.clear();
        }
        for status in statuses {
            let labels = DestinationLabels {
                destination: status.destination.clone(),
            };
            self.destination_events
                .get_or_create(&labels)
                .set(status.queued_events);
            self.destination_edus
                .get_or_create(&labels)
                .set(status.queued_edus);
            self.destination_failures
                .get_or_create(&labels)
                .set(i64::from(status.failures));
            if let Some(at) = status.retry_at_ms {
                self.destination_retry_at
                    .get_or_create(&labels)
                    .set(at / 1000);
            }
            if let Some(at) = status.last_success_ms {
                self.destination_last_success
                    .get_or_create(&labels)
                    .set(at / 1000);
            }
        }
    }

    /// The registry in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Middleware that records every request under its route template.
pub(crate) async fn record(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = method_label(request.method()).to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED_ROUTE, MatchedPath::as_str)
        .to_owned();
    let response = next.run(request).await;
    state.metrics.observe(
        &method,
        &route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// The method label: the methods the APIs use, and one label for every other (a client may
/// send any token as a method, which must not grow the label set).
fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// `GET /metrics`.
pub(crate) async fn serve(State(state): State<AppState>) -> impl IntoResponse {
    // One indexed count per scrape; on failure the last values stay.
    match state.services.media.totals().await {
        Ok((count, bytes)) => {
            state.metrics.media_count.set(count);
            state.metrics.media_bytes.set(bytes);
        }
        Err(err) => tracing::warn!(%err, "metrics: could not count media"),
    }
    match state.services.media.remote_totals().await {
        Ok(totals) => {
            state.metrics.remote_media_count.set(totals.media);
            state.metrics.remote_media_bytes.set(totals.bytes);
            state.metrics.remote_thumbnail_count.set(totals.thumbnails);
            state
                .metrics
                .remote_thumbnail_bytes
                .set(totals.thumbnail_bytes);
        }
        Err(err) => tracing::warn!(%err, "metrics: could not count remote media"),
    }
    match state.services.federation_sender.statuses().await {
        Ok(statuses) => state.metrics.set_destinations(&statuses),
        Err(err) => tracing::warn!(%err, "metrics: could not read the federation destinations"),
    }
    state
        .metrics
        .set_account_queries(&state.services.account_verifier.totals());
    match state.services.account_verifier.unverified_count().await {
        Ok(count) => {
            state.metrics.account_keys_unverified.set(count);
        }
        Err(err) => tracing::warn!(%err, "metrics: could not count unverified account keys"),
    }
    (
        [(
            http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
