//! The bridge from ruma endpoint types to axum: route registration from endpoint metadata, the
//! [`Ruma`] extractor (body limit, path arguments, the endpoint's declared authentication,
//! parsing), and turning ruma responses into HTTP responses.

use std::future::Future;

use axum::{
    Router,
    extract::{FromRequest, FromRequestParts, RawPathParams, Request, State},
    response::{IntoResponse, Response},
    routing::{MethodFilter, on},
};
use http::StatusCode;
use ruma::api::{
    IncomingRequest, IncomingRequestExt, OutgoingResponse, OutgoingResponseExt,
    auth_scheme::{
        AccessToken, AccessTokenOptional, AppserviceTokenOptional, NoAccessToken, NoAuthentication,
    },
    path_builder::PathBuilder,
};

use myelin_service::{Error as ServiceError, accounts::AuthedUser, rate_limit::RateKey};

use crate::{AppState, MatrixError};

/// How a ruma authentication scheme is checked on this server, and who it identifies.
///
/// Implemented for each scheme as its machinery lands (access tokens with accounts, X-Matrix
/// with federation); an endpoint whose scheme has no implementation cannot be registered, so no
/// endpoint is ever served with its authentication silently skipped.
pub trait Authenticate: Sized {
    /// Who made the request, as far as this scheme can tell.
    type Identity: Send + std::fmt::Debug;

    /// Whether the check covers the body (X-Matrix signs it): such a scheme is checked after
    /// the body is read, under the JSON body cap. Every other scheme is checked from the head
    /// alone, before the body is read.
    const NEEDS_BODY: bool = false;

    /// The logged-in user, if the identity names one (rate limits count per user then).
    fn user(_identity: &Self::Identity) -> Option<&AuthedUser> {
        None
    }

    fn authenticate(
        state: &AppState,
        request: &http::Request<&[u8]>,
    ) -> impl Future<Output = Result<Self::Identity, MatrixError>> + Send;
}

impl Authenticate for NoAuthentication {
    type Identity = ();

    async fn authenticate(_: &AppState, _: &http::Request<&[u8]>) -> Result<(), MatrixError> {
        Ok(())
    }
}

/// Endpoints that take no access token (a client may still send one; it is ignored).
impl Authenticate for NoAccessToken {
    type Identity = ();

    async fn authenticate(_: &AppState, _: &http::Request<&[u8]>) -> Result<(), MatrixError> {
        Ok(())
    }
}

/// The access token of a request: the `Authorization: Bearer` header or the deprecated
/// `access_token` query parameter.
fn access_token(request: &http::Request<&[u8]>) -> Result<Option<String>, MatrixError> {
    ruma::api::auth_scheme::extract_bearer_or_query_token(request).map_err(|err| {
        MatrixError::new(
            StatusCode::UNAUTHORIZED,
            ruma::api::error::ErrorKind::MissingToken,
            err.to_string(),
        )
    })
}

/// `/register` and `/login`, where an application service may identify itself. No application
/// services can be configured yet, so no token can be one; a client's own token (some send it)
/// is ignored, as for [`NoAccessToken`].
impl Authenticate for AppserviceTokenOptional {
    type Identity = ();

    async fn authenticate(_: &AppState, _: &http::Request<&[u8]>) -> Result<(), MatrixError> {
        Ok(())
    }
}

/// Endpoints that need a logged-in client.
impl Authenticate for AccessToken {
    type Identity = AuthedUser;

    fn user(identity: &AuthedUser) -> Option<&AuthedUser> {
        Some(identity)
    }

    async fn authenticate(
        state: &AppState,
        request: &http::Request<&[u8]>,
    ) -> Result<AuthedUser, MatrixError> {
        let token = access_token(request)?.ok_or(ServiceError::MissingToken)?;
        Ok(state.services.accounts.authenticate(&token).await?)
    }
}

/// Endpoints where a token is optional: none is fine, a bad one is still an error.
impl Authenticate for AccessTokenOptional {
    type Identity = Option<AuthedUser>;

    fn user(identity: &Option<AuthedUser>) -> Option<&AuthedUser> {
        identity.as_ref()
    }

    async fn authenticate(
        state: &AppState,
        request: &http::Request<&[u8]>,
    ) -> Result<Option<AuthedUser>, MatrixError> {
        match access_token(request)? {
            Some(token) => Ok(Some(state.services.accounts.authenticate(&token).await?)),
            None => Ok(None),
        }
    }
}

