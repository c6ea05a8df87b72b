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
