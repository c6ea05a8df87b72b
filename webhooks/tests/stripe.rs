//! Stripe signature verification and event decoding through the public API.

use webhooks::stripe::{
    decode_event, parse_signature_header, sign_header, StripeEvent, StripeVerifier, MAX_BODY_BYTES, SIGNATURE_HEADER,
};
use webhooks::{Verifier, VerifyError};

const SECRET: &str = "whsec_5f1c0e3a9b7d4e2f8a6c1b3d5e7f9a0b";
const NOW: i64 = 1_724_668_800;
const BODY: &[u8] = br#"{"id":"evt_1","type":"payment_intent.succeeded","created":1724668800,"data":{"object":{"id":"pi_1","object":"payment_intent","metadata":{"purchase_id":"pur_1"}}}}"#;

/// Runs `verify` with exactly one header present.
fn verify(verifier: &StripeVerifier, header: &str, body: &[u8], now: i64) -> Result<StripeEvent, VerifyError> {
    let header = header.to_owned();
    verifier.verify(&move |name: &str| (name == SIGNATURE_HEADER).then(|| header.clone()), body, now)
}

fn verify_err(verifier: &StripeVerifier, header: &str, body: &[u8], now: i64) -> VerifyError {
    match verify(verifier, header, body, now) {
        Ok(event) => panic!("accepted {header:?}: {event:?}"),
        Err(e) => e,
    }
}

fn hex_sig(secret: &str, t: i64, body: &[u8]) -> String {
    let header = sign_header(secret, t, body);
    header.split_once("v1=").map(|(_, sig)| sig.to_owned()).unwrap()
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/fixtures/{name}.json", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn assert_malformed(header: &str) {
    let verifier = StripeVerifier::from_secret_list(SECRET);
    let err = verify_err(&verifier, header, BODY, NOW);
    assert_eq!(err.code(), "malformed_signature", "{header:?} gave {err:?}");
    assert_eq!(err.http_status(), 400);
    assert!(parse_signature_header(header).is_err());
}

// ---- signatures -------------------------------------------------------------

#[test]
fn valid_signature_verifies_and_decodes() {
    let verifier = StripeVerifier::from_secret_list(SECRET);
    let event = verify(&verifier, &sign_header(SECRET, NOW, BODY), BODY, NOW).unwrap();
    assert_eq!(event.id, "evt_1");
    assert_eq!(event.event_type, "payment_intent.succeeded");
    assert_eq!(event.purchase_id.as_deref(), Some("pur_1"));
}

#[test]
fn sign_header_format() {
    let header = sign_header(SECRET, NOW, BODY);
    let parsed = parse_signature_header(&header).unwrap();
    assert!(header.starts_with("t=1724668800,v1="));
    assert_eq!(header.len(), "t=1724668800,v1=".len() + 64);
    assert_eq!(parsed.timestamp, NOW);
    assert_eq!(parsed.v1.len(), 1);
}

#[test]
fn second_secret_of_rotated_list_matches() {
    let verifier = StripeVerifier::from_secret_list(" whsec_old , ,whsec_new,");
    assert!(verify(&verifier, &sign_header("whsec_new", NOW, BODY), BODY, NOW).is_ok());
    assert!(verify(&verifier, &sign_header("whsec_old", NOW, BODY), BODY, NOW).is_ok());
    let err = verify_err(&verifier, &sign_header("whsec_other", NOW, BODY), BODY, NOW);
    assert_eq!(err, VerifyError::SignatureMismatch);
}

#[test]
fn secrets_are_trimmed_but_otherwise_used_whole() {
    let verifier = StripeVerifier::from_secret_list("  whsec_abc  ");
    assert!(verify(&verifier, &sign_header("whsec_abc", NOW, BODY), BODY, NOW).is_ok());
    // the `whsec_` prefix is part of the key
    assert_eq!(verify_err(&verifier, &sign_header("abc", NOW, BODY), BODY, NOW).code(), "signature_mismatch");
}

#[test]
fn one_valid_v1_among_several_suffices() {
    let verifier = StripeVerifier::from_secret_list(SECRET);
    let good = hex_sig(SECRET, NOW, BODY);
    let bad1 = hex_sig("whsec_old", NOW, BODY);
    let bad2 = "0".repeat(64);
    for header in [
        format!("t={NOW},v1={bad1},v1={good},v1={bad2}"),
        format!("t={NOW},v1={good},v1={bad1}"),
        format!("v1={bad1},v0={bad2},v1={good},t={NOW}"),
        format!("t={NOW}, v1={}, v1={bad1}", good.to_uppercase()),
    ] {
        assert!(verify(&verifier, &header, BODY, NOW).is_ok(), "{header}");
    }
}

