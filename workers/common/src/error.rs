use serde_json::json;
use worker::Response;

/// An error as the client sees it: an HTTP status, a stable machine-readable
/// `code` and a human `message`. Codes are part of the public API: never
/// rename one, add a new one instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }

    /// 401: no token, or a token that is not one of ours.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(401, "unauthorized", message)
    }

    /// 403: a valid token whose role may not do this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "forbidden", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "not_found", message)
    }

    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(405, "method_not_allowed", format!("{method} is not allowed on {path}"))
    }

    /// 409: the request is well-formed but the resource's state forbids it.
    pub fn invalid_state(message: impl Into<String>) -> Self {
        Self::new(409, "invalid_state", message)
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(413, "payload_too_large", format!("request body exceeds {limit} bytes"))
    }

    /// 422 with a specific code (`invalid_json`, `invalid_field`, ...).
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(422, code, message)
    }

    /// 503: a dependency (PostgreSQL, KV, the provider) is unreachable.
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(503, code, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "internal_error", message)
    }

    /// The same status with a more specific code (`out_of_stock` is a 409).
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = code;
        self
    }

    pub fn body(&self) -> serde_json::Value {
        json!({ "error": { "code": self.code, "message": self.message } })
    }

    pub fn into_response(self) -> Response {
        crate::json(self.status, &self.body())
    }
}

impl From<worker::Error> for ApiError {
    fn from(err: worker::Error) -> Self {
        ApiError::internal(err.to_string())
    }
}
