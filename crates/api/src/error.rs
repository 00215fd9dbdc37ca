//! [`MatrixError`]: every failure a handler or the request bridge can return, mapped once to the
//! spec's `{errcode, error}` JSON body and HTTP status.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use myelin_service::{Error as ServiceError, uia::UiaChallenge};
use ruma::api::{
    OutgoingResponseExt,
    error::{DeserializationError, ErrorBody, ErrorKind, FromHttpRequestError, StandardErrorBody},
};
use serde_json::Value;

/// An error in the shape the Matrix spec gives errors.
#[derive(Debug, Clone)]
pub struct MatrixError {
    pub status: StatusCode,
    pub kind: ErrorKind,
    pub message: String,
    /// Set for user-interactive authentication: the 401 body carries the flows.
    pub uia: Option<Box<UiaChallenge>>,
}

impl MatrixError {
    pub fn new(status: StatusCode, kind: ErrorKind, message: impl Into<String>) -> Self {
        MatrixError {
            status,
            kind,
            message: message.into(),
            uia: None,
        }
    }

    pub fn unrecognized() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            ErrorKind::Unrecognized,
            "Unrecognized request",
        )
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::Unrecognized,
            "Method not allowed",
        )
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorKind::NotFound, message)
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::TooLarge,
            format!("Request body is larger than the limit of {limit} bytes"),
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Unknown,
            message,
        )
    }

    /// Maps a failure to parse a request into the spec's error: unparseable JSON is `M_NOT_JSON`,
    /// JSON of the wrong shape `M_BAD_JSON`, bad path or query parameters `M_INVALID_PARAM`.
    pub fn from_request_error(err: FromHttpRequestError) -> Self {
        match err {
            FromHttpRequestError::Deserialization(DeserializationError::Json(json))
                if json.is_syntax() || json.is_eof() =>
            {
                Self::new(
                    StatusCode::BAD_REQUEST,
                    ErrorKind::NotJson,
                    format!("Content not JSON: {json}"),
                )
            }
            FromHttpRequestError::Deserialization(DeserializationError::Json(json)) => Self::new(
                StatusCode::BAD_REQUEST,
                ErrorKind::BadJson,
                format!("Bad JSON: {json}"),
            ),
            FromHttpRequestError::MethodMismatch { .. } => Self::method_not_allowed(),
            other => Self::new(
                StatusCode::BAD_REQUEST,
                ErrorKind::InvalidParam,
                other.to_string(),
            ),
        }
    }
}