#[test]
fn v0_and_unknown_schemes_are_ignored() {
    let verifier = StripeVerifier::from_secret_list(SECRET);
    let good = hex_sig(SECRET, NOW, BODY);
    let header = format!("t={NOW},v1={good},v0=not-even-hex,v2=zzz,flag");
    assert!(verify(&verifier, &header, BODY, NOW).is_ok());
    // a valid signature under v0 does not count
    let err = verify_err(&verifier, &format!("t={NOW},v0={good},v1={}", "a".repeat(64)), BODY, NOW);
    assert_eq!(err, VerifyError::SignatureMismatch);
}

#[test]
fn tampered_body_is_refused() {
    let verifier = StripeVerifier::from_secret_list(SECRET);
    let header = sign_header(SECRET, NOW, BODY);
    let tampered = String::from_utf8(BODY.to_vec()).unwrap().replace("pur_1", "pur_2");
    assert_eq!(verify_err(&verifier, &header, tampered.as_bytes(), NOW), VerifyError::SignatureMismatch);
    let mut extra = BODY.to_vec();
    extra.push(b'\n');
    assert_eq!(verify_err(&verifier, &header, &extra, NOW), VerifyError::SignatureMismatch);
}

#[test]
fn tampered_timestamp_is_refused() {
    let verifier = StripeVerifier::from_secret_list(SECRET);
    let sig = hex_sig(SECRET, NOW, BODY);
    assert_eq!(verify_err(&verifier, &format!("t={},v1={sig}", NOW + 1), BODY, NOW), VerifyError::SignatureMismatch);
}

#[test]
fn wrong_secret_is_refused() {
    let verifier = StripeVerifier::from_secret_list(SECRET);
    let err = verify_err(&verifier, &sign_header("whsec_attacker", NOW, BODY), BODY, NOW);
    assert_eq!(err, VerifyError::SignatureMismatch);
    assert_eq!((err.code(), err.http_status()), ("signature_mismatch", 400));
}

#[test]
fn signature_is_checked_before_the_json() {
    // an unsigned non-JSON body is a signature problem, not a payload one
    let verifier = StripeVerifier::from_secret_list(SECRET);
    let header = sign_header(SECRET, NOW, BODY);
    assert_eq!(verify_err(&verifier, &header, b"not json", NOW), VerifyError::SignatureMismatch);
    // the same body, signed, reaches the decoder
    let header = sign_header(SECRET, NOW, b"not json");
    assert_eq!(verify_err(&verifier, &header, b"not json", NOW).code(), "invalid_payload");
}

// ---- tolerance --------------------------------------------------------------

#[test]
fn timestamp_older_than_tolerance_is_refused() {
    let verifier = StripeVerifier::from_secret_list(SECRET);
    let t = NOW - 301;
    let err = verify_err(&verifier, &sign_header(SECRET, t, BODY), BODY, NOW);
    assert_eq!(err, VerifyError::TimestampOutOfTolerance { timestamp: t, now: NOW, tolerance_secs: 300 });
    assert_eq!((err.code(), err.http_status()), ("timestamp_out_of_tolerance", 400));
}

#[test]
fn timestamp_further_in_the_future_than_tolerance_is_refused() {
    let verifier = StripeVerifier::from_secret_list(SECRET);
    let err = verify_err(&verifier, &sign_header(SECRET, NOW + 301, BODY), BODY, NOW);
    assert_eq!(err.code(), "timestamp_out_of_tolerance");
}

#[test]
fn tolerance_edge_is_inclusive_both_ways() {
    let verifier = StripeVerifier::from_secret_list(SECRET);
    assert!(verify(&verifier, &sign_header(SECRET, NOW - 300, BODY), BODY, NOW).is_ok());
    assert!(verify(&verifier, &sign_header(SECRET, NOW + 300, BODY), BODY, NOW).is_ok());
    assert_eq!(
        verify_err(&verifier, &sign_header(SECRET, NOW - 301, BODY), BODY, NOW).code(),
        "timestamp_out_of_tolerance"
    );
    assert_eq!(
        verify_err(&verifier, &sign_header(SECRET, NOW + 301, BODY), BODY, NOW).code(),
        "timestamp_out_of_tolerance"
    );
}

