//! Stripe's webhook scheme.
//!
//! Stripe sends `Stripe-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>...][,v0=<hex>]`
//! where each `v1` is HMAC-SHA256, keyed with an endpoint secret (`whsec_...`,
//! the whole string as key bytes), over `<t>.<raw body>`. During a secret
//! rotation Stripe sends one `v1` per active secret; `v0` is a legacy scheme
//! for test mode and is ignored, as are schemes we do not know.

use hmac::digest::{Key, KeyInit};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use crate::{Verifier, VerifyError};

/// Lowercase name of the header carrying the signatures.
pub const SIGNATURE_HEADER: &str = "stripe-signature";
/// How far (either way) the signed timestamp may be from now; Stripe's own
/// libraries use the same default.
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;
/// A longer header is refused before any parsing.
pub const MAX_HEADER_BYTES: usize = 4096;
/// At most this many signature items (`v1`, `v0` or unknown schemes), which
/// bounds the comparisons an unauthenticated sender can make us do.
pub const MAX_SIGNATURES: usize = 16;
/// Stripe events are a few KiB; a larger body is refused before hashing it.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

type HmacSha256 = Hmac<Sha256>;

/// Verifies Stripe deliveries against one or more endpoint secrets.
///
/// Holds keyed HMAC states, not the secret strings, and its `Debug` output
/// shows only how many secrets there are.
#[derive(Clone)]
pub struct StripeVerifier {
    keys: Vec<HmacSha256>,
    tolerance_secs: i64,
}

impl std::fmt::Debug for StripeVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeVerifier")
            .field("secrets", &self.keys.len())
            .field("tolerance_secs", &self.tolerance_secs)
            .finish()
    }
}

impl StripeVerifier {
    /// From a comma-separated secret list (the `STRIPE_WEBHOOK_SECRET`
    /// format): during a rotation any one of them may match. Entries are
    /// trimmed and blanks ignored; an empty list yields a verifier that
    /// refuses everything with [`VerifyError::NoSecretConfigured`].
    /// The tolerance is [`DEFAULT_TOLERANCE_SECS`].
    pub fn from_secret_list(list: &str) -> StripeVerifier {
        let keys = list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| keyed(s.as_bytes())).collect();
        StripeVerifier { keys, tolerance_secs: DEFAULT_TOLERANCE_SECS }
    }

    /// Replaces the tolerance. Negative values count as 0 (only the exact
    /// second is accepted); there is deliberately no way to switch the
    /// timestamp check off, since it is what bounds replays.
    pub fn with_tolerance_secs(self, secs: i64) -> StripeVerifier {
        StripeVerifier { tolerance_secs: secs.max(0), ..self }
    }

    /// Whether at least one secret is configured (for health checks).
    pub fn is_configured(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The accepted distance, either way, between the signed timestamp and now.
    pub fn tolerance_secs(&self) -> i64 {
        self.tolerance_secs
    }

    /// Checks a `Stripe-Signature` value against `body` without decoding it:
    /// the verification steps of [`Verifier::verify`] minus the header lookup
    /// and the JSON.
    pub fn verify_signature(
        &self,
        header_value: &str,
        body: &[u8],
        now_unix: i64,
    ) -> Result<SignatureHeader, VerifyError> {
        if self.keys.is_empty() {
            return Err(VerifyError::NoSecretConfigured);
        }
        if header_value.trim().is_empty() {
            return Err(VerifyError::MissingSignature { header: SIGNATURE_HEADER });
        }
        let parsed = parse_signature_header(header_value)?;
        check_body_size(body)?;

        // Every candidate against every secret, no early exit: the work done
        // is the same wherever (and whether) a match is.
        let timestamp = parsed.timestamp.to_string();
        let mut found = Choice::from(0);
        for key in &self.keys {
            let expected = mac(key, &timestamp, body);
            for candidate in &parsed.v1 {
                found |= expected.ct_eq(candidate);
            }
        }
        if !bool::from(found) {
            return Err(VerifyError::SignatureMismatch);
        }

        if now_unix.abs_diff(parsed.timestamp) > self.tolerance_secs.unsigned_abs() {
            return Err(VerifyError::TimestampOutOfTolerance {
                timestamp: parsed.timestamp,
                now: now_unix,
                tolerance_secs: self.tolerance_secs,
            });
        }
        Ok(parsed)
    }
}