/// The server that signed a federation request, checked by its X-Matrix signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin(pub ruma::OwnedServerName);

/// Server-server endpoints: the X-Matrix signature (origin, destination, key, and a signature
/// over method, URI, origin, destination and body), checked before the handler runs and after
/// the body is read under the JSON body cap.
impl Authenticate for ruma::api::federation::authentication::ServerSignatures {
    type Identity = Origin;

    const NEEDS_BODY: bool = true;

    async fn authenticate(
        state: &AppState,
        request: &http::Request<&[u8]>,
    ) -> Result<Origin, MatrixError> {
        let authorization = match request.headers().get(http::header::AUTHORIZATION) {
            Some(value) => Some(value.to_str().map_err(|_| {
                MatrixError::new(
                    StatusCode::UNAUTHORIZED,
                    ruma::api::error::ErrorKind::Unauthorized,
                    "The Authorization header is not ASCII",
                )
            })?),
            None => None,
        };
        let uri = request
            .uri()
            .path_and_query()
            .map_or_else(|| request.uri().path(), |p| p.as_str());
        let origin = state
            .services
            .remote_keys
            .authenticate_request(
                authorization,
                request.method().as_str(),
                uri,
                request.body(),
            )
            .await?;
        Ok(Origin(origin))
    }
}

/// A parsed, authenticated ruma request.
#[derive(Debug)]
pub struct Ruma<R: IncomingRequest>
where
    R::Authentication: Authenticate,
{
    /// The request as ruma parsed it.
    pub body: R,
    /// Who sent it, per the endpoint's authentication scheme.
    pub identity: <R::Authentication as Authenticate>::Identity,
    /// The client's address, as rate limits count it (see [`AppState::client_address`]).
    pub client_address: std::net::IpAddr,
    /// The body as it came (already parsed into `body`), for the few endpoints that keep what
    /// ruma's type has no field for (`/join`'s extra member content).
    pub raw_body: bytes::Bytes,
}

impl<R> FromRequest<AppState> for Ruma<R>
where
    R: IncomingRequest + Send + 'static,
    R::Authentication: Authenticate,
{
    type Rejection = MatrixError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let mut path_args = path_args(&mut parts, state).await;
        // The routes registered for an empty state key (`/state/{type}/` and `/state/{type}`):
        // ruma still expects the parameter, as an empty string.
        if parts.extensions.get::<EmptyStateKey>().is_some() {
            path_args.push(String::new());
        }
        // Who is asking, and whether they may, is known from the head alone for every scheme
        // but body-signing ones: both are settled before the body is read, so an anonymous or
        // rate-limited client cannot make the server buffer a body first.
        let head = http::Request::from_parts(parts, &[][..]);
        let client_address = state.client_address(&head);
        let early = if R::Authentication::NEEDS_BODY {
            None
        } else {
            let identity = R::Authentication::authenticate(state, &head).await?;
            check_rate::<R>(state, &head, &identity)?;
            Some(identity)
        };
        let (mut parts, _) = head.into_parts();
        let http_config = &state.services.config.http;
        let limit = json_body_limit::<R>(http_config);
        let read = axum::body::to_bytes(body, limit);
        let timeout = std::time::Duration::from_secs(http_config.body_read_timeout_secs);
        let bytes = tokio::time::timeout(timeout, read).await.map_err(|_| {
            MatrixError::new(
                StatusCode::REQUEST_TIMEOUT,
                ruma::api::error::ErrorKind::Unknown,
                "The request body did not arrive in time",
            )
        })?;
        let bytes = bytes.map_err(|err| {
            if is_length_limit(&err) {
                MatrixError::too_large(limit)
            } else {
                MatrixError::new(
                    StatusCode::BAD_REQUEST,
                    ruma::api::error::ErrorKind::Unknown,
                    format!("Could not read the request body: {err}"),
                )
            }
        })?;
        // JSON is UTF-8. serde skips the strings of fields it ignores without checking them, so
        // a JSON body is checked as a whole (other bodies, such as uploads, are bytes).
        let is_json = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_none_or(|v| v.contains("json"));
        if is_json && std::str::from_utf8(&bytes).is_err() {
            return Err(MatrixError::new(
                StatusCode::BAD_REQUEST,
                ruma::api::error::ErrorKind::NotJson,
                "Request body is not valid UTF-8",
            ));
        }
        // Body-signing schemes check the body as it came, before the substitution below.
        let identity = match early {
            Some(identity) => identity,
            None => {
                let signed = http::Request::from_parts(parts, bytes.as_ref());
                let identity = R::Authentication::authenticate(state, &signed).await?;
                check_rate::<R>(state, &signed, &identity)?;
                parts = signed.into_parts().0;
                identity
            }
        };
        // Clients send POSTs like `/join` with no body at all where every field is optional;
        // like other servers, read that as an empty JSON object.
        let body: &[u8] =
            if bytes.is_empty() && matches!(parts.method, http::Method::POST | http::Method::PUT) {
                b"{}"
            } else {
                bytes.as_ref()
            };
        let request = http::Request::from_parts(parts, body);
        let args: Vec<&str> = path_args.iter().map(String::as_str).collect();
        let parsed =
            R::try_from_http_request(request, &args).map_err(MatrixError::from_request_error)?;
        Ok(Ruma {
            body: parsed,
            identity,
            client_address,
            raw_body: bytes,
        })
    }
}

