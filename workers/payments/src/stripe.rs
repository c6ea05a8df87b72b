//! The Stripe client: the production code path, pointed at Stripe or at the
//! local sandbox by `STRIPE_API_BASE`.
//!
//! Stripe's conventions, kept exactly: form-encoded bodies with bracketed
//! nested keys, `Idempotency-Key` on every mutating call (the saga's stable
//! `{purchase}:{step}:{action}` key, so a retry replays instead of repeating),
//! amounts as integers in the currency's minor unit, and errors as
//! `{"error": {"type", "code", "message"}}`.

use serde_json::Value;
use steps::Call;
use worker::{Fetch, Headers, Method, Request, RequestInit};

/// How a call ended, in the terms the saga needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// Certainly not executed, worth retrying under the same key: 429 rate
    /// limiting, a request that could not be built or sent.
    Retryable(String),
    /// May or may not have been executed: a 5xx, a connection lost after the
    /// request went out, 409 (another request with this key is in flight).
    /// Retried under the same key; the saga never assumes it did nothing.
    Unknown(String),
    /// Retrying cannot help: a declined card, an invalid request.
    Permanent(String),
}

/// Encodes `pairs` as `application/x-www-form-urlencoded`.
pub fn form_encode(pairs: &[(String, String)]) -> String {
    fn encode(text: &str, out: &mut String) {
        for byte in text.bytes() {
            match byte {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(byte as char),
                b' ' => out.push('+'),
                _ => out.push_str(&format!("%{byte:02X}")),
            }
        }
    }
    let mut out = String::new();
    for (i, (key, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        encode(key, &mut out);
        out.push('=');
        encode(value, &mut out);
    }
    out
}

/// The request Stripe expects for a saga call: method, path and form.
pub fn request_for(
    call: &Call,
    purchase_id: &str,
    payment_method: &str,
) -> (&'static str, String, Vec<(String, String)>) {
    let kv = |k: &str, v: String| (k.to_string(), v);
    let metadata = kv("metadata[purchase_id]", purchase_id.to_string());
    match call {
        Call::CreatePaymentIntent { amount_minor, currency, customer } => (
            "POST",
            "/v1/payment_intents".into(),
            vec![
                kv("amount", amount_minor.to_string()),
                kv("currency", currency.stripe_code().to_string()),
                kv("payment_method", payment_method.to_string()),
                kv("capture_method", "manual".into()),
                kv("confirm", "true".into()),
                kv("transfer_group", purchase_id.to_string()),
                kv("metadata[buyer_id]", customer.clone()),
                metadata,
            ],
        ),
        Call::CapturePaymentIntent { payment_intent, amount_minor } => (
            "POST",
            format!("/v1/payment_intents/{payment_intent}/capture"),
            vec![kv("amount_to_capture", amount_minor.to_string())],
        ),
        Call::CancelPaymentIntent { payment_intent } => (
            "POST",
            format!("/v1/payment_intents/{payment_intent}/cancel"),
            vec![kv("cancellation_reason", "requested_by_customer".into())],
        ),
        Call::RefundPaymentIntent { payment_intent, amount_minor } => (
            "POST",
            "/v1/refunds".into(),
            vec![kv("payment_intent", payment_intent.clone()), kv("amount", amount_minor.to_string()), metadata],
        ),
        Call::TransferToSeller { destination, amount_minor, currency } => (
            "POST",
            "/v1/transfers".into(),
            vec![
                kv("amount", amount_minor.to_string()),
                kv("currency", currency.stripe_code().to_string()),
                kv("destination", destination.clone()),
                kv("transfer_group", purchase_id.to_string()),
                metadata,
            ],
        ),
        // Marketplace calls never reach this client.
        Call::ReserveListing { .. } | Call::ReleaseListing { .. } | Call::MarkListingSold { .. } => {
            ("POST", String::new(), Vec::new())
        }
    }
}

/// Classifies a Stripe answer. On success returns the object's `id`, which
/// the saga keeps as the step's output (the PaymentIntent id is needed later).
pub fn classify(status: u16, body: &str) -> Result<String, CallError> {
    let json: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    if (200..300).contains(&status) {
        return json["id"]
            .as_str()
            .map(String::from)
            .ok_or_else(|| CallError::Unknown(format!("Stripe answered {status} without an object id")));
    }
    let error = &json["error"];
    let code = error["code"].as_str().or_else(|| error["type"].as_str()).unwrap_or("unknown");
    let message = error["message"].as_str().unwrap_or("no message");
    let text = format!("stripe {status} {code}: {message}");
    match status {
        429 => Err(CallError::Retryable(text)),
        409 | 500..=599 => Err(CallError::Unknown(text)),
        _ => Err(CallError::Permanent(text)),
    }
}

/// [`classify`], plus the one answer that means "already done": voiding a
/// hold that is already cancelled (say, it lapsed, or an operator voided it
/// in the dashboard) is a success for a compensation.
pub fn classify_call(call: &Call, status: u16, body: &str) -> Result<String, CallError> {
    let result = classify(status, body);
    if let (Call::CancelPaymentIntent { .. }, Err(CallError::Permanent(_))) = (call, &result) {
        let json: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        let pi = &json["error"]["payment_intent"];
        if json["error"]["code"] == "payment_intent_unexpected_state" && pi["status"] == "canceled" {
            if let Some(id) = pi["id"].as_str() {
                return Ok(id.to_string());
            }
        }
    }
    result
}

pub struct StripeClient {
    pub api_base: String,
    pub secret_key: String,
}

impl StripeClient {
    /// Performs one saga call under `idempotency_key`.
    pub async fn perform(
        &self,
        call: &Call,
        idempotency_key: &str,
        purchase_id: &str,
        payment_method: &str,
    ) -> Result<String, CallError> {
        let (method, path, form) = request_for(call, purchase_id, payment_method);
        if path.is_empty() {
            return Err(CallError::Permanent("not a payment provider call".into()));
        }
        let headers = Headers::new();
        let set = |k: &str, v: &str| headers.set(k, v).map_err(|e| CallError::Permanent(format!("header {k}: {e}")));
        set("authorization", &format!("Bearer {}", self.secret_key))?;
        set("content-type", "application/x-www-form-urlencoded")?;
        set("idempotency-key", idempotency_key)?;
        set("stripe-version", "2024-06-20")?;
        let mut init = RequestInit::new();
        init.with_method(if method == "POST" { Method::Post } else { Method::Get }).with_headers(headers);
        if !form.is_empty() {
            init.with_body(Some(form_encode(&form).into()));
        }
        let url = format!("{}{}", self.api_base.trim_end_matches('/'), path);
        let request = Request::new_with_init(&url, &init)
            .map_err(|e| CallError::Permanent(format!("bad request to {url}: {e}")))?;
        let mut response = Fetch::Request(request)
            .send()
            .await
            .map_err(|e| CallError::Unknown(format!("network error calling Stripe: {e}")))?;
        let status = response.status_code();
        let body = response.text().await.map_err(|e| CallError::Unknown(format!("unreadable Stripe response: {e}")))?;
        classify_call(call, status, &body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use steps::Currency;

    #[test]
    fn form_encoding_matches_stripe_expectations() {
        let pairs = vec![
            ("metadata[purchase_id]".to_string(), "pur_1".to_string()),
            ("description".to_string(), "a b&c=d/é".to_string()),
        ];
        assert_eq!(form_encode(&pairs), "metadata%5Bpurchase_id%5D=pur_1&description=a+b%26c%3Dd%2F%C3%A9");
    }

    #[test]
    fn payment_intent_request_holds_in_minor_units_with_manual_capture() {
        let call =
            Call::CreatePaymentIntent { amount_minor: 12000, currency: Currency::EUR, customer: "buyer_1".into() };
        let (method, path, form) = request_for(&call, "pur_1", "pm_card_visa");
        assert_eq!((method, path.as_str()), ("POST", "/v1/payment_intents"));
        let get = |k: &str| form.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        assert_eq!(get("amount"), Some("12000"));
        assert_eq!(get("currency"), Some("eur"));
        assert_eq!(get("capture_method"), Some("manual"));
        assert_eq!(get("confirm"), Some("true"));
        assert_eq!(get("metadata[purchase_id]"), Some("pur_1"));
        let jpy = Call::TransferToSeller { destination: "acct_1".into(), amount_minor: 1350, currency: Currency::JPY };
        let (_, path, form) = request_for(&jpy, "pur_2", "pm_card_visa");
        assert_eq!(path, "/v1/transfers");
        assert!(form.contains(&("currency".to_string(), "jpy".to_string())));
        assert!(form.contains(&("amount".to_string(), "1350".to_string())));
    }

    #[test]
    fn answers_are_classified_for_retry() {
        assert_eq!(classify(200, r#"{"id": "pi_123", "object": "payment_intent"}"#), Ok("pi_123".into()));
        let declined =
            r#"{"error": {"type": "card_error", "code": "card_declined", "message": "Your card was declined."}}"#;
        assert!(matches!(classify(402, declined), Err(CallError::Permanent(m)) if m.contains("card_declined")));
        assert!(matches!(classify(500, "oops"), Err(CallError::Unknown(_))));
        assert!(matches!(classify(503, "{}"), Err(CallError::Unknown(_))));
        assert!(matches!(classify(429, "{}"), Err(CallError::Retryable(_))));
        assert!(matches!(classify(409, "{}"), Err(CallError::Unknown(_))));
        assert!(matches!(classify(400, r#"{"error": {"type": "idempotency_error"}}"#), Err(CallError::Permanent(_))));
        assert!(matches!(classify(200, "{}"), Err(CallError::Unknown(_))));
    }

    #[test]
    fn voiding_an_already_cancelled_hold_is_a_success() {
        let void = Call::CancelPaymentIntent { payment_intent: "pi_1".into() };
        let canceled = r#"{"error": {"type": "invalid_request_error", "code": "payment_intent_unexpected_state", "payment_intent": {"id": "pi_1", "status": "canceled"}}}"#;
        assert_eq!(classify_call(&void, 400, canceled), Ok("pi_1".into()));
        let captured = canceled.replace("\"canceled\"", "\"succeeded\"");
        assert!(matches!(classify_call(&void, 400, &captured), Err(CallError::Permanent(_))));
        let capture = Call::CapturePaymentIntent { payment_intent: "pi_1".into(), amount_minor: 1 };
        assert!(matches!(classify_call(&capture, 400, canceled), Err(CallError::Permanent(_))));
    }
}
