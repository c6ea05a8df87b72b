//! The development-only payment provider sandbox: a stand-in for Stripe that
//! speaks its wire protocol (form-encoded REST, Stripe's JSON objects and
//! errors, `Idempotency-Key`, signed webhooks), so the payments Worker's
//! production Stripe client is what the tests exercise. See the crate README.
//!
//! The Worker authenticates and forwards; all state lives in one
//! SQLite-backed Durable Object, [`durable::Ledger`].
//!
//! - `form`: form bodies with bracketed keys.
//! - `objects`: PaymentIntent, Charge, Refund, Transfer, Event JSON.
//! - `api`: the endpoints, pure over a [`store::Store`].
//! - `idempotency`: key validation and request comparison.
//! - `chaos`: fault-injection settings and decisions.
//! - `webhooks`: signatures and the retry schedule.
//! - `ledger`: the money figures per purchase.
//! - `sql`, `durable`: SQLite and the Durable Object.

pub mod api;
pub mod auth;
pub mod chaos;
pub mod durable;
pub mod errors;
pub mod form;
pub mod idempotency;
pub mod ids;
pub mod ledger;
pub mod objects;
pub mod sql;
pub mod store;
pub mod webhooks;

use serde_json::json;
use worker::{event, Context, Env, Request, Response};
use worker_common::log::{self, Level};
use worker_common::{respond, route, ApiError};

pub use durable::Ledger;

pub const SERVICE: &str = "sandbox-psp";

/// The Durable Object binding and the name of its one instance.
const BINDING: &str = "LEDGER";
const INSTANCE: &str = "ledger";

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> worker::Result<Response> {
    respond(handle(req, env).await)
}

async fn handle(req: Request, env: Env) -> Result<Response, ApiError> {
    let segments = route::segments(&req)?;
    let first = segments.first().map(String::as_str);
    match first {
        Some("healthz") if segments.len() == 1 => forward(req, &env).await,
        Some("v1") => {
            let authorization = req.headers().get("authorization").ok().flatten();
            if let Err(err) = auth::check(route::config(&env, "STRIPE_SECRET_KEY").as_deref(), authorization.as_deref())
            {
                log::event(Level::Warn, SERVICE, "api request refused: bad API key", json!({ "path": req.path() }));
                return Ok(stripe_json(err.status, &err.body()));
            }
            match forward(req, &env).await {
                Ok(response) => Ok(response),
                Err(e) => {
                    log::event(Level::Error, SERVICE, "ledger unreachable", json!({ "error": e.message }));
                    let err = errors::StripeError::api_error("An unknown error occurred");
                    Ok(stripe_json(err.status, &err.body()))
                }
            }
        }
        Some("_sandbox") => {
            let authorization = req.headers().get("authorization").ok().flatten();
            auth::check(route::config(&env, "STRIPE_SECRET_KEY").as_deref(), authorization.as_deref()).map_err(
                |_| {
                    ApiError::unauthorized(
                        "the sandbox's own API takes the same `Authorization: Bearer <STRIPE_SECRET_KEY>`",
                    )
                },
            )?;
            forward(req, &env).await
        }
        _ => Err(ApiError::not_found(format!("no route for {} {}", req.method(), req.path()))),
    }
}

fn stripe_json(status: u16, body: &serde_json::Value) -> Response {
    let mut response = worker_common::json(status, body);
    let _ = response.headers_mut().set("stripe-version", objects::API_VERSION);
    response
}

/// Hands the request to the ledger Durable Object.
async fn forward(req: Request, env: &Env) -> Result<Response, ApiError> {
    let namespace = env.durable_object(BINDING).map_err(|e| ApiError::internal(format!("binding {BINDING}: {e}")))?;
    let stub = namespace.id_from_name(INSTANCE)?.get_stub()?;
    Ok(stub.fetch_with_request(req).await?)
}