#[test]
fn custom_tolerance() {
    let verifier = StripeVerifier::from_secret_list(SECRET).with_tolerance_secs(10);
    assert_eq!(verifier.tolerance_secs(), 10);
    assert!(verify(&verifier, &sign_header(SECRET, NOW - 10, BODY), BODY, NOW).is_ok());
    assert!(verify(&verifier, &sign_header(SECRET, NOW + 11, BODY), BODY, NOW).is_err());

    // negative clamps to 0: only the exact second, never "no check"
    let exact = StripeVerifier::from_secret_list(SECRET).with_tolerance_secs(-5);
    assert_eq!(exact.tolerance_secs(), 0);
    assert!(verify(&exact, &sign_header(SECRET, NOW, BODY), BODY, NOW).is_ok());
    assert!(verify(&exact, &sign_header(SECRET, NOW - 1, BODY), BODY, NOW).is_err());
}

#[test]
fn extreme_clocks_do_not_overflow() {
    let verifier = StripeVerifier::from_secret_list(SECRET).with_tolerance_secs(i64::MAX);
    assert!(verify(&verifier, &sign_header(SECRET, i64::MAX, BODY), BODY, i64::MIN).is_err());
    assert!(verify(&verifier, &sign_header(SECRET, 0, BODY), BODY, i64::MAX).is_ok());
    let strict = StripeVerifier::from_secret_list(SECRET);
    assert_eq!(
        verify_err(&strict, &sign_header(SECRET, i64::MAX, BODY), BODY, i64::MIN).code(),
        "timestamp_out_of_tolerance"
    );
}

// ---- malformed headers --------------------------------------------------------

#[test]
fn header_without_t_is_malformed() {
    assert_malformed(&format!("v1={}", "a".repeat(64)));
    assert_malformed(&format!("v1={},x=1", "a".repeat(64)));
    // an empty value is what the edge sees for an empty header: the verifier
    // calls that missing, the parser malformed
    assert_eq!(parse_signature_header("").unwrap_err().code(), "malformed_signature");
}

#[test]
fn header_with_two_t_is_malformed() {
    let sig = hex_sig(SECRET, NOW, BODY);
    assert_malformed(&format!("t={NOW},t={NOW},v1={sig}"));
    assert_malformed(&format!("t={NOW},v1={sig},t={}", NOW + 1));
}

#[test]
fn non_numeric_t_is_malformed() {
    let sig = "a".repeat(64);
    for t in ["", "abc", "12a", "-5", "+5", "1.5", "1e9", "99999999999999999999", "١٢٣"] {
        assert_malformed(&format!("t={t},v1={sig}"));
    }
}

#[test]
fn header_without_v1_is_malformed() {
    assert_malformed(&format!("t={NOW}"));
    assert_malformed(&format!("t={NOW},v0={}", "a".repeat(64)));
    assert_malformed(&format!("t={NOW},v1"));
}

#[test]
fn v1_that_is_not_64_hex_is_malformed() {
    for sig in [
        "a".repeat(63),
        "a".repeat(65),
        "g".repeat(64),
        String::new(),
        format!("{}é", "a".repeat(62)),
        format!("0x{}", "a".repeat(62)),
    ] {
        assert_malformed(&format!("t={NOW},v1={sig}"));
    }
    // one bad v1 poisons the header even next to a good one
    assert_malformed(&format!("t={NOW},v1={},v1=zz", hex_sig(SECRET, NOW, BODY)));
}

#[test]
fn more_than_16_signatures_is_malformed() {
    let good = hex_sig(SECRET, NOW, BODY);
    let verifier = StripeVerifier::from_secret_list(SECRET);
    let sixteen = format!("t={NOW},{}", vec![format!("v1={good}"); 16].join(","));
    assert!(verify(&verifier, &sixteen, BODY, NOW).is_ok());
    assert_malformed(&format!("t={NOW},{}", vec![format!("v1={good}"); 17].join(",")));
    // v0 and unknown schemes count too
    assert_malformed(&format!("t={NOW},v1={good},{}", vec!["v0=ab"; 16].join(",")));
}

#[test]
fn header_over_4096_bytes_is_malformed() {
    let good = hex_sig(SECRET, NOW, BODY);
    let base = format!("t={NOW},v1={good},x=");
    let exact = format!("{base}{}", "y".repeat(4096 - base.len()));
    assert_eq!(exact.len(), 4096);
    assert!(verify(&StripeVerifier::from_secret_list(SECRET), &exact, BODY, NOW).is_ok());
    assert_malformed(&format!("{exact}y"));
}

