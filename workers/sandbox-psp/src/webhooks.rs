//! Webhook delivery as Stripe does it: the event JSON POSTed to the endpoint
//! with a `Stripe-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
//! "<t>." + body>` header, signed at delivery time; any non-2xx or network
//! error is retried with exponential backoff, then given up.
//!
//! The schedule and the signature are pure and tested here; the Durable
//! Object's alarm performs the attempts (`durable.rs`).

/// Attempts per delivery before giving up.
pub const MAX_ATTEMPTS: u32 = 25;
/// Longest wait between two attempts.
pub const MAX_BACKOFF_MS: u64 = 60_000;
pub const DEFAULT_RETRY_BASE_MS: u64 = 1_000;
/// How long one attempt may take before it counts as a network error.
pub const ATTEMPT_TIMEOUT_MS: u64 = 10_000;

/// `t=<timestamp>,v1=<hex hmac-sha256 of "<timestamp>." + payload>`: the
/// `webhooks` crate's signer, the counterpart of the verifier the payments
/// Worker runs.
pub use ::webhooks::stripe::sign_header;

/// The signing secret: the first of the comma-separated `STRIPE_WEBHOOK_SECRET`
/// (the others are older secrets the receiver still accepts while rotating).
pub fn first_secret(configured: &str) -> Option<&str> {
    configured.split(',').map(str::trim).find(|s| !s.is_empty())
}

/// `WEBHOOK_RETRY_BASE_MS`, or the default when unset or not a positive integer.
pub fn retry_base_ms(configured: Option<&str>) -> u64 {
    configured.and_then(|v| v.trim().parse::<u64>().ok()).filter(|&ms| ms > 0).unwrap_or(DEFAULT_RETRY_BASE_MS)
}

/// The wait after failed attempt number `attempt` (1-based): base, 2×base,
/// 4×base, ... capped at 60 s.
pub fn backoff_ms(base_ms: u64, attempt: u32) -> u64 {
    let factor = 1u64.checked_shl(attempt.saturating_sub(1)).unwrap_or(u64::MAX);
    base_ms.saturating_mul(factor).min(MAX_BACKOFF_MS)
}

/// How one attempt went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    /// Chaos: the attempt was not sent at all.
    Dropped,
    /// The endpoint answered with this HTTP status.
    Status(u16),
    /// No answer (refused, reset, timed out, not configured).
    Network(String),
}

impl AttemptResult {
    pub fn delivered(&self) -> bool {
        matches!(self, AttemptResult::Status(s) if (200..300).contains(s))
    }
}

/// A delivery's state after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Delivered,
    /// Retry at this time (ms).
    RetryAt(i64),
    /// Out of attempts.
    GiveUp,
}

pub fn after_attempt(attempt: u32, result: &AttemptResult, now_ms: i64, base_ms: u64) -> Next {
    if result.delivered() {
        Next::Delivered
    } else if attempt >= MAX_ATTEMPTS {
        Next::GiveUp
    } else {
        Next::RetryAt(now_ms + backoff_ms(base_ms, attempt) as i64)
    }
}

#[cfg(target_arch = "wasm32")]
pub use send::post;

#[cfg(target_arch = "wasm32")]
mod send {
    use std::time::Duration;

    use futures_util::future::{select, Either};
    use worker::{AbortController, Delay, Fetch, Headers, Method, Request, RequestInit};

    use super::{AttemptResult, ATTEMPT_TIMEOUT_MS};

