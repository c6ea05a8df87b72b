//! Stripe's error objects: `{"error": {"type", "code", "message", "param", ...}}`.
//!
//! Only the `/v1` API answers in this shape; the sandbox's own endpoints
//! (`/_sandbox/*`, `/healthz`) answer in the repository's `ApiError` shape.

use serde_json::{json, Map, Value};

/// Stripe's error `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    ApiError,
    CardError,
    IdempotencyError,
    InvalidRequestError,
}

impl ErrorType {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::ApiError => "api_error",
            ErrorType::CardError => "card_error",
            ErrorType::IdempotencyError => "idempotency_error",
            ErrorType::InvalidRequestError => "invalid_request_error",
        }
    }
}

/// One Stripe error with its HTTP status.
#[derive(Debug, Clone, PartialEq)]
pub struct StripeError {
    pub status: u16,
    pub kind: ErrorType,
    pub code: Option<&'static str>,
    pub decline_code: Option<&'static str>,
    pub message: String,
    pub param: Option<String>,
    /// The PaymentIntent as it is after the failed call (declines, wrong state).
    pub payment_intent: Option<Box<Value>>,
    /// The failed charge of a decline.
    pub charge: Option<String>,
}

impl StripeError {
    pub fn new(status: u16, kind: ErrorType, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            code: None,
            decline_code: None,
            message: message.into(),
            param: None,
            payment_intent: None,
            charge: None,
        }
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(400, ErrorType::InvalidRequestError, message)
    }

    pub fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn with_payment_intent(mut self, payment_intent: Value) -> Self {
        self.payment_intent = Some(Box::new(payment_intent));
        self
    }

    pub fn missing_param(param: &str) -> Self {
        Self::invalid_request(format!("Missing required param: {param}.")).code("parameter_missing").param(param)
    }

    pub fn unknown_param(param: &str) -> Self {
        Self::invalid_request(format!("Received unknown parameter: {param}")).code("parameter_unknown").param(param)
    }

    pub fn invalid_integer(param: &str, value: &str) -> Self {
        Self::invalid_request(format!("Invalid integer: {value}")).code("parameter_invalid_integer").param(param)
    }

    /// `No such payment_intent: 'pi_123'` (404 when the id is in the path).
    pub fn no_such(status: u16, what: &str, id: &str, param: &str) -> Self {
        Self::new(status, ErrorType::InvalidRequestError, format!("No such {what}: '{id}'"))
            .code("resource_missing")
            .param(param)
    }

    pub fn unexpected_state(message: impl Into<String>, payment_intent: Value) -> Self {
        Self::invalid_request(message).code("payment_intent_unexpected_state").with_payment_intent(payment_intent)
    }

    /// A 500 as Stripe answers it when something failed on its side.
    pub fn api_error(message: impl Into<String>) -> Self {
        Self::new(500, ErrorType::ApiError, message)
    }

    pub fn unrecognized_url(method: &str, path: &str) -> Self {
        Self::new(
            404,
            ErrorType::InvalidRequestError,
            format!("Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs or we can help at https://support.stripe.com/."),
        )
    }

    /// The error object, wrapped as Stripe sends it.
    pub fn body(&self) -> Value {
        let mut error = Map::new();
        if let Some(charge) = &self.charge {
            error.insert("charge".into(), json!(charge));
        }
        if let Some(code) = self.code {
            error.insert("code".into(), json!(code));
        }
        if let Some(decline_code) = self.decline_code {
            error.insert("decline_code".into(), json!(decline_code));
        }
        if let Some(code) = self.code {
            error.insert(
                "doc_url".into(),
                json!(format!("https://stripe.com/docs/error-codes/{}", code.replace('_', "-"))),
            );
        }
        error.insert("message".into(), json!(self.message));
        if let Some(param) = &self.param {
            error.insert("param".into(), json!(param));
        }
        if let Some(pi) = &self.payment_intent {
            error.insert("payment_intent".into(), (**pi).clone());
        }
        error.insert("type".into(), json!(self.kind.as_str()));
        json!({ "error": Value::Object(error) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_have_stripes_shape() {
        let body = StripeError::missing_param("amount").body();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["code"], "parameter_missing");
        assert_eq!(body["error"]["param"], "amount");
        assert_eq!(body["error"]["message"], "Missing required param: amount.");
        assert_eq!(body["error"]["doc_url"], "https://stripe.com/docs/error-codes/parameter-missing");
        let plain = StripeError::api_error("boom").body();
        assert_eq!(plain["error"], json!({"type": "api_error", "message": "boom"}));
    }
}