#[test]
fn missing_header_is_refused() {
    let verifier = StripeVerifier::from_secret_list(SECRET);
    let err = verifier.verify(&|_: &str| None, BODY, NOW).unwrap_err();
    assert_eq!(err, VerifyError::MissingSignature { header: "stripe-signature" });
    assert_eq!((err.code(), err.http_status()), ("missing_signature", 400));
    // the verifier looks the header up by its lowercase name only
    let header = sign_header(SECRET, NOW, BODY);
    let err =
        verifier.verify(&|name: &str| (name == "Stripe-Signature").then(|| header.clone()), BODY, NOW).unwrap_err();
    assert_eq!(err.code(), "missing_signature");
    assert_eq!(verify_err(&verifier, "  ", BODY, NOW).code(), "missing_signature");
}

#[test]
fn empty_secret_list_never_accepts() {
    for list in ["", " ", ",", " , ,"] {
        let verifier = StripeVerifier::from_secret_list(list);
        assert!(!verifier.is_configured());
        for header in [sign_header("", NOW, BODY), sign_header(list, NOW, BODY), String::new()] {
            let err = verify_err(&verifier, &header, BODY, NOW);
            assert_eq!(err, VerifyError::NoSecretConfigured);
            assert_eq!((err.code(), err.http_status()), ("no_secret_configured", 500));
        }
        assert_eq!(verifier.verify(&|_: &str| None, BODY, NOW).unwrap_err(), VerifyError::NoSecretConfigured);
    }
}

#[test]
fn oversized_body_is_invalid_payload() {
    let verifier = StripeVerifier::from_secret_list(SECRET);
    let body = vec![b' '; MAX_BODY_BYTES + 1];
    let err = verify_err(&verifier, &sign_header(SECRET, NOW, &body), &body, NOW);
    assert_eq!(err.code(), "invalid_payload");
    assert_eq!(decode_event(&body).unwrap_err().code(), "invalid_payload");
}

#[test]
fn debug_output_hides_secrets() {
    let verifier = StripeVerifier::from_secret_list(SECRET);
    let debug = format!("{verifier:?}");
    assert!(!debug.contains("whsec"), "{debug}");
    assert!(debug.contains("secrets: 1"), "{debug}");
}

#[test]
fn error_codes_and_statuses() {
    let cases = [
        (VerifyError::MissingSignature { header: "stripe-signature" }, "missing_signature", 400),
        (VerifyError::MalformedSignature("x".into()), "malformed_signature", 400),
        (
            VerifyError::TimestampOutOfTolerance { timestamp: 0, now: 0, tolerance_secs: 0 },
            "timestamp_out_of_tolerance",
            400,
        ),
        (VerifyError::SignatureMismatch, "signature_mismatch", 400),
        (VerifyError::InvalidPayload("x".into()), "invalid_payload", 400),
        (VerifyError::NoSecretConfigured, "no_secret_configured", 500),
    ];
    for (err, code, status) in cases {
        assert_eq!((err.code(), err.http_status()), (code, status), "{err}");
    }
}

// ---- decoding ---------------------------------------------------------------

#[test]
fn decode_amount_capturable_updated() {
    let event = decode_event(&fixture("payment_intent.amount_capturable_updated")).unwrap();
    assert_eq!(
        event,
        StripeEvent {
            id: "evt_3PqRsT2eZvKYlo2C0abcDEF1".into(),
            event_type: "payment_intent.amount_capturable_updated".into(),
            created: 1_724_668_800,
            object_id: Some("pi_3PqRsT2eZvKYlo2C0xyzABC9".into()),
            object_type: Some("payment_intent".into()),
            payment_intent: Some("pi_3PqRsT2eZvKYlo2C0xyzABC9".into()),
            purchase_id: Some("pur_01J6A7Z9Q4".into()),
        }
    );
}

#[test]
fn decode_payment_intent_succeeded() {
    let event = decode_event(&fixture("payment_intent.succeeded")).unwrap();
    assert_eq!(event.id, "evt_3PqRsT2eZvKYlo2C0abcDEF2");
    assert_eq!(event.event_type, "payment_intent.succeeded");
    assert_eq!(event.created, 1_724_755_200);
    assert_eq!(event.object_type.as_deref(), Some("payment_intent"));
    assert_eq!(event.payment_intent.as_deref(), Some("pi_3PqRsT2eZvKYlo2C0xyzABC9"));
    assert_eq!(event.purchase_id.as_deref(), Some("pur_01J6A7Z9Q4"));
}

#[test]
fn decode_charge_refunded() {
    let event = decode_event(&fixture("charge.refunded")).unwrap();
    assert_eq!(
        event,
        StripeEvent {
            id: "evt_3PqRsT2eZvKYlo2C0abcDEF3".into(),
            event_type: "charge.refunded".into(),
            created: 1_724_841_600,
            object_id: Some("ch_3PqRsT2eZvKYlo2C0chg0001".into()),
            object_type: Some("charge".into()),
            payment_intent: Some("pi_3PqRsT2eZvKYlo2C0xyzABC9".into()),
            purchase_id: Some("pur_01J6A7Z9Q4".into()),
        }
    );
}