/// The one place where the service layer's errors become HTTP errors.
impl From<ServiceError> for MatrixError {
    fn from(err: ServiceError) -> Self {
        use StatusCode as S;
        let message = err.to_string();
        match err {
            ServiceError::Forbidden(_) => Self::new(S::FORBIDDEN, ErrorKind::Forbidden, message),
            ServiceError::InviteBlocked(_) => {
                Self::new(S::FORBIDDEN, ErrorKind::InviteBlocked, message)
            }
            ServiceError::UserDeactivated(_) => {
                Self::new(S::FORBIDDEN, ErrorKind::UserDeactivated, message)
            }
            ServiceError::UserInUse => Self::new(S::BAD_REQUEST, ErrorKind::UserInUse, message),
            ServiceError::InvalidUsername(_) => {
                Self::new(S::BAD_REQUEST, ErrorKind::InvalidUsername, message)
            }
            ServiceError::InvalidParam(_) => {
                Self::new(S::BAD_REQUEST, ErrorKind::InvalidParam, message)
            }
            ServiceError::MissingParam(_) => {
                Self::new(S::BAD_REQUEST, ErrorKind::MissingParam, message)
            }
            ServiceError::BadJson(_) => Self::new(S::BAD_REQUEST, ErrorKind::BadJson, message),
            ServiceError::NotFound(_) => Self::new(S::NOT_FOUND, ErrorKind::NotFound, message),
            ServiceError::AliasInUse(_) => Self::new(S::CONFLICT, ErrorKind::Unknown, message),
            ServiceError::RoomInUse(_) => Self::new(S::BAD_REQUEST, ErrorKind::RoomInUse, message),
            ServiceError::BadAlias(_) => Self::new(S::BAD_REQUEST, ErrorKind::BadAlias, message),
            ServiceError::ServerManagedAccountData(_) => {
                Self::new(S::METHOD_NOT_ALLOWED, ErrorKind::BadJson, message)
            }
            ServiceError::Unknown(_) => Self::new(S::BAD_REQUEST, ErrorKind::Unknown, message),
            ServiceError::TooLarge(_) => {
                Self::new(S::PAYLOAD_TOO_LARGE, ErrorKind::TooLarge, message)
            }
            ServiceError::UnsupportedRoomVersion(_) => {
                Self::new(S::BAD_REQUEST, ErrorKind::UnsupportedRoomVersion, message)
            }
            ServiceError::IncompatibleRoomVersion { room_version } => {
                match ruma::RoomVersionId::try_from(room_version.as_str()) {
                    Ok(room_version) => Self::new(
                        S::BAD_REQUEST,
                        ErrorKind::IncompatibleRoomVersion(
                            ruma::api::error::IncompatibleRoomVersionErrorData::new(room_version),
                        ),
                        message,
                    ),
                    Err(_) => Self::new(S::BAD_REQUEST, ErrorKind::UnsupportedRoomVersion, message),
                }
            }
            ServiceError::UnableToAuthoriseJoin(_) => {
                Self::new(S::BAD_REQUEST, ErrorKind::UnableToAuthorizeJoin, message)
            }
            ServiceError::UnableToGrantJoin(_) => {
                Self::new(S::BAD_REQUEST, ErrorKind::UnableToGrantJoin, message)
            }
            ServiceError::LimitExceeded { retry_after_ms } => Self::new(
                S::TOO_MANY_REQUESTS,
                ErrorKind::LimitExceeded({
                    let mut data = ruma::api::error::LimitExceededErrorData::new();
                    data.retry_after = Some(ruma::api::error::RetryAfter::Delay(
                        std::time::Duration::from_millis(retry_after_ms),
                    ));
                    data
                }),
                message,
            ),
            ServiceError::InvalidSignature(_) => Self::new(
                S::BAD_REQUEST,
                // ruma has no variant for this errcode; it parses into its custom kind.
                serde_json::from_value(serde_json::json!({"errcode": "M_INVALID_SIGNATURE"}))
                    .unwrap_or(ErrorKind::InvalidParam),
                message,
            ),
            ServiceError::WrongRoomKeysVersion { current_version } => Self::new(
                S::FORBIDDEN,
                ErrorKind::WrongRoomKeysVersion(
                    ruma::api::error::WrongRoomKeysVersionErrorData::new(
                        current_version.unwrap_or_default(),
                    ),
                ),
                message,
            ),
            ServiceError::NotYetUploaded(_) => {
                Self::new(S::GATEWAY_TIMEOUT, ErrorKind::NotYetUploaded, message)
            }
            ServiceError::CannotOverwriteMedia(_) => {
                Self::new(S::CONFLICT, ErrorKind::CannotOverwriteMedia, message)
            }
            ServiceError::BadGateway(_) => Self::new(S::BAD_GATEWAY, ErrorKind::Unknown, message),
            ServiceError::RemoteTooLarge(_) => {
                Self::new(S::BAD_GATEWAY, ErrorKind::TooLarge, message)
            }
            ServiceError::Remote { status, body, .. } => Self::new(
                S::from_u16(status).unwrap_or(S::BAD_GATEWAY),
                serde_json::from_value(Value::Object(body)).unwrap_or(ErrorKind::Unknown),
                message,
            ),
            ServiceError::Unauthorized(_) => {
                Self::new(S::UNAUTHORIZED, ErrorKind::Unauthorized, message)
            }
            ServiceError::NotJson(_) => Self::new(S::BAD_REQUEST, ErrorKind::NotJson, message),
            ServiceError::MissingToken => {
                Self::new(S::UNAUTHORIZED, ErrorKind::MissingToken, message)
            }
            ServiceError::UnknownToken { soft_logout } => Self::new(
                S::UNAUTHORIZED,
                ErrorKind::UnknownToken({
                    let mut data = ruma::api::error::UnknownTokenErrorData::new();
                    data.soft_logout = soft_logout;
                    data
                }),
                message,
            ),
            ServiceError::UnrecognisedNonce(_) => {
                Self::new(S::BAD_REQUEST, ErrorKind::Unknown, message)
            }
            ServiceError::Uia(challenge) => MatrixError {
                status: S::UNAUTHORIZED,
                kind: ErrorKind::Unauthorized,
                message,
                uia: Some(challenge),
            },
            ServiceError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                Self::internal("Internal server error")
            }
        }
    }
}

/// The UIA 401 body: `{flows, params, session, completed}` plus the errcode of a failed stage.
fn uia_body(challenge: &UiaChallenge) -> serde_json::Value {
    let mut body = serde_json::json!({
        "flows": challenge.flows.iter().map(|flow| {
            serde_json::json!({ "stages": flow.iter().map(|s| s.as_str()).collect::<Vec<_>>() })
        }).collect::<Vec<_>>(),
        "params": {},
        "session": challenge.session,
    });
    if !challenge.completed.is_empty() {
        body["completed"] = challenge
            .completed
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .into();
    }
    if let Some((errcode, error)) = &challenge.error {
        body["errcode"] = (*errcode).into();
        body["error"] = error.clone().into();
    }
    body
}

impl std::fmt::Display for MatrixError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.kind.errcode(),
            self.message
        )
    }
}

impl IntoResponse for MatrixError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = self.status.as_u16(), errcode = %self.kind.errcode(), error = %self.message, "request failed");
        }
        if let Some(challenge) = &self.uia {
            return (self.status, axum::Json(uia_body(challenge))).into_response();
        }
        let body = StandardErrorBody::new(self.kind, self.message);
        let error = ruma::api::error::Error::new(self.status, ErrorBody::Standard(body));
        match error.try_into_http_response::<bytes::BytesMut>() {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                parts.headers.insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                Response::from_parts(parts, axum::body::Body::from(body.freeze()))
            }
            Err(err) => {
                tracing::error!(%err, "could not serialize an error response");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_json(response: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn error_body_has_errcode_and_error() {
        let response = MatrixError::unrecognized().into_response();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            body_json(response).await,
            serde_json::json!({"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"})
        );
    }

    #[tokio::test]
    async fn limit_exceeded_carries_retry_after() {
        let err = MatrixError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::LimitExceeded({
                let mut data = ruma::api::error::LimitExceededErrorData::new();
                data.retry_after = Some(ruma::api::error::RetryAfter::Delay(
                    std::time::Duration::from_millis(1500),
                ));
                data
            }),
            "slow down",
        );
        let json = body_json(err.into_response()).await;
        assert_eq!(json["errcode"], "M_LIMIT_EXCEEDED");
        assert_eq!(json["retry_after_ms"], 1500);
    }
}