impl Verifier for StripeVerifier {
    type Event = StripeEvent;

    fn verify(
        &self,
        header: &dyn Fn(&str) -> Option<String>,
        body: &[u8],
        now_unix: i64,
    ) -> Result<StripeEvent, VerifyError> {
        if self.keys.is_empty() {
            return Err(VerifyError::NoSecretConfigured);
        }
        let value = header(SIGNATURE_HEADER).ok_or(VerifyError::MissingSignature { header: SIGNATURE_HEADER })?;
        self.verify_signature(&value, body, now_unix)?;
        decode_event(body)
    }
}

/// A parsed `Stripe-Signature` value: the timestamp and the `v1` signatures
/// (decoded); other schemes are dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureHeader {
    pub timestamp: i64,
    pub v1: Vec<[u8; 32]>,
}

/// Parses a `Stripe-Signature` value.
///
/// Items are `key=value` separated by commas (whitespace around them is
/// tolerated); items without `=` and unknown keys are ignored so that a new
/// scheme from Stripe does not break verification. Refused as
/// [`VerifyError::MalformedSignature`]: a value over [`MAX_HEADER_BYTES`], no
/// `t` or more than one, a `t` that is not a non-negative integer, no `v1`, a
/// `v1` that is not 64 hex digits, more than [`MAX_SIGNATURES`] signatures.
pub fn parse_signature_header(value: &str) -> Result<SignatureHeader, VerifyError> {
    let malformed = |why: &str| VerifyError::MalformedSignature(why.to_owned());
    if value.len() > MAX_HEADER_BYTES {
        return Err(malformed("longer than 4096 bytes"));
    }
    let mut timestamp = None;
    let mut v1 = Vec::new();
    let mut signatures = 0usize;
    for item in value.split(',') {
        let Some((key, val)) = item.split_once('=') else { continue };
        let (key, val) = (key.trim(), val.trim());
        if key == "t" {
            if timestamp.is_some() {
                return Err(malformed("more than one `t`"));
            }
            timestamp = Some(parse_timestamp(val).ok_or_else(|| malformed("`t` is not a non-negative integer"))?);
            continue;
        }
        signatures += 1;
        if signatures > MAX_SIGNATURES {
            return Err(malformed("more than 16 signatures"));
        }
        if key == "v1" {
            let mut sig = [0u8; 32];
            if val.len() != 64 || hex::decode_to_slice(val, &mut sig).is_err() {
                return Err(malformed("a `v1` signature is not 64 hex digits"));
            }
            v1.push(sig);
        }
    }
    let timestamp = timestamp.ok_or_else(|| malformed("no `t` timestamp"))?;
    if v1.is_empty() {
        return Err(malformed("no `v1` signature"));
    }
    Ok(SignatureHeader { timestamp, v1 })
}

/// Digits only: `i64::from_str` would also take a sign, which Stripe never
/// sends.
fn parse_timestamp(s: &str) -> Option<i64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `t=<timestamp>,v1=<hex>`: what a provider (our local Stripe sandbox)
/// sends, and what tests sign with.
pub fn sign_header(secret: &str, timestamp: i64, payload: &[u8]) -> String {
    let sig = mac(&keyed(secret.as_bytes()), &timestamp.to_string(), payload);
    format!("t={timestamp},v1={}", hex::encode(sig))
}

/// An HMAC-SHA256 state keyed with `secret`. HMAC takes keys of any length
/// (RFC 2104: a key longer than the 64-byte block is hashed first, a shorter
/// one zero-padded); doing that here makes keying infallible, where
/// `Mac::new_from_slice` returns a `Result` that can never be an error.
fn keyed(secret: &[u8]) -> HmacSha256 {
    let mut block = Key::<HmacSha256>::default();
    if secret.len() > block.len() {
        let digest = Sha256::digest(secret);
        block[..digest.len()].copy_from_slice(&digest);
    } else {
        block[..secret.len()].copy_from_slice(secret);
    }
    <HmacSha256 as KeyInit>::new(&block)
}

/// HMAC of Stripe's signed payload, `<timestamp>.<body>`.
fn mac(key: &HmacSha256, timestamp: &str, body: &[u8]) -> [u8; 32] {
    let mut mac = key.clone();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

fn check_body_size(body: &[u8]) -> Result<(), VerifyError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(VerifyError::InvalidPayload(format!(
            "body is {} bytes, over the {MAX_BODY_BYTES}-byte limit",
            body.len()
        )));
    }
    Ok(())
}

