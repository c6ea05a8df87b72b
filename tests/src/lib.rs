//! Harness for the end-to-end tests: where the running stack is and how to
//! talk to it. `cargo xtask test` starts a throw-away stack and sets the
//! `E2E_*` variables; running these tests without it fails with a message
//! saying so, never silently passes.
//!
//! Every answer of the payments and marketplace Workers that goes through
//! [`get`], [`send`], [`send_with`] or [`send_raw`] is checked against
//! `docs/openapi.yaml` ([`openapi::check`]); an answer that breaks it fails
//! the test, naming the operation, the status, what is wrong and the body.

pub mod money;
pub mod openapi;
pub mod shop;

use std::time::Duration;

use serde_json::Value;

/// A Worker's base URL, e.g. `service_url("payments")`.
pub fn service_url(worker: &str) -> String {
    let var = format!("E2E_{}_URL", worker.to_uppercase().replace('-', "_"));
    std::env::var(&var).unwrap_or_else(|_| {
        panic!(
            "{var} is not set: run the end-to-end tests through `cargo xtask test`, which starts the stack they need"
        )
    })
}

/// A configured secret (`CHECKOUT_TOKEN`, `OPS_TOKEN`, ...).
pub fn secret(name: &str) -> String {
    std::env::var(format!("E2E_{name}"))
        .unwrap_or_else(|_| panic!("E2E_{name} is not set: run through `cargo xtask test`"))
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

/// The public API each checked service is found at, from the `E2E_*_URL`
/// variables (a service whose variable is unset is simply not checked), and
/// the path of `url` on it.
fn service_of(url: &str) -> Option<(&'static str, &str)> {
    openapi::SERVICES.iter().find_map(|service| {
        let var = format!("E2E_{}_URL", service.to_uppercase().replace('-', "_"));
        let base = std::env::var(var).ok().filter(|b| !b.is_empty())?;
        let rest = url.strip_prefix(base.trim_end_matches('/'))?;
        let path = match rest.chars().next() {
            None => "/",
            Some('/') => rest,
            Some('?' | '#') => "/",
            Some(_) => return None,
        };
        Some((*service, path))
    })
}

/// Checks an answer against docs/openapi.yaml (see [`openapi`]) and panics
/// with the details when it breaks it.
fn checked(method: &str, url: &str, reply: Reply) -> Reply {
    if let Some((service, path)) = service_of(url) {
        if let Err(problem) = openapi::check(service, method, path, reply.status, &reply.body) {
            let body = serde_json::to_string_pretty(&reply.body).unwrap_or_default();
            panic!("{method} {url}: the answer breaks docs/openapi.yaml\n{problem}\nbody ({}):\n{body}", reply.status);
        }
        openapi::record(service, method, path, reply.status);
    }
    reply
}

fn reply_of(mut response: ureq::http::Response<ureq::Body>) -> Reply {
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    Reply { status, body: serde_json::from_str(&text).unwrap_or(Value::String(text)) }
}

pub fn get(url: &str) -> Reply {
    let response = agent().get(url).call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    checked("GET", url, reply_of(response))
}

/// Sends `method` to `url` with an optional bearer token and JSON body.
pub fn send(method: &str, url: &str, token: Option<&str>, body: Option<&Value>) -> Reply {
    send_with(method, url, token, &[], body)
}

/// [`send`] with extra request headers, e.g. `("idempotency-key", key)`.
pub fn send_with(
    method: &str,
    url: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Reply {
    let mut all: Vec<(&str, String)> = headers.iter().map(|(k, v)| (*k, v.to_string())).collect();
    if let Some(token) = token {
        all.push(("authorization", format!("Bearer {token}")));
    }
    if body.is_some() {
        all.push(("content-type", "application/json".into()));
    }
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let headers: Vec<(&str, &str)> = all.iter().map(|(k, v)| (*k, v.as_str())).collect();
    send_raw(method, url, &headers, &payload)
}

/// Sends exactly these headers and these body bytes (a signed webhook, a
/// malformed body); the answer is checked like any other.
pub fn send_raw(method: &str, url: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut request = ureq::http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(body.to_string()).unwrap_or_else(|e| panic!("building {method} {url}: {e}"));
    let response = agent().run(request).unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    checked(method, url, reply_of(response))
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

/// A response with its headers and raw text, for protocol-level checks
/// (byte-for-byte replays, `Idempotent-Replayed`).
#[derive(Debug)]
pub struct RawReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub text: String,
    pub body: Value,
}

impl RawReply {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// `application/x-www-form-urlencoded`, as Stripe clients send it
/// (brackets in keys are percent-encoded like any other reserved byte).
pub fn form_encode(pairs: &[(&str, &str)]) -> String {
    fn encode(text: &str, out: &mut String) {
        for byte in text.bytes() {
            match byte {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(byte as char),
                b' ' => out.push('+'),
                _ => out.push_str(&format!("%{byte:02X}")),
            }
        }
    }
    let mut out = String::new();
    for (i, (key, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        encode(key, &mut out);
        out.push('=');
        encode(value, &mut out);
    }
    out
}

/// Sends `method` to `url` with an optional bearer token, extra headers and
/// a form body (`None`: no body), and returns the raw reply.
pub fn send_form(
    method: &str,
    url: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    form: Option<&[(&str, &str)]>,
) -> RawReply {
    let mut request = ureq::http::Request::builder().method(method).uri(url);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if form.is_some() {
        request = request.header("content-type", "application/x-www-form-urlencoded");
    }
    let payload = form.map(form_encode).unwrap_or_default();
    let request = request.body(payload).unwrap_or_else(|e| panic!("building {method} {url}: {e}"));
    let mut response = agent().run(request).unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or_default().to_string()))
        .collect();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
    RawReply { status, headers, text, body }
}

/// POSTs a form, Stripe style, optionally under an `Idempotency-Key`.
pub fn post_form(url: &str, token: &str, form: &[(&str, &str)], idempotency_key: Option<&str>) -> RawReply {
    let headers: Vec<(&str, &str)> = idempotency_key.map(|k| ("idempotency-key", k)).into_iter().collect();
    send_form("POST", url, Some(token), &headers, Some(form))
}
