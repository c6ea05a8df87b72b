//! The purchase flow as the e2e tests and drills drive it: listings, checkout,
//! buyer and operator commands, and the provider's ledger, on the test stack.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{listing_body, post, secret, send, send_with, service_url, Reply};

pub fn payments() -> String {
    service_url("payments")
}

pub fn checkout_token() -> String {
    secret("CHECKOUT_TOKEN")
}

pub fn ops_token() -> String {
    secret("OPS_TOKEN")
}

pub fn stripe_key() -> String {
    secret("STRIPE_SECRET_KEY")
}

/// A string no other test uses (idempotency keys, names).
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{prefix}-{nanos}-{}", COUNTER.fetch_add(1, Ordering::SeqCst))
}

/// Creates a listing ([`listing_body`] with `patch` applied); returns its id.
pub fn create_listing(patch: Value) -> String {
    let reply = post(&format!("{}/v1/listings", service_url("marketplace")), &ops_token(), &listing_body(patch));
    assert_eq!(reply.status, 201, "{:?}", reply.body);
    reply.body["id"].as_str().expect("listing id").to_string()
}

pub fn listing(id: &str) -> Value {
    let reply = send("GET", &format!("{}/v1/listings/{id}", service_url("marketplace")), None, None);
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    reply.body
}

/// `POST /v1/purchases` with an Idempotency-Key.
pub fn checkout(key: &str, body: &Value) -> Reply {
    send_with(
        "POST",
        &format!("{}/v1/purchases", payments()),
        Some(&checkout_token()),
        &[("idempotency-key", key)],
        Some(body),
    )
}

/// A checkout body for one unit.
pub fn order(listing_id: &str, buyer_id: &str, payment_method: &str) -> Value {
    json!({ "listing_id": listing_id, "buyer_id": buyer_id, "quantity": 1, "payment_method": payment_method })
}

pub fn purchase(id: &str) -> Value {
    let reply = send("GET", &format!("{}/v1/purchases/{id}", payments()), Some(&checkout_token()), None);
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    reply.body
}

pub fn buyer(id: &str, action: &str) -> Reply {
    send("POST", &format!("{}/v1/purchases/{id}/{action}", payments()), Some(&checkout_token()), None)
}

pub fn operator(id: &str, command: &str, body: Option<&Value>) -> Reply {
    send("POST", &format!("{}/v1/ops/purchases/{id}/{command}", payments()), Some(&ops_token()), body)
}

/// The sandbox provider's ledger for one purchase.
pub fn ledger(purchase_id: &str) -> Value {
    let url = format!("{}/_sandbox/ledger?purchase_id={purchase_id}", service_url("sandbox-psp"));
    let reply = send("GET", &url, Some(&stripe_key()), None);
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    reply.body
}

const FINISHED: [&str; 4] = ["completed", "refunded", "cancelled", "needs_attention"];

/// Polls until the purchase is in one of `states`; fails at once if it
/// finishes in another one, or after `within`.
pub fn wait_until(id: &str, states: &[&str], within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let p = purchase(id);
        let state = p["state"].as_str().unwrap_or_default();
        if states.contains(&state) {
            return p;
        }
        if FINISHED.contains(&state) || Instant::now() > deadline {
            panic!("purchase {id} is `{state}`, expected one of {states:?}:\n{p:#}");
        }
        std::thread::sleep(Duration::from_millis(150));
    }
}