/// The parts of a Stripe event the payments saga needs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StripeEvent {
    /// `evt_...`: the de-duplication key (Stripe delivers at least once).
    pub id: String,
    /// `payment_intent.succeeded`, `charge.refunded`, ...
    pub event_type: String,
    /// Unix seconds; 0 if the event lacks it. Informational only: Stripe
    /// does not deliver in order, so the saga never orders by it.
    pub created: i64,
    /// `data.object.id` (`pi_...`, `ch_...`, `tr_...`).
    pub object_id: Option<String>,
    /// `data.object.object` (`payment_intent`, `charge`, `transfer`).
    pub object_type: Option<String>,
    /// `data.object.payment_intent` for charges and refunds (an id, or an
    /// expanded object's id); `data.object.id` for payment intents.
    pub payment_intent: Option<String>,
    /// `data.object.metadata.purchase_id` (PaymentIntents, Charges and
    /// Transfers carry it), else `data.object.transfer_group`.
    pub purchase_id: Option<String>,
}

/// Decodes an event body. Call it only on a body whose signature verified.
///
/// Accepts a JSON object with a string `id` starting `evt_`, a string `type`
/// and an object `data.object`, at most [`MAX_BODY_BYTES`] long; anything
/// else is [`VerifyError::InvalidPayload`] saying what is missing. Unknown
/// fields are ignored (Stripe adds fields without a new API version) and
/// empty strings count as absent.
pub fn decode_event(payload: &[u8]) -> Result<StripeEvent, VerifyError> {
    let invalid = |why: &str| VerifyError::InvalidPayload(why.to_owned());
    check_body_size(payload)?;
    let value: Value =
        serde_json::from_slice(payload).map_err(|e| VerifyError::InvalidPayload(format!("body is not JSON: {e}")))?;
    let Value::Object(event) = value else {
        return Err(invalid("body is not a JSON object"));
    };
    let id = match event.get("id") {
        Some(Value::String(id)) if id.starts_with("evt_") => id.clone(),
        _ => return Err(invalid("`id` is missing or not a string starting `evt_`")),
    };
    let event_type = match event.get("type") {
        Some(Value::String(t)) if !t.is_empty() => t.clone(),
        _ => return Err(invalid("`type` is missing or not a string")),
    };
    let Some(Value::Object(object)) = event.get("data").and_then(|d| d.get("object")) else {
        return Err(invalid("`data.object` is missing or not an object"));
    };
    let created = event.get("created").and_then(Value::as_i64).unwrap_or(0);

    let object_id = string(object.get("id"));
    let object_type = string(object.get("object"));
    let payment_intent = if object_type.as_deref() == Some("payment_intent") {
        object_id.clone()
    } else {
        match object.get("payment_intent") {
            Some(expanded @ Value::Object(_)) => string(expanded.get("id")),
            other => string(other),
        }
    };
    let purchase_id = string(object.get("metadata").and_then(|m| m.get("purchase_id")))
        .or_else(|| string(object.get("transfer_group")));

    Ok(StripeEvent { id, event_type, created, object_id, object_type, payment_intent, purchase_id })
}

/// A non-empty JSON string, owned.
fn string(value: Option<&Value>) -> Option<String> {
    value.and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The infallible keying matches the `hmac` crate's own, including keys
    /// longer than the block.
    #[test]
    fn keying_matches_new_from_slice() {
        for len in [0usize, 1, 6, 32, 63, 64, 65, 200] {
            let secret: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let ours = keyed(&secret).chain_update(b"1700000000.{}").finalize().into_bytes();
            let reference = <HmacSha256 as Mac>::new_from_slice(&secret)
                .unwrap()
                .chain_update(b"1700000000.{}")
                .finalize()
                .into_bytes();
            assert_eq!(ours, reference, "key length {len}");
        }
    }

    /// Cross-checked outside Rust:
    /// `printf '1700000000.{"id":"evt_1"}' | openssl dgst -sha256 -hmac whsec_test_secret`.
    #[test]
    fn known_vector() {
        let header = sign_header("whsec_test_secret", 1_700_000_000, br#"{"id":"evt_1"}"#);
        assert_eq!(header, "t=1700000000,v1=248a374f50f943a28b0f6ab50faf9a7e7e29b710fa26df9fb1618b9bf8ea9c9a");
    }
}
