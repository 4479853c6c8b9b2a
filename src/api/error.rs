//! The server API's errors: a code of the protocol's family (`protocol::codes`) and
//! the HTTP status it stands for, answered as `{"error": {"code", "message"}}`.

use crate::actors::AskError;
use crate::protocol::{ErrorBody, ErrorCode};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

/// A refused or failed call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError(pub ErrorBody);

impl ApiError {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self(ErrorBody::new(code, message))
    }

    /// The body too large for `api.max_body_bytes`.
    pub fn too_large(max: usize) -> Self {
        Self::new(
            ErrorCode::TooLarge,
            format!("the request body is larger than api.max_body_bytes ({max} bytes)"),
        )
    }

    /// A `rate_limited` error for a key over its bucket.
    pub fn rate_limited(retry_after_ms: u64) -> Self {
        Self(ErrorBody {
            code: ErrorCode::RateLimited,
            message: "this key calls faster than api.requests_per_second; slow down".to_owned(),
            retry_after_ms: Some(retry_after_ms.max(1)),
        })
    }

    /// An actor that did not answer.
    pub(crate) fn unanswered(error: AskError) -> Self {
        let message = match error {
            AskError::Gone => "the room or service stopped; try again",
            AskError::Timeout => "the node did not answer in time; try again",
        };
        Self::new(ErrorCode::Unavailable, message)
    }

    /// The HTTP status a code stands for (docs/api.md#errors).
    pub fn status_of(code: ErrorCode) -> StatusCode {
        match code {
            ErrorCode::BadRequest
            | ErrorCode::UnknownType
            | ErrorCode::InvalidRoom
            | ErrorCode::TooLong => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound | ErrorCode::UserOffline => StatusCode::NOT_FOUND,
            ErrorCode::NotJoined | ErrorCode::TooManyRooms => StatusCode::CONFLICT,
            ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Internal | ErrorCode::Unavailable | ErrorCode::RoomLimit => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }
}

impl From<ErrorBody> for ApiError {
    fn from(body: ErrorBody) -> Self {
        Self(body)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.0.code.as_str(), self.0.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        Self::status_of(self.0.code)
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if let Some(ms) = self.0.retry_after_ms {
            // Whole seconds, rounded up: a client that waits that long is admitted.
            response.insert_header(("Retry-After", ms.div_ceil(1000).max(1).to_string()));
        }
        if self.0.code == ErrorCode::Unauthorized {
            response.insert_header(("WWW-Authenticate", "Bearer"));
        }
        response.json(json!({ "error": self.0 }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_one_of_the_documented_statuses() {
        let documented = [400, 401, 403, 404, 409, 413, 429, 503];
        for code in [
            ErrorCode::BadRequest,
            ErrorCode::UnknownType,
            ErrorCode::InvalidRoom,
            ErrorCode::TooLong,
            ErrorCode::NotJoined,
            ErrorCode::TooManyRooms,
            ErrorCode::UserOffline,
            ErrorCode::Forbidden,
            ErrorCode::RateLimited,
            ErrorCode::Internal,
            ErrorCode::Unavailable,
            ErrorCode::RoomLimit,
            ErrorCode::Unauthorized,
            ErrorCode::NotFound,
            ErrorCode::TooLarge,
        ] {
            let status = ApiError::status_of(code).as_u16();
            assert!(documented.contains(&status), "{code:?} -> {status}");
        }
    }

    #[test]
    fn the_body_is_the_coded_error_and_429_says_when_to_retry() {
        let response = ApiError::rate_limited(1500).error_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            response
                .headers()
                .get("Retry-After")
                .and_then(|v| v.to_str().ok()),
            Some("2")
        );
        let response = ApiError::new(ErrorCode::Unauthorized, "no key").error_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(response.headers().get("WWW-Authenticate").is_some());
    }
}
