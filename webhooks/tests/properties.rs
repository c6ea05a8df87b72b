//! Properties over arbitrary input: nothing panics, and nothing verifies
//! without the secret.

use proptest::prelude::*;
use webhooks::stripe::{decode_event, parse_signature_header, sign_header, StripeVerifier, SIGNATURE_HEADER};
use webhooks::{Verifier, VerifyError};

const SECRET: &str = "whsec_prop_secret";

fn verify(
    verifier: &StripeVerifier,
    header: Option<String>,
    body: &[u8],
    now: i64,
) -> Result<webhooks::stripe::StripeEvent, VerifyError> {
    verifier.verify(&move |name: &str| if name == SIGNATURE_HEADER { header.clone() } else { None }, body, now)
}

/// Header-shaped strings: mostly `key=value` items with plausible keys and
/// hex-ish values, so that the generator gets past the parser's first checks.
fn header_like() -> impl Strategy<Value = String> {
    let key = prop_oneof![Just("t".to_owned()), Just("v1".to_owned()), Just("v0".to_owned()), "[a-z0-9 ]{0,3}"];
    let value =
        prop_oneof![any::<i64>().prop_map(|t| t.to_string()), "[0-9a-fA-F]{64}", "[0-9a-fA-F]{0,70}", ".{0,20}",];
    prop::collection::vec((key, value), 0..20)
        .prop_map(|items| items.into_iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","))
}

fn any_header() -> impl Strategy<Value = Option<String>> {
    prop_oneof![Just(None), any::<String>().prop_map(Some), header_like().prop_map(Some)]
}

fn any_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        Just(br#"{"id":"evt_1","type":"x","data":{"object":{}}}"#.to_vec()),
        "\\{\"id\":\"evt_[a-z0-9]{0,8}\",\"type\":\"[a-z._]{0,20}\",\"data\":\\{\"object\":.{0,40}\\}\\}"
            .prop_map(String::into_bytes),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Without the secret, no header (random, header-shaped, or honestly
    /// signed with another secret) makes any body verify.
    #[test]
    fn never_verifies_without_the_secret(
        header in any_header(),
        body in any_body(),
        now in prop_oneof![any::<i64>(), 1_600_000_000i64..1_900_000_000],
        wrong_secret in "[ -~]{0,40}",
        t in prop_oneof![any::<i64>(), 1_600_000_000i64..1_900_000_000],
    ) {
        let verifier = StripeVerifier::from_secret_list(SECRET);
        prop_assert!(verify(&verifier, header.clone(), &body, now).is_err());

        prop_assume!(wrong_secret.trim() != SECRET);
        let forged = sign_header(&wrong_secret, t, &body);
        prop_assert!(verify(&verifier, Some(forged), &body, now).is_err());
    }

    /// With no secret configured, nothing is ever accepted, even a header
    /// signed with an empty key.
    #[test]
    fn empty_secret_list_refuses_everything(header in any_header(), body in any_body(), now in any::<i64>()) {
        let verifier = StripeVerifier::from_secret_list(" , ");
        prop_assert_eq!(verify(&verifier, header, &body, now).unwrap_err(), VerifyError::NoSecretConfigured);
        let signed = sign_header("", now.max(0), &body);
        prop_assert_eq!(verify(&verifier, Some(signed), &body, now).unwrap_err(), VerifyError::NoSecretConfigured);
    }

    /// The parser and the decoder take any input without panicking, and every
    /// error maps to a known code and a 4xx.
    #[test]
    fn parsing_and_decoding_never_panic(header in any::<String>(), shaped in header_like(), body in any_body()) {
        for h in [&header, &shaped] {
            if let Err(e) = parse_signature_header(h) {
                prop_assert_eq!(e.code(), "malformed_signature");
            }
        }
        if let Err(e) = decode_event(&body) {
            prop_assert_eq!((e.code(), e.http_status()), ("invalid_payload", 400));
        }
    }

    /// What our sandbox signs, we verify, inside the tolerance; outside it
    /// the error is the timestamp, never a mismatch.
    #[test]
    fn signed_round_trip(
        t in 0i64..4_000_000_000,
        skew in -600i64..600,
        id in "evt_[A-Za-z0-9]{1,24}",
        rotated_first in any::<bool>(),
    ) {
        let body = format!(r#"{{"id":"{id}","type":"payment_intent.succeeded","data":{{"object":{{"id":"pi_1","object":"payment_intent"}}}}}}"#);
        let list = if rotated_first { format!("{SECRET},whsec_old") } else { format!("whsec_old,{SECRET}") };
        let verifier = StripeVerifier::from_secret_list(&list);
        let result = verify(&verifier, Some(sign_header(SECRET, t, body.as_bytes())), body.as_bytes(), t + skew);
        if skew.abs() <= 300 {
            prop_assert_eq!(result.map(|e| e.id), Ok(id));
        } else {
            prop_assert_eq!(result.map_err(|e| e.code()), Err("timestamp_out_of_tolerance"));
        }
    }

    /// Flipping any bit of the body or of the signature breaks verification.
    #[test]
    fn any_bit_flip_is_detected(body in prop::collection::vec(any::<u8>(), 1..256), pos in any::<prop::sample::Index>(), bit in 0u8..8, in_sig in any::<bool>()) {
        let now = 1_724_668_800;
        let verifier = StripeVerifier::from_secret_list(SECRET);
        let header = sign_header(SECRET, now, &body);
        let parsed = parse_signature_header(&header).unwrap();
        prop_assert!(verifier.verify_signature(&header, &body, now).is_ok());
        if in_sig {
            let mut sig = parsed.v1[0];
            sig[pos.index(32)] ^= 1 << bit;
            let tampered = format!("t={now},v1={}", hex_encode(&sig));
            prop_assert_eq!(verifier.verify_signature(&tampered, &body, now).unwrap_err(), VerifyError::SignatureMismatch);
        } else {
            let mut tampered = body.clone();
            tampered[pos.index(body.len())] ^= 1 << bit;
            prop_assert_eq!(verifier.verify_signature(&header, &tampered, now).unwrap_err(), VerifyError::SignatureMismatch);
        }
    }
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