/// The body cap of endpoint `R`: every body read whole is JSON (uploads come through
/// [`RumaStreamed`] instead), capped by `http.max_json_request_size`, except a federation
/// transaction, which may hold 150 events of up to 64 KiB
/// ([`myelin_service::federation_receiver::MAX_TRANSACTION_BYTES`]). Both under
/// `http.max_request_size`.
fn json_body_limit<R: 'static>(http_config: &myelin_service::config::HttpConfig) -> usize {
    let json = if std::any::TypeId::of::<R>()
        == std::any::TypeId::of::<
            ruma::api::federation::transactions::send_transaction_message::v1::Request,
        >() {
        myelin_service::federation_receiver::MAX_TRANSACTION_BYTES
            .max(http_config.max_json_request_size)
    } else {
        http_config.max_json_request_size
    };
    json.min(http_config.max_request_size)
}

/// The request's path arguments, in order. Values come percent-decoded, which is what ruma
/// expects.
async fn path_args(parts: &mut http::request::Parts, state: &AppState) -> Vec<String> {
    match RawPathParams::from_request_parts(parts, state).await {
        Ok(params) => params.iter().map(|(_, value)| value.to_owned()).collect(),
        Err(_) => Vec::new(),
    }
}

/// Runs the authentication endpoint `R` declares, then its rate limit if it has one.
async fn identify<R>(
    state: &AppState,
    request: &http::Request<&[u8]>,
) -> Result<<R::Authentication as Authenticate>::Identity, MatrixError>
where
    R: IncomingRequest,
    R::Authentication: Authenticate,
{
    let identity = R::Authentication::authenticate(state, request).await?;
    check_rate::<R>(state, request, &identity)?;
    Ok(identity)
}

/// The rate limit of endpoints the spec marks rate-limited: per user once logged in, else per
/// client address (behind a trusted proxy, the one it forwarded for; unknown behind nothing
/// but a test harness, which then shares one bucket).
fn check_rate<R>(
    state: &AppState,
    request: &http::Request<&[u8]>,
    identity: &<R::Authentication as Authenticate>::Identity,
) -> Result<(), MatrixError>
where
    R: IncomingRequest,
    R::Authentication: Authenticate,
{
    if R::RATE_LIMITED {
        let key = match R::Authentication::user(identity) {
            Some(user) => RateKey::User(user.user_id.to_string()),
            None => RateKey::Address(state.client_address(request)),
        };
        state.services.rate_limiter.check(key)?;
    }
    Ok(())
}

/// A ruma request whose body is left unread, for uploads: the endpoint's path, query and
/// headers are parsed (as if the body were empty) and its authentication run, and the body is
/// handed over as a stream for the handler to read in bounded chunks.
#[derive(Debug)]
pub struct RumaStreamed<R: IncomingRequest>
where
    R::Authentication: Authenticate,
{
    /// The request as ruma parsed it, with an empty body.
    pub head: R,
    pub identity: <R::Authentication as Authenticate>::Identity,
    /// The declared `Content-Length`, if any.
    pub content_length: Option<u64>,
    pub body: axum::body::Body,
}

impl<R> FromRequest<AppState> for RumaStreamed<R>
where
    R: IncomingRequest + Send + 'static,
    R::Authentication: Authenticate,
{
    type Rejection = MatrixError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let path_args = path_args(&mut parts, state).await;
        let content_length = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let request = http::Request::from_parts(parts, &[][..]);
        let identity = identify::<R>(state, &request).await?;
        let args: Vec<&str> = path_args.iter().map(String::as_str).collect();
        let head =
            R::try_from_http_request(request, &args).map_err(MatrixError::from_request_error)?;
        Ok(RumaStreamed {
            head,
            identity,
            content_length,
            body,
        })
    }
}

