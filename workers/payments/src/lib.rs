//! The payments Worker: checkout API, one purchase saga per Durable Object
//! ([`object::PurchaseObject`]), Stripe webhooks and the operator API.
//!
//! This file authenticates, validates and routes; the object runs the saga.
//! See README.md and docs/openapi.yaml for the API.

/// The checkout request and idempotency keys: public so that the fuzz targets
/// (`fuzz/`) can drive the exact decoding `POST /v1/purchases` uses.
pub mod checkout;
mod config;
mod effects;
mod mirror;
mod object;
mod record;
mod stripe;

use serde_json::json;
use webhooks::Verifier;
use worker::{event, Context, Env, Method, Request, RequestInit, Response};
use worker_common::auth::{Role, Tokens};
use worker_common::log::{self, Level};
use worker_common::{body, health, json as json_response, respond, route, ApiError};

use checkout::CheckoutRequest;
pub use object::PurchaseObject;

pub(crate) const SERVICE: &str = "payments";

/// Stripe's own limit for webhook payloads is far below this.
const WEBHOOK_LIMIT: usize = 256 * 1024;

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> worker::Result<Response> {
    respond(handle(req, env).await)
}

thread_local! {
    /// Vars and secrets, each read from `env` once: they never change while
    /// an isolate lives (a deployment or a `wrangler dev` reload starts a new
    /// one), and every read is a call across the Wasm boundary.
    static CONFIG: std::cell::RefCell<std::collections::HashMap<String, Option<String>>> = Default::default();
    /// The saga built from that configuration, shared by the isolate's objects.
    static SAGA: std::cell::OnceCell<Result<steps::PurchaseSaga, String>> = const { std::cell::OnceCell::new() };
}

pub(crate) fn config_var(env: &Env, name: &str) -> Option<String> {
    if let Some(value) = CONFIG.with(|c| c.borrow().get(name).cloned()) {
        return value;
    }
    let value = route::config(env, name);
    CONFIG.with(|c| c.borrow_mut().insert(name.to_string(), value.clone()));
    value
}

/// The purchase saga of this isolate's configuration (an error names the bad setting).
pub(crate) fn saga(env: &Env) -> Result<steps::PurchaseSaga, String> {
    SAGA.with(|cell| {
        cell.get_or_init(|| {
            saga_config(env)
                .map_err(|e| e.to_string())
                .and_then(|config| steps::PurchaseSaga::new(config).map_err(|e| e.to_string()))
        })
        .clone()
    })
}

pub(crate) fn saga_config(env: &Env) -> Result<steps::PurchaseConfig, config::ConfigError> {
    config::purchase_config(|name| config_var(env, name))
}

fn tokens(env: &Env) -> Tokens {
    Tokens::new()
        .with(Role::Checkout, &config_var(env, "CHECKOUT_TOKEN").unwrap_or_default())
        .with(Role::Ops, &config_var(env, "OPS_TOKEN").unwrap_or_default())
}

async fn handle(mut req: Request, env: Env) -> Result<Response, ApiError> {
    let segments = route::segments(&req)?;
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = req.method();
    let tokens = tokens(&env);
    match (method.clone(), segments.as_slice()) {
        (Method::Get, ["healthz"]) => {
            let mut checks = vec![health::postgres(config_var(&env, "DATABASE_URL").as_deref()).await];
            if let Err(e) = saga_config(&env) {
                checks.push(health::Check {
                    name: "config",
                    ok: false,
                    latency_ms: 0,
                    detail: json!({ "error": e.to_string() }),
                });
            }
            Ok(health::report(SERVICE, checks))
        }
        (Method::Post, ["v1", "purchases"]) => {
            tokens.require(&req, &[Role::Checkout])?;
            let key = header(&req, "idempotency-key").ok_or_else(|| {
                ApiError::invalid("idempotency_key_required", "an Idempotency-Key header is required")
            })?;
            if !checkout::valid_idempotency_key(&key) {
                return Err(ApiError::invalid(
                    "invalid_idempotency_key",
                    "Idempotency-Key must be 1-255 printable ASCII characters",
                ));
            }
            let request: CheckoutRequest = body::json(&mut req).await?;
            request.validate().map_err(|e| ApiError::invalid("invalid_field", e.to_string()))?;
            let purchase_id = checkout::purchase_id_for_key(&key);
            to_object(&env, &purchase_id, json!({ "op": "create", "purchase_id": purchase_id, "request": request }))
                .await
        }
        (Method::Get, ["v1", "purchases", id]) => {
            tokens.require(&req, &[Role::Checkout, Role::Ops])?;
            let id = purchase_id(id)?;
            to_object(&env, &id, json!({ "op": "view" })).await
        }
        (Method::Post, ["v1", "purchases", id, action @ ("confirm-delivery" | "dispute" | "cancel")]) => {
            tokens.require(&req, &[Role::Checkout])?;
            let id = purchase_id(id)?;
            let request_id = match header(&req, "idempotency-key") {
                Some(key) if checkout::valid_idempotency_key(&key) => key,
                Some(_) => {
                    return Err(ApiError::invalid(
                        "invalid_idempotency_key",
                        "Idempotency-Key must be 1-255 printable ASCII characters",
                    ))
                }
                None => uuid::Uuid::new_v4().simple().to_string(),
            };
            let command = action.replace('-', "_");
            to_object(&env, &id, json!({ "op": "buyer", "command": command, "request_id": request_id })).await
        }
        (Method::Post, ["v1", "webhooks", "stripe"]) => stripe_webhook(&mut req, &env).await,
        (Method::Get, ["v1", "ops", "purchases"]) => {
            tokens.require(&req, &[Role::Ops])?;
            ops_list(&req, &env).await
        }
        (Method::Get, ["v1", "ops", "purchases", id]) => {
            tokens.require(&req, &[Role::Ops])?;
            let id = purchase_id(id)?;
            to_object(&env, &id, json!({ "op": "view" })).await
        }
        (Method::Post, ["v1", "ops", "purchases", id, command @ ("retry" | "refund" | "resolve")]) => {
            tokens.require(&req, &[Role::Ops])?;
            let id = purchase_id(id)?;
            let mut message = json!({ "op": "operator", "command": command });
            if *command == "resolve" {
                #[derive(serde::Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Resolve {
                    outcome: steps::DisputeOutcome,
                }
                let resolve: Resolve = body::json(&mut req).await?;
                message["outcome"] = json!(resolve.outcome);
            }
            to_object(&env, &id, message).await
        }
        // Known resources with another method: 405. Anything else: 404.
        (
            _,
            ["healthz"]
            | ["v1", "purchases"]
            | ["v1", "purchases", _]
            | ["v1", "purchases", _, "confirm-delivery" | "dispute" | "cancel"]
            | ["v1", "webhooks", "stripe"]
            | ["v1", "ops", "purchases"]
            | ["v1", "ops", "purchases", _]
            | ["v1", "ops", "purchases", _, "retry" | "refund" | "resolve"],
        ) => Err(ApiError::method_not_allowed(&method.to_string(), &req.path())),
        _ => Err(ApiError::not_found(format!("no route for {} {}", method, req.path()))),
    }
}