    /// POSTs `body` to `url` with the signature header, within the attempt timeout.
    pub async fn post(url: &str, signature: Option<&str>, body: &str) -> AttemptResult {
        let headers = Headers::new();
        let set = |k: &str, v: &str| headers.set(k, v).map_err(|e| AttemptResult::Network(format!("header {k}: {e}")));
        let prepared = (|| {
            set("content-type", "application/json; charset=utf-8")?;
            set("user-agent", "Stripe/1.0 (+https://stripe.com/docs/webhooks)")?;
            set("cache-control", "no-cache")?;
            if let Some(signature) = signature {
                set("stripe-signature", signature)?;
            }
            Ok(())
        })();
        if let Err(err) = prepared {
            return err;
        }
        let mut init = RequestInit::new();
        init.with_method(Method::Post).with_headers(headers).with_body(Some(body.into()));
        let request = match Request::new_with_init(url, &init) {
            Ok(request) => request,
            Err(e) => return AttemptResult::Network(format!("invalid webhook URL {url}: {e}")),
        };
        let controller = AbortController::default();
        let signal = controller.signal();
        let fetch = Fetch::Request(request);
        let sending = Box::pin(fetch.send_with_signal(&signal));
        let timeout = Box::pin(Delay::from(Duration::from_millis(ATTEMPT_TIMEOUT_MS)));
        let outcome = select(sending, timeout).await;
        match outcome {
            Either::Left((Ok(mut response), _)) => {
                // Read the body so the connection is released; its content does not matter.
                let _ = response.text().await;
                AttemptResult::Status(response.status_code())
            }
            Either::Left((Err(e), _)) => AttemptResult::Network(e.to_string()),
            Either::Right(((), _)) => {
                controller.abort();
                AttemptResult::Network(format!("no answer within {ATTEMPT_TIMEOUT_MS} ms"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_over_timestamp_dot_payload() {
        // Independently computed: printf '1700000000.{"id":"evt_1"}' | openssl dgst -sha256 -hmac whsec_test
        let header = sign_header("whsec_test", 1_700_000_000, br#"{"id":"evt_1"}"#);
        assert!(header.starts_with("t=1700000000,v1="), "{header}");
        let hex = header.trim_start_matches("t=1700000000,v1=");
        assert_eq!(hex.len(), 64);
        assert_eq!(hex, "c89214b5b5da833daed6f0b8c5bb6bd58cea9022bd80ccc78230f3942d632925");
        assert_ne!(sign_header("whsec_other", 1_700_000_000, br#"{"id":"evt_1"}"#), header);
        assert_ne!(sign_header("whsec_test", 1_700_000_001, br#"{"id":"evt_1"}"#)[13..], header[13..]);
    }

    /// What the sandbox sends is what the payments Worker accepts: each
    /// event type, signed with the first secret, verifies against the whole
    /// list and names its purchase.
    #[test]
    fn sandbox_events_verify_and_decode_with_the_payments_verifier() {
        use ::webhooks::stripe::StripeVerifier;
        use ::webhooks::Verifier;

        use crate::api::{execute, Ctx, Route};
        use crate::form::decode;
        use crate::objects::event_json;
        use crate::store::MemStore;

        let mut store = MemStore::default();
        let mut n = 0;
        let mut ids = |p: &str| {
            n += 1;
            format!("{p}_{n}")
        };
        let mut ctx = Ctx { now: 1_700_000_000, ids: &mut ids };
        let mut run = |ctx: &mut Ctx<'_>, method: &str, path: &[&str], body: &str| {
            let route = Route::parse(method, path).unwrap();
            execute(&mut store, ctx, &route, decode(body.as_bytes()).unwrap()).unwrap_or_else(|_| panic!("{body}"))
        };
        let hold = run(&mut ctx, "POST", &["payment_intents"], "amount=500&currency=eur&payment_method=pm_card_visa&capture_method=manual&confirm=true&transfer_group=pur_9&metadata[purchase_id]=pur_9");
        let pi = hold.body["id"].as_str().unwrap().to_string();
        let capture = run(&mut ctx, "POST", &["payment_intents", &pi, "capture"], "");
        let refund = run(&mut ctx, "POST", &["refunds"], &format!("payment_intent={pi}&amount=100"));
        let transfer =
            run(&mut ctx, "POST", &["transfers"], "amount=400&currency=eur&destination=acct_1&transfer_group=pur_9");
        let declined = run(
            &mut ctx,
            "POST",
            &["payment_intents"],
            "amount=5&currency=eur&payment_method=pm_card_chargeDeclined&confirm=true&metadata[purchase_id]=pur_9",
        );
        let verifier = StripeVerifier::from_secret_list(" whsec_old , whsec_new");
        let secret = first_secret("whsec_new,whsec_old").unwrap();
        for outcome in [hold, capture, refund, transfer, declined] {
            let event = &outcome.events[0];
            let body = event_json("evt_1", event.kind, 1_700_000_000, &event.object, Some("req_1"), None).to_string();
            let header = sign_header(secret, 1_700_000_100, body.as_bytes());
            let lookup = |name: &str| (name == "stripe-signature").then(|| header.clone());
            let decoded = verifier.verify(&lookup, body.as_bytes(), 1_700_000_100).expect(event.kind);
            assert_eq!(decoded.event_type, event.kind);
            assert_eq!(decoded.purchase_id.as_deref(), Some("pur_9"), "{}", event.kind);
            if event.kind != "transfer.created" {
                assert_eq!(
                    decoded.payment_intent.as_deref().map(|p| p.starts_with("pi_")),
                    Some(true),
                    "{}",
                    event.kind
                );
            }
        }
    }

    #[test]
    fn the_first_configured_secret_signs() {
        assert_eq!(first_secret("whsec_a,whsec_b"), Some("whsec_a"));
        assert_eq!(first_secret(" , whsec_b"), Some("whsec_b"));
        assert_eq!(first_secret(""), None);
    }

    #[test]
    fn backoff_doubles_from_the_base_and_caps_at_a_minute() {
        assert_eq!(
            (1..=8).map(|a| backoff_ms(1_000, a)).collect::<Vec<_>>(),
            vec![1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000]
        );
        assert_eq!(backoff_ms(50, 1), 50);
        assert_eq!(backoff_ms(1_000, 200), 60_000);
        assert_eq!(retry_base_ms(Some("250")), 250);
        assert_eq!(retry_base_ms(Some("0")), 1_000);
        assert_eq!(retry_base_ms(Some("soon")), 1_000);
        assert_eq!(retry_base_ms(None), 1_000);
    }

    #[test]
    fn attempts_retry_until_the_25th_then_give_up() {
        assert_eq!(after_attempt(1, &AttemptResult::Status(200), 0, 1_000), Next::Delivered);
        assert_eq!(after_attempt(1, &AttemptResult::Status(204), 0, 1_000), Next::Delivered);
        assert_eq!(after_attempt(1, &AttemptResult::Status(500), 0, 1_000), Next::RetryAt(1_000));
        assert_eq!(after_attempt(3, &AttemptResult::Status(301), 10, 1_000), Next::RetryAt(4_010));
        assert_eq!(after_attempt(1, &AttemptResult::Dropped, 0, 1_000), Next::RetryAt(1_000));
        assert_eq!(after_attempt(24, &AttemptResult::Network("refused".into()), 0, 1_000), Next::RetryAt(60_000));
        assert_eq!(after_attempt(25, &AttemptResult::Status(500), 0, 1_000), Next::GiveUp);
        assert_eq!(after_attempt(25, &AttemptResult::Status(200), 0, 1_000), Next::Delivered);
    }
}
