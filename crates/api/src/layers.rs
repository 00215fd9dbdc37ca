//! What wraps every route: the 404/405 fallbacks, metrics, CORS, request ids, a tracing span per
//! request, panic containment, and the cap on requests handled at once.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::{Router, response::IntoResponse};
use http::{HeaderName, HeaderValue, Method, Request, header};
use tower_http::{
    catch_panic::CatchPanicLayer,
    cors::{Any, CorsLayer},
    request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer},
    sensitive_headers::SetSensitiveRequestHeadersLayer,
    trace::TraceLayer,
};

use crate::{AppState, MatrixError};

static REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Whether a listener answers browsers' cross-origin requests (the client API must).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cors {
    Enabled,
    Disabled,
}

/// Request ids: a per-process random prefix and a counter, cheap and unique within a run.
#[derive(Clone, Debug)]
struct MakeId {
    prefix: u32,
    counter: std::sync::Arc<AtomicU64>,
}

impl MakeRequestId for MakeId {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        HeaderValue::from_str(&format!("{:08x}-{n}", self.prefix))
            .ok()
            .map(RequestId::new)
    }
}

async fn unrecognized() -> impl IntoResponse {
    MatrixError::unrecognized()
}

async fn method_not_allowed() -> impl IntoResponse {
    MatrixError::method_not_allowed()
}

/// Refuses a request at once when the listener already handles its cap of them: queueing would
/// only let a flood hold memory and sockets for longer.
async fn limit_concurrency(
    axum::extract::State(slots): axum::extract::State<std::sync::Arc<tokio::sync::Semaphore>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    match slots.try_acquire_owned() {
        Ok(_permit) => next.run(request).await,
        Err(_) => MatrixError::from(myelin_service::Error::LimitExceeded {
            retry_after_ms: 1000,
        })
        .into_response(),
    }
}

/// Adds the fallbacks and layers to a listener's routes and binds the state.
pub(crate) fn finish(router: Router<AppState>, state: AppState, cors: Cors) -> Router {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(
        state.services.config.http.max_concurrent_requests,
    ));
    let router = router
        .fallback(unrecognized)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::metrics::record,
        ))
        .with_state(state);
    let router = if cors == Cors::Enabled {
        // The spec's recommended CORS headers, so web clients can talk to the client API.
        router.layer(
            CorsLayer::new()
                .allow_origin(Any)
                .allow_methods([
                    Method::GET,
                    Method::HEAD,
                    Method::POST,
                    Method::PUT,
                    Method::DELETE,
                    Method::OPTIONS,
                ])
                .allow_headers([
                    header::HeaderName::from_static("x-requested-with"),
                    header::CONTENT_TYPE,
                    header::AUTHORIZATION,
                ]),
        )
    } else {
        router
    };
    let make_id = MakeId {
        prefix: rand_prefix(),
        counter: Default::default(),
    };
    router
        .layer(axum::middleware::from_fn_with_state(slots, limit_concurrency))
        .layer(CatchPanicLayer::custom(|_| {
            MatrixError::internal("The server hit an internal error").into_response()
        }))
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request<axum::body::Body>| {
                let id = request
                    .headers()
                    .get(&REQUEST_ID_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                // The path only: query strings may carry access tokens.
                tracing::info_span!("request", id, method = %request.method(), path = request.uri().path())
            }),
        )
        .layer(SetSensitiveRequestHeadersLayer::new([header::AUTHORIZATION]))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID_HEADER.clone()))
        .layer(SetRequestIdLayer::new(REQUEST_ID_HEADER.clone(), make_id))
}

fn rand_prefix() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos ^ std::process::id().rotate_left(16)
}
