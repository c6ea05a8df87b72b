//! `Idempotency-Key`, as Stripe implements it for API v1.
//!
//! The first request with a key executes; its status and body are stored.
//! A repeat with the same key, method, path and parameters gets the stored
//! answer back byte for byte (with `Idempotent-Replayed: true`) and executes
//! nothing. The same key with anything else is a 400 `idempotency_error`.
//! Requests refused before execution (bad API key, invalid parameters, an
//! injected 500) store nothing, so they can be retried under the same key.

use crate::errors::{ErrorType, StripeError};

/// Stripe's limit on key length.
pub const MAX_KEY_LEN: usize = 255;

/// What identifies a request for idempotency: method, path, parameters
/// (canonical text, so the order of form pairs does not matter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    pub method: String,
    pub path: String,
    pub params: String,
}

/// A stored first answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub key: String,
    pub fingerprint: Fingerprint,
    pub status: u16,
    pub body: String,
    pub request_id: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// No record: execute and store.
    Execute,
    /// Same request again: answer the stored response.
    Replay,
    /// The key was first used for something else.
    Conflict(StripeError),
}

/// Checks a presented key: non-empty after trimming, at most 255 characters.
pub fn validate_key(key: &str) -> Result<(), StripeError> {
    if key.trim().is_empty() {
        return Err(StripeError::invalid_request("Idempotency-Key must not be empty.").param("Idempotency-Key"));
    }
    if key.chars().count() > MAX_KEY_LEN {
        return Err(StripeError::invalid_request(format!(
            "Invalid idempotency key: keys can be at most {MAX_KEY_LEN} characters long."
        ))
        .param("Idempotency-Key"));
    }
    Ok(())
}

pub fn decide(key: &str, stored: Option<&Fingerprint>, incoming: &Fingerprint) -> Decision {
    let Some(stored) = stored else { return Decision::Execute };
    if stored.method != incoming.method || stored.path != incoming.path {
        return Decision::Conflict(StripeError::new(
            400,
            ErrorType::IdempotencyError,
            format!(
                "Keys for idempotent requests can only be used for the same endpoint they were first used for ('{} {}' vs '{} {}'). Try using a key other than '{key}' if you meant to execute a different request.",
                stored.method, stored.path, incoming.method, incoming.path
            ),
        ));
    }
    if stored.params != incoming.params {
        return Decision::Conflict(StripeError::new(
            400,
            ErrorType::IdempotencyError,
            format!(
                "Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{key}' if you meant to execute a different request."
            ),
        ));
    }
    Decision::Replay
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::form::decode;

    fn fp(method: &str, path: &str, body: &str) -> Fingerprint {
        Fingerprint { method: method.into(), path: path.into(), params: decode(body.as_bytes()).unwrap().canonical() }
    }

    #[test]
    fn same_request_replays_whatever_the_pair_order() {
        let first = fp("POST", "/v1/refunds", "payment_intent=pi_1&amount=100&metadata[purchase_id]=pur_1");
        let again = fp("POST", "/v1/refunds", "metadata%5Bpurchase_id%5D=pur_1&amount=100&payment_intent=pi_1");
        assert_eq!(decide("k", None, &first), Decision::Execute);
        assert_eq!(decide("k", Some(&first), &again), Decision::Replay);
    }

    #[test]
    fn other_parameters_or_endpoints_conflict() {
        let first = fp("POST", "/v1/refunds", "payment_intent=pi_1&amount=100");
        for other in [
            fp("POST", "/v1/refunds", "payment_intent=pi_1&amount=101"),
            fp("POST", "/v1/refunds", "payment_intent=pi_1"),
            fp("POST", "/v1/refunds", "payment_intent=pi_1&amount=100&metadata[x]=1"),
            fp("POST", "/v1/transfers", "payment_intent=pi_1&amount=100"),
        ] {
            match decide("key-1", Some(&first), &other) {
                Decision::Conflict(err) => {
                    assert_eq!((err.status, err.kind), (400, ErrorType::IdempotencyError));
                    assert!(
                        err.message.starts_with("Keys for idempotent requests can only be used"),
                        "{}",
                        err.message
                    );
                    assert!(err.message.contains("'key-1'"));
                }
                other => panic!("expected a conflict, got {other:?}"),
            }
        }
    }

    #[test]
    fn keys_are_bounded() {
        assert!(validate_key("pur_1:hold:create").is_ok());
        assert!(validate_key(&"k".repeat(255)).is_ok());
        assert!(validate_key(&"k".repeat(256)).is_err());
        assert!(validate_key("  ").is_err());
    }
}
