//! The checkout request, purchase ids and idempotency: pure functions the
//! Worker and the Durable Object share, tested natively.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `POST /v1/purchases` body. Unknown fields are refused so a client that
/// sends `price` learns at once that the price is not theirs to set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckoutRequest {
    pub listing_id: String,
    pub buyer_id: String,
    #[serde(default = "one")]
    pub quantity: i64,
    pub payment_method: String,
}

fn one() -> i64 {
    1
}

pub const MAX_QUANTITY: i64 = 1000;

/// A field that is wrong, and why: the edge answers 422 `invalid_field`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FieldError {
    pub field: &'static str,
    pub problem: String,
}

impl CheckoutRequest {
    pub fn validate(&self) -> Result<(), FieldError> {
        let bad = |field, problem: &str| Err(FieldError { field, problem: problem.to_string() });
        if !is_prefixed_id(&self.listing_id, "lst_") {
            return bad("listing_id", "must be a listing id (lst_ followed by 1-64 lowercase letters or digits)");
        }
        if !is_token(&self.buyer_id, 128) {
            return bad("buyer_id", "must be 1-128 characters of letters, digits, '_' or '-'");
        }
        if !(1..=MAX_QUANTITY).contains(&self.quantity) {
            return bad("quantity", "must be a whole number from 1 to 1000");
        }
        if !is_token(&self.payment_method, 128) {
            return bad("payment_method", "must be a payment method id such as pm_card_visa");
        }
        Ok(())
    }

    /// A digest of the request as the client meant it: the same key with a
    /// different body is refused rather than answered with another purchase.
    pub fn fingerprint(&self) -> String {
        let canonical = format!("{}\n{}\n{}\n{}", self.listing_id, self.buyer_id, self.quantity, self.payment_method);
        hex::encode(Sha256::digest(canonical.as_bytes()))
    }
}

/// The purchase id of an `Idempotency-Key`: the same key always reaches the
/// same Durable Object, which is what makes checkout idempotent without a
/// shared index.
pub fn purchase_id_for_key(key: &str) -> String {
    let digest = Sha256::digest(format!("checkout:{key}").as_bytes());
    format!("pur_{}", &hex::encode(digest)[..32])
}

/// `Idempotency-Key`: 1-255 printable ASCII characters, as Stripe allows.
pub fn valid_idempotency_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= 255 && key.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// `prefix` followed by 1-64 lowercase ASCII letters or digits.
pub fn is_prefixed_id(raw: &str, prefix: &str) -> bool {
    raw.strip_prefix(prefix).is_some_and(|rest| {
        !rest.is_empty() && rest.len() <= 64 && rest.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    })
}

fn is_token(raw: &str, max: usize) -> bool {
    !raw.is_empty() && raw.len() <= max && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> CheckoutRequest {
        CheckoutRequest {
            listing_id: "lst_abc123".into(),
            buyer_id: "buyer_1".into(),
            quantity: 1,
            payment_method: "pm_card_visa".into(),
        }
    }

    #[test]
    fn quantity_defaults_to_one_and_price_is_refused() {
        let parsed: CheckoutRequest =
            serde_json::from_str(r#"{"listing_id":"lst_a","buyer_id":"b","payment_method":"pm_card_visa"}"#).unwrap();
        assert_eq!(parsed.quantity, 1);
        let with_price = serde_json::from_str::<CheckoutRequest>(
            r#"{"listing_id":"lst_a","buyer_id":"b","payment_method":"pm","price":{"value":"1.00","currency":"EUR"}}"#,
        );
        assert!(with_price.is_err());
    }

    #[test]
    fn validation_names_the_field() {
        let cases: [(fn(&mut CheckoutRequest), &str); 7] = [
            (|r| r.listing_id = "lst_".into(), "listing_id"),
            (|r| r.listing_id = "../etc".into(), "listing_id"),
            (|r| r.buyer_id = String::new(), "buyer_id"),
            (|r| r.quantity = 0, "quantity"),
            (|r| r.quantity = -3, "quantity"),
            (|r| r.quantity = 1_000_000, "quantity"),
            (|r| r.payment_method = "pm card".into(), "payment_method"),
        ];
        for (mutate, field) in cases {
            let mut r = request();
            mutate(&mut r);
            assert_eq!(r.validate().unwrap_err().field, field);
        }
        assert!(request().validate().is_ok());
    }

    #[test]
    fn same_key_same_purchase_and_fingerprint_tells_bodies_apart() {
        assert_eq!(purchase_id_for_key("k1"), purchase_id_for_key("k1"));
        assert_ne!(purchase_id_for_key("k1"), purchase_id_for_key("k2"));
        assert!(is_prefixed_id(&purchase_id_for_key("k1"), "pur_"));
        let mut other = request();
        other.quantity = 2;
        assert_ne!(request().fingerprint(), other.fingerprint());
        assert_eq!(request().fingerprint(), request().fingerprint());
    }

    #[test]
    fn idempotency_keys_are_printable_and_bounded() {
        assert!(valid_idempotency_key("order-42"));
        assert!(!valid_idempotency_key(""));
        assert!(!valid_idempotency_key("has space"));
        assert!(!valid_idempotency_key(&"k".repeat(256)));
    }
}