#[test]
fn decode_transfer_created() {
    let event = decode_event(&fixture("transfer.created")).unwrap();
    assert_eq!(
        event,
        StripeEvent {
            id: "evt_1PqRsU2eZvKYlo2CtrfEVT04".into(),
            event_type: "transfer.created".into(),
            created: 1_724_755_260,
            object_id: Some("tr_1PqRsU2eZvKYlo2CtrAns001".into()),
            object_type: Some("transfer".into()),
            payment_intent: None,
            purchase_id: Some("pur_01J6A7Z9Q4".into()),
        }
    );
}

#[test]
fn fixtures_verify_end_to_end() {
    let verifier = StripeVerifier::from_secret_list(SECRET);
    for name in
        ["payment_intent.amount_capturable_updated", "payment_intent.succeeded", "charge.refunded", "transfer.created"]
    {
        let body = fixture(name);
        let event = verify(&verifier, &sign_header(SECRET, NOW, &body), &body, NOW + 5).unwrap();
        assert_eq!(event.event_type, name);
    }
}

#[test]
fn purchase_id_falls_back_to_transfer_group() {
    let body = br#"{"id":"evt_1","type":"transfer.created","data":{"object":{"id":"tr_1","object":"transfer","metadata":{},"transfer_group":"pur_9"}}}"#;
    let event = decode_event(body).unwrap();
    assert_eq!(event.purchase_id.as_deref(), Some("pur_9"));
    assert_eq!(event.created, 0, "absent `created` reads as 0");
    let body = br#"{"id":"evt_1","type":"transfer.created","data":{"object":{"metadata":{"purchase_id":""},"transfer_group":"pur_9"}}}"#;
    assert_eq!(decode_event(body).unwrap().purchase_id.as_deref(), Some("pur_9"));
    let body = br#"{"id":"evt_1","type":"x","data":{"object":{}}}"#;
    let event = decode_event(body).unwrap();
    assert_eq!((event.object_id, event.object_type, event.payment_intent, event.purchase_id), (None, None, None, None));
}

#[test]
fn expanded_payment_intent_on_a_refund() {
    let body = br#"{"id":"evt_1","type":"charge.refund.updated","data":{"object":{"id":"re_1","object":"refund","payment_intent":{"id":"pi_7","object":"payment_intent"}}}}"#;
    assert_eq!(decode_event(body).unwrap().payment_intent.as_deref(), Some("pi_7"));
}

#[test]
fn decode_rejects_what_is_not_an_event() {
    let cases: &[(&[u8], &str)] = &[
        (b"", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1,2]", "not a JSON object"),
        (b"null", "not a JSON object"),
        (br#"{"type":"x","data":{"object":{}}}"#, "`id`"),
        (br#"{"id":7,"type":"x","data":{"object":{}}}"#, "`id`"),
        (br#"{"id":"pi_1","type":"x","data":{"object":{}}}"#, "`evt_`"),
        (br#"{"id":"evt_1","data":{"object":{}}}"#, "`type`"),
        (br#"{"id":"evt_1","type":["x"],"data":{"object":{}}}"#, "`type`"),
        (br#"{"id":"evt_1","type":"x"}"#, "`data.object`"),
        (br#"{"id":"evt_1","type":"x","data":{}}"#, "`data.object`"),
        (br#"{"id":"evt_1","type":"x","data":{"object":"pi_1"}}"#, "`data.object`"),
        (br#"{"id":"evt_1","type":"x","data":[{"object":{}}]}"#, "`data.object`"),
    ];
    for (body, needle) in cases {
        let err = decode_event(body).unwrap_err();
        assert_eq!(err.code(), "invalid_payload");
        assert!(err.to_string().contains(needle), "{:?}: {err}", String::from_utf8_lossy(body));
    }
}

#[test]
fn deeply_nested_json_does_not_overflow() {
    let mut body = b"{\"id\":\"evt_1\",\"type\":\"x\",\"data\":{\"object\":{\"a\":".to_vec();
    body.extend(std::iter::repeat_n(b'[', 100_000));
    assert_eq!(decode_event(&body).unwrap_err().code(), "invalid_payload");
}

#[test]
fn event_round_trips_through_serde() {
    let event = decode_event(&fixture("charge.refunded")).unwrap();
    let json = serde_json::to_string(&event).unwrap();
    assert_eq!(serde_json::from_str::<StripeEvent>(&json).unwrap(), event);
}