fn is_length_limit(err: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(current) = source {
        if current.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = current.source();
    }
    false
}

/// Marks the routes that stand for an empty `{state_key}`.
#[derive(Debug, Clone, Copy)]
struct EmptyStateKey;

/// A ruma response on its way out.
#[derive(Debug)]
pub struct RumaResponse<T>(pub T);

impl<T: OutgoingResponse> IntoResponse for RumaResponse<T> {
    fn into_response(self) -> Response {
        match self.0.try_into_http_response::<bytes::BytesMut>() {
            Ok(response) => {
                let (parts, body) = response.into_parts();
                Response::from_parts(parts, axum::body::Body::from(body.freeze()))
            }
            Err(err) => MatrixError::internal(format!("could not serialize the response: {err}"))
                .into_response(),
        }
    }
}

/// Registers ruma endpoints on a router.
pub trait RumaRouterExt {
    /// Serves `handler` for endpoint `R` under every path its metadata lists, for its method.
    fn ruma<R, H, Fut>(self, handler: H) -> Self
    where
        R: IncomingRequest + Send + 'static,
        R::Authentication: Authenticate,
        H: Fn(AppState, Ruma<R>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<R::OutgoingResponse, MatrixError>> + Send + 'static;

    /// Serves `handler` for endpoint `R` under every path its metadata lists, for its method,
    /// where the handler builds the HTTP response itself (streamed media) and extracts `X`
    /// (a [`Ruma`] or a [`RumaStreamed`] of `R`).
    fn ruma_raw<R, X, H, Fut>(self, handler: H) -> Self
    where
        R: IncomingRequest + Send + 'static,
        X: FromRequest<AppState> + Send + 'static,
        H: Fn(AppState, X) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Response, MatrixError>> + Send + 'static;
}

impl RumaRouterExt for Router<AppState> {
    fn ruma<R, H, Fut>(self, handler: H) -> Self
    where
        R: IncomingRequest + Send + 'static,
        R::Authentication: Authenticate,
        H: Fn(AppState, Ruma<R>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<R::OutgoingResponse, MatrixError>> + Send + 'static,
    {
        route_ruma(self, handler)
    }

    fn ruma_raw<R, X, H, Fut>(self, handler: H) -> Self
    where
        R: IncomingRequest + Send + 'static,
        X: FromRequest<AppState> + Send + 'static,
        H: Fn(AppState, X) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Response, MatrixError>> + Send + 'static,
    {
        let filter = MethodFilter::try_from(R::METHOD)
            .unwrap_or_else(|_| panic!("ruma endpoint with unroutable method {}", R::METHOD));
        let mut router = self;
        for path in R::PATH_BUILDER.all_paths() {
            let handler = handler.clone();
            router = router.route(
                path,
                on(filter, move |State(state): State<AppState>, request: X| {
                    let handler = handler.clone();
                    async move { handler(state, request).await }
                }),
            );
        }
        router
    }
}

fn route_ruma<R, H, Fut>(router: Router<AppState>, handler: H) -> Router<AppState>
where
    R: IncomingRequest + Send + 'static,
    R::Authentication: Authenticate,
    H: Fn(AppState, Ruma<R>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<R::OutgoingResponse, MatrixError>> + Send + 'static,
{
    {
        let filter = MethodFilter::try_from(R::METHOD)
            .unwrap_or_else(|_| panic!("ruma endpoint with unroutable method {}", R::METHOD));
        let mut router = router;
        for path in R::PATH_BUILDER.all_paths() {
            let handler_for = |handler: H| {
                move |State(state): State<AppState>, request: Ruma<R>| {
                    let handler = handler.clone();
                    async move { handler(state, request).await.map(RumaResponse) }
                }
            };
            router = router.route(path, on(filter, handler_for(handler.clone())));
            // Clients address the empty state key as `/state/{type}/` or `/state/{type}`;
            // axum matches neither against `{state_key}`, so both are routed explicitly.
            if let Some(prefix) = path.strip_suffix("/{state_key}") {
                for route in [format!("{prefix}/"), prefix.to_owned()] {
                    router = router.route(
                        &route,
                        on(filter, handler_for(handler.clone()))
                            .layer(axum::Extension(EmptyStateKey)),
                    );
                }
            }
        }
        router
    }
}
