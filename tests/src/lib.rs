//! Harness for the end-to-end tests: where the running stack is and how to
//! talk to it. `cargo xtask test` starts a throw-away stack and sets the
//! `E2E_*` variables; running these tests without it fails with a message
//! saying so, never silently passes.

use std::time::Duration;

use serde_json::Value;

/// A Worker's base URL, e.g. `service_url("payments")`.
pub fn service_url(worker: &str) -> String {
    let var = format!("E2E_{}_URL", worker.to_uppercase().replace('-', "_"));
    std::env::var(&var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the end-to-end tests through `cargo xtask test`, which starts the stack they need")
    })
}

/// A configured secret (`CHECKOUT_TOKEN`, `OPS_TOKEN`, ...).
pub fn secret(name: &str) -> String {
    std::env::var(format!("E2E_{name}")).unwrap_or_else(|_| panic!("E2E_{name} is not set: run through `cargo xtask test`"))
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        .http_status_as_error(false)
        .build()
        .into()
}

/// A response as the tests look at it: status and parsed JSON body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

pub fn get(url: &str) -> Reply {
    let mut response = agent().get(url).call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    Reply { status, body: serde_json::from_str(&text).unwrap_or(Value::String(text)) }
}

/// Sends `method` to `url` with an optional bearer token and JSON body.
pub fn send(method: &str, url: &str, token: Option<&str>, body: Option<&Value>) -> Reply {
    let agent = agent();
    let mut request = ureq::http::Request::builder().method(method).uri(url);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let request = request.body(payload).unwrap_or_else(|e| panic!("building {method} {url}: {e}"));
    let mut response = agent.run(request).unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    Reply { status, body: serde_json::from_str(&text).unwrap_or(Value::String(text)) }
}

pub fn post(url: &str, token: &str, body: &Value) -> Reply {
    send("POST", url, Some(token), Some(body))
}

/// A listing as the tests create it, overriding fields from `patch`.
pub fn listing_body(patch: Value) -> Value {
    let mut body = serde_json::json!({
        "seller_id": "sel_test",
        "seller_account": "acct_test_seller",
        "title": "Calm senior tabby looking for a quiet flat",
        "description": "Eleven years old, house-trained, loves naps in the sun.",
        "species": "cat",
        "breed": "tabby",
        "age_months": 132,
        "region": "berlin",
        "price": {"value": "120.00", "currency": "EUR"},
        "quantity": 1
    });
    if let (Some(target), Value::Object(patch)) = (body.as_object_mut(), patch) {
        for (key, value) in patch {
            target.insert(key, value);
        }
    }
    body
}

/// A fresh, unique purchase id for reservation tests.
pub fn fresh_purchase_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("pur_e2e{nanos}x{}", COUNTER.fetch_add(1, Ordering::SeqCst))
}
