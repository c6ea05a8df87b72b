//! Stripe webhooks: `Stripe-Signature` parsing, verification and event
//! decoding, on hostile bytes.
//!
//! Input: the bytes up to the first `\n` are the `Stripe-Signature` value
//! (lossily UTF-8, as a header string reaches the Worker), the rest is the
//! raw body. No `\n`: all of it is the header and the body is empty.
//!
//! Checked, besides "no panic":
//! - nothing verifies unless one of its `v1` signatures is the HMAC of
//!   `<t>.<body>` under a configured secret and `t` is within the tolerance;
//! - `verify` agrees with `parse_signature_header` and `decode_event`;
//! - the same body, correctly signed (with `sign_header`) under either secret
//!   and with the header's timestamp, verifies exactly when that timestamp is
//!   within the tolerance, and then decodes as `decode_event` says;
//! - a one-byte change of the body, a changed timestamp or an unknown secret
//!   make that signed header fail with `signature_mismatch`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use webhooks::stripe::{
    decode_event, parse_signature_header, sign_header, StripeVerifier, DEFAULT_TOLERANCE_SECS, MAX_BODY_BYTES,
    MAX_SIGNATURES, SIGNATURE_HEADER,
};
use webhooks::{Verifier, VerifyError};

/// The fixed clock.
const NOW: i64 = 1_700_000_000;
/// The fixed secret list (a rotation in progress).
const SECRETS: [&str; 2] = ["whsec_fuzz_old", "whsec_fuzz_new"];
/// A secret that is not configured.
const STRANGER: &str = "whsec_fuzz_stranger";

fn verify(verifier: &StripeVerifier, header: &str, body: &[u8]) -> Result<webhooks::stripe::StripeEvent, VerifyError> {
    let lookup = |name: &str| (name == SIGNATURE_HEADER).then(|| header.to_owned());
    verifier.verify(&lookup, body, NOW)
}

/// The `v1` hex of `sign_header`'s output.
fn v1_of(signed: &str) -> [u8; 32] {
    parse_signature_header(signed).expect("sign_header output parses").v1[0]
}

fn within_tolerance(t: i64) -> bool {
    NOW.abs_diff(t) <= DEFAULT_TOLERANCE_SECS as u64
}

/// Every error must render, and carry a stable code and a 4xx/5xx status.
fn check_error(e: &VerifyError) {
    let _ = e.to_string();
    assert!(!e.code().is_empty());
    assert!(matches!(e.http_status(), 400 | 500));
}

fuzz_target!(|data: &[u8]| {
    let (header_bytes, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let header = String::from_utf8_lossy(header_bytes);
    let verifier = StripeVerifier::from_secret_list(&SECRETS.join(", "));

    // The pieces on their own.
    let parsed = parse_signature_header(&header);
    match &parsed {
        Ok(p) => {
            assert!(p.timestamp >= 0);
            assert!(!p.v1.is_empty() && p.v1.len() <= MAX_SIGNATURES);
        }
        Err(e) => {
            assert!(matches!(e, VerifyError::MalformedSignature(_)), "{e:?}");
            check_error(e);
        }
    }
    let decoded = decode_event(body);
    match &decoded {
        Ok(event) => {
            assert!(event.id.starts_with("evt_"));
            assert!(!event.event_type.is_empty());
            assert!(body.len() <= MAX_BODY_BYTES);
        }
        Err(e) => {
            assert!(matches!(e, VerifyError::InvalidPayload(_)), "{e:?}");
            check_error(e);
        }
    }

    // The fuzzer's own header: verification must agree with the pieces, and
    // anything accepted must carry a genuine signature.
    let result = verify(&verifier, &header, body);
    match &result {
        Ok(event) => {
            let p = parsed.as_ref().expect("a verified header parses");
            let genuine = SECRETS.iter().any(|s| p.v1.contains(&v1_of(&sign_header(s, p.timestamp, body))));
            assert!(genuine, "verified without a signature made with a configured secret");
            assert!(within_tolerance(p.timestamp), "verified outside the tolerance");
            assert_eq!(Ok(event), decoded.as_ref());
        }
        Err(e) => {
            check_error(e);
            if header.trim().is_empty() {
                assert_eq!(e, &VerifyError::MissingSignature { header: SIGNATURE_HEADER });
            } else if let Err(parse_error) = &parsed {
                assert_eq!(e, parse_error);
            }
        }
    }

    // No secret configured: everything is refused, as our fault (500).
    let unconfigured = StripeVerifier::from_secret_list(" , ");
    let e = verify(&unconfigured, &header, body).unwrap_err();
    assert_eq!(e, VerifyError::NoSecretConfigured);
    assert_eq!(e.http_status(), 500);

    // The same body, correctly signed: with the header's timestamp if it has
    // one (so the fuzzer steers it across the tolerance), else with now.
    if body.len() > MAX_BODY_BYTES {
        return;
    }
    let t = parsed.as_ref().map_or(NOW, |p| p.timestamp);
    for secret in SECRETS {
        let signed = sign_header(secret, t, body);
        let outcome = verify(&verifier, &signed, body);
        if within_tolerance(t) {
            assert!(verifier.verify_signature(&signed, body, NOW).is_ok(), "a correct signature was refused");
            assert_eq!(outcome, decoded.clone(), "a verified body must decode as decode_event says");
        } else {
            assert!(
                matches!(outcome, Err(VerifyError::TimestampOutOfTolerance { timestamp, .. }) if timestamp == t),
                "{outcome:?}"
            );
        }

        // During a rotation Stripe sends one `v1` per secret: a stranger's
        // signature next to a good one does not spoil it.
        let stranger = sign_header(STRANGER, t, body);
        let both = format!("{stranger},v1={}", hex(&v1_of(&signed)));
        assert_eq!(verifier.verify_signature(&both, body, NOW).is_ok(), within_tolerance(t));

        // Tampering: every one of these must be a signature mismatch, which
        // is checked before the timestamp.
        let mut tampered = body.to_vec();
        match tampered.len() {
            0 => tampered.push(data.len() as u8),
            n => tampered[data.len() % n] ^= 1 << (data.len() % 8),
        }
        if tampered.len() <= MAX_BODY_BYTES {
            assert_eq!(
                verifier.verify_signature(&signed, &tampered, NOW),
                Err(VerifyError::SignatureMismatch),
                "a one-byte change of the body still verified"
            );
        }
        if let Some(later) = t.checked_add(1) {
            let moved = format!("t={later},v1={}", hex(&v1_of(&signed)));
            assert_eq!(verifier.verify_signature(&moved, body, NOW), Err(VerifyError::SignatureMismatch));
        }
        assert_eq!(verifier.verify_signature(&stranger, body, NOW), Err(VerifyError::SignatureMismatch));
    }
});

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
