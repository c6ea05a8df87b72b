//! `POST /v1/purchases`: the checkout request decoder and the
//! `Idempotency-Key` rules, on hostile bytes.
//!
//! Input: the bytes up to the first `\n` are the `Idempotency-Key` value
//! (lossily UTF-8, as a header string reaches the Worker), the rest is the
//! request body. No `\n`: the key is empty and all of it is the body.
//!
//! The body goes through exactly what the Worker does:
//! `worker_common::body::parse_json::<CheckoutRequest>` (serde_json with the
//! stable `invalid_json`/`invalid_field` codes), then `validate()`. Checked,
//! besides "no panic":
//! - `parse_json` agrees with `serde_json::from_slice` on JSON objects (it
//!   refuses every other JSON value) and errors are 422s
//!   with one of the two codes;
//! - a request that validates has the documented shape (`lst_` id, tokens,
//!   quantity 1-1000), a hex fingerprint, and survives the JSON round trip
//!   to the Durable Object unchanged;
//! - `valid_idempotency_key` is exactly "1-255 printable ASCII characters";
//! - `purchase_id_for_key` is deterministic and yields an id the Worker's own
//!   `pur_` check accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use payments::checkout::{is_prefixed_id, purchase_id_for_key, valid_idempotency_key, CheckoutRequest, MAX_QUANTITY};
use worker_common::body::{parse_json, JSON_LIMIT};

fn is_token(s: &str) -> bool {
    (1..=128).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fuzz_target!(|data: &[u8]| {
    let (key_bytes, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&[][..], data),
    };

    // Idempotency-Key.
    let key = String::from_utf8_lossy(key_bytes);
    let valid = valid_idempotency_key(&key);
    assert_eq!(valid, !key.is_empty() && key.len() <= 255 && key.bytes().all(|b| (b'!'..=b'~').contains(&b)));
    let purchase_id = purchase_id_for_key(&key);
    assert_eq!(purchase_id.len(), 4 + 32);
    assert!(is_prefixed_id(&purchase_id, "pur_"), "{purchase_id}");
    assert_eq!(purchase_id, purchase_id_for_key(&key));

    // Body: the Worker refuses more than JSON_LIMIT bytes (413) before parsing.
    if body.len() > JSON_LIMIT {
        return;
    }
    let parsed = parse_json::<CheckoutRequest>(body);
    let direct = serde_json::from_slice::<CheckoutRequest>(body);
    let request = match parsed {
        Ok(request) => {
            assert_eq!(direct.as_ref().ok(), Some(&request));
            request
        }
        Err(e) => {
            assert_eq!(e.status, 422);
            assert!(matches!(e.code, "invalid_json" | "invalid_field"), "{e:?}");
            // serde alone would also accept a struct as a positional array;
            // the Worker refuses anything but an object.
            let object = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
            assert!(direct.is_err() || !object);
            return;
        }
    };

    // Whatever parsed goes to the Durable Object as JSON: it must come back
    // the same, validated or not.
    let forwarded = serde_json::to_vec(&serde_json::json!({ "request": request })).expect("serializable");
    let back: serde_json::Value = serde_json::from_slice(&forwarded).expect("our own JSON parses");
    let back: CheckoutRequest = serde_json::from_value(back["request"].clone()).expect("round trip");
    assert_eq!(back, request);

    match request.validate() {
        Ok(()) => {
            let rest = request.listing_id.strip_prefix("lst_").expect("listing id has the lst_ prefix");
            assert!((1..=64).contains(&rest.len()));
            assert!(rest.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
            assert!(is_token(&request.buyer_id));
            assert!(is_token(&request.payment_method));
            assert!((1..=MAX_QUANTITY).contains(&request.quantity));
            let fingerprint = request.fingerprint();
            assert_eq!(fingerprint.len(), 64);
            assert!(fingerprint.bytes().all(|b| b.is_ascii_hexdigit()));
        }
        Err(e) => {
            assert!(matches!(e.field, "listing_id" | "buyer_id" | "quantity" | "payment_method"), "{e:?}");
            let _ = e.to_string();
        }
    }
});