fn header(req: &Request, name: &str) -> Option<String> {
    req.headers().get(name).ok().flatten()
}

fn purchase_id(raw: &str) -> Result<String, ApiError> {
    if checkout::is_prefixed_id(raw, "pur_") {
        Ok(raw.to_string())
    } else {
        Err(ApiError::not_found(format!("{raw:?} is not a purchase id")))
    }
}

/// Sends one command to the purchase's object and relays its answer.
async fn to_object(env: &Env, purchase_id: &str, message: serde_json::Value) -> Result<Response, ApiError> {
    let namespace = env.durable_object("PURCHASES")?;
    let stub = namespace.id_from_name(purchase_id)?.get_stub()?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post).with_body(Some(message.to_string().into()));
    let request = Request::new_with_init("https://purchase.internal/", &init)?;
    Ok(stub.fetch_with_request(request).await?)
}

/// Verified events go to the purchase named in the payment's metadata. Bad
/// signatures get 400 and touch nothing; events that are not ours get 200 so
/// Stripe stops retrying them.
async fn stripe_webhook(req: &mut Request, env: &Env) -> Result<Response, ApiError> {
    let bytes = body::bytes(req, WEBHOOK_LIMIT).await?;
    let secrets = config_var(env, "STRIPE_WEBHOOK_SECRET").unwrap_or_default();
    let verifier = webhooks::stripe::StripeVerifier::from_secret_list(&secrets);
    let now_unix = (worker::Date::now().as_millis() / 1000) as i64;
    let lookup = |name: &str| req.headers().get(name).ok().flatten();
    let event = verifier.verify(&lookup, &bytes, now_unix).map_err(|e| {
        log::event(Level::Warn, SERVICE, "webhook refused", json!({ "code": e.code(), "error": e.to_string() }));
        ApiError::new(e.http_status(), e.code(), e.to_string())
    })?;
    match event.purchase_id.as_deref().filter(|id| checkout::is_prefixed_id(id, "pur_")) {
        Some(id) => {
            let id = id.to_string();
            to_object(env, &id, json!({ "op": "stripe", "event": event })).await
        }
        None => Ok(json_response(200, &json!({ "received": true, "outcome": "not_a_purchase" }))),
    }
}

async fn ops_list(req: &Request, env: &Env) -> Result<Response, ApiError> {
    let url = req.url().map_err(|_| ApiError::not_found("unparseable URL"))?;
    let mut state = None;
    let mut limit = 50i64;
    let mut cursor = None;
    for (key, value) in url.query_pairs() {
        match key.as_ref() {
            "state" => {
                let parsed = object::parse_state(&value).ok_or_else(|| {
                    ApiError::invalid("invalid_field", format!("state: {value:?} is not a purchase state"))
                })?;
                state = Some(parsed.as_str());
            }
            "limit" => {
                limit =
                    value.parse::<i64>().ok().filter(|n| (1..=200).contains(n)).ok_or_else(|| {
                        ApiError::invalid("invalid_field", "limit must be a whole number from 1 to 200")
                    })?;
            }
            "cursor" => {
                cursor = Some(
                    mirror::Cursor::decode(&value)
                        .ok_or_else(|| ApiError::invalid("invalid_field", "cursor is not one this API gave out"))?,
                );
            }
            other => return Err(ApiError::invalid("invalid_field", format!("unknown query parameter {other:?}"))),
        }
    }
    let database = config_var(env, "DATABASE_URL")
        .ok_or_else(|| ApiError::unavailable("database_unavailable", "DATABASE_URL is not configured"))?;
    let page = mirror::list(&database, state, limit, cursor).await?;
    Ok(json_response(200, &page))
}
