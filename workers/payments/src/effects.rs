//! Performs the saga's effects: marketplace calls over the service binding,
//! payment calls through the Stripe client. Each returns what the saga needs
//! to hear: success (with the provider's object id) or a failure that is
//! retryable or definitive.

use serde_json::{json, Value};
use sha2::Digest;
use steps::{Call, Money, PurchaseEffect};
use worker::{Env, Headers, Method, Request, RequestInit};

use crate::stripe::{CallError, StripeClient};

/// Everything an effect needs besides the effect itself.
pub struct Performer<'a> {
    pub env: &'a Env,
    pub purchase_id: &'a str,
    pub payment_method: &'a str,
}

impl Performer<'_> {
    pub async fn perform(&self, effect: &PurchaseEffect) -> Result<Option<String>, CallError> {
        if engine_bench_mode(self.env) {
            return Ok(bench_output(effect));
        }
        match &effect.call {
            Call::ReserveListing { listing_id, units, purchase_id } => {
                let body = json!({ "purchase_id": purchase_id, "listing_id": listing_id, "quantity": units });
                self.marketplace(Method::Post, "/internal/reservations", Some(body)).await.map(|_| None)
            }
            Call::ReleaseListing { purchase_id, .. } => self
                .marketplace(Method::Post, &format!("/internal/reservations/{purchase_id}/release"), None)
                .await
                .map(|_| None),
            Call::MarkListingSold { purchase_id, .. } => self
                .marketplace(Method::Post, &format!("/internal/reservations/{purchase_id}/sold"), None)
                .await
                .map(|_| None),
            call => {
                let client = StripeClient {
                    api_base: crate::config_var(self.env, "STRIPE_API_BASE")
                        .unwrap_or_else(|| "https://api.stripe.com".into()),
                    secret_key: crate::config_var(self.env, "STRIPE_SECRET_KEY").unwrap_or_default(),
                };
                client.perform(call, &effect.idempotency_key, self.purchase_id, self.payment_method).await.map(Some)
            }
        }
    }

    async fn marketplace(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, CallError> {
        let (status, body) = marketplace_call(self.env, method, path, body).await?;
        match status {
            200..=299 => Ok(body),
            // Out of stock, an unknown listing, a reservation in another state:
            // asking again under the same purchase id gives the same answer.
            404 | 409 | 422 => Err(CallError::Permanent(describe("marketplace", status, &body))),
            // A 5xx may come after the reservation committed; the call is
            // idempotent by purchase id, so the retry will tell.
            _ => Err(CallError::Unknown(describe("marketplace", status, &body))),
        }
    }
}

/// `SAGA_EFFECTS = "inline"`: a benchmark configuration (never production)
/// in which every marketplace and payment effect succeeds at once inside the
/// Worker, so a benchmark measures the saga machinery alone: the Durable
/// Object, its storage writes and alarms, and the engine.
pub fn engine_bench_mode(env: &Env) -> bool {
    crate::config_var(env, "SAGA_EFFECTS").as_deref() == Some("inline")
}

/// What the provider would have answered: an object id for payment calls.
fn bench_output(effect: &PurchaseEffect) -> Option<String> {
    let prefix = match effect.call {
        Call::ReserveListing { .. } | Call::ReleaseListing { .. } | Call::MarkListingSold { .. } => return None,
        Call::TransferToSeller { .. } => "tr",
        Call::RefundPaymentIntent { .. } => "re",
        _ => "pi",
    };
    let digest = sha2::Sha256::digest(effect.idempotency_key.as_bytes());
    Some(format!("{prefix}_bench{}", &hex::encode(digest)[..16]))
}

fn describe(service: &str, status: u16, body: &Value) -> String {
    let code = body["error"]["code"].as_str().unwrap_or("unknown");
    let message = body["error"]["message"].as_str().unwrap_or("");
    format!("{service} {status} {code}: {message}")
}

/// One request to the marketplace Worker through the `MARKETPLACE` service
/// binding, authenticated as a service (`INTERNAL_TOKEN`). Network trouble
/// is retryable.
pub async fn marketplace_call(
    env: &Env,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<(u16, Value), CallError> {
    let service = env.service("MARKETPLACE").map_err(|e| CallError::Retryable(format!("MARKETPLACE binding: {e}")))?;
    let headers = Headers::new();
    let token = crate::config_var(env, "INTERNAL_TOKEN").unwrap_or_default();
    let _ = headers.set("authorization", &format!("Bearer {token}"));
    if body.is_some() {
        let _ = headers.set("content-type", "application/json");
    }
    let mut init = RequestInit::new();
    init.with_method(method).with_headers(headers);
    if let Some(body) = body {
        init.with_body(Some(body.to_string().into()));
    }
    let request = Request::new_with_init(&format!("https://marketplace.internal{path}"), &init)
        .map_err(|e| CallError::Permanent(format!("bad marketplace request {path}: {e}")))?;
    let mut response = service
        .fetch_request(request)
        .await
        .map_err(|e| CallError::Unknown(format!("marketplace unreachable: {e}")))?;
    let status = response.status_code();
    let text = response.text().await.map_err(|e| CallError::Unknown(format!("unreadable marketplace answer: {e}")))?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

/// What checkout needs to know about a listing.
pub struct ListingFacts {
    pub seller_id: String,
    pub seller_account: String,
    pub price: Money,
    pub active: bool,
}

pub enum ListingLookup {
    Found(ListingFacts),
    Missing,
}

pub async fn listing(env: &Env, listing_id: &str) -> Result<ListingLookup, CallError> {
    if engine_bench_mode(env) {
        // Any well-formed listing id is a 10.00 EUR item of one seller.
        return Ok(ListingLookup::Found(ListingFacts {
            seller_id: "sel_bench".into(),
            seller_account: "acct_bench".into(),
            price: Money::from_minor(1_000, steps::Currency::EUR).map_err(|e| CallError::Permanent(e.to_string()))?,
            active: true,
        }));
    }
    let (status, body) = marketplace_call(env, Method::Get, &format!("/v1/listings/{listing_id}"), None).await?;
    match status {
        200 => {
            let price: Money = serde_json::from_value(body["price"].clone())
                .map_err(|e| CallError::Retryable(format!("listing {listing_id} has an unreadable price: {e}")))?;
            let text = |k: &str| body[k].as_str().unwrap_or_default().to_string();
            Ok(ListingLookup::Found(ListingFacts {
                seller_id: text("seller_id"),
                seller_account: text("seller_account"),
                price,
                active: body["status"] == "active",
            }))
        }
        404 => Ok(ListingLookup::Missing),
        _ => Err(CallError::Retryable(describe("marketplace", status, &body))),
    }
}
