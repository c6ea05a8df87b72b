//! The payments Worker. See the crate README for its API.

// Not called yet: the purchase Durable Object that performs saga effects
// through it is the next piece of the purchases work.
#[allow(dead_code)]
mod stripe;

use worker::{event, Context, Env, Method, Request, Response};
use worker_common::{health, route, respond, ApiError};

const SERVICE: &str = "payments";

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> worker::Result<Response> {
    respond(handle(req, env).await)
}

async fn handle(req: Request, env: Env) -> Result<Response, ApiError> {
    let segments = route::segments(&req)?;
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    match (req.method(), segments.as_slice()) {
        (Method::Get, ["healthz"]) => {
            let database_url = route::config(&env, "DATABASE_URL");
            Ok(health::report(SERVICE, vec![health::postgres(database_url.as_deref()).await]))
        }
        (_, ["healthz"]) => Err(ApiError::method_not_allowed(&req.method().to_string(), "/healthz")),
        _ => Err(ApiError::not_found(format!("no route for {} {}", req.method(), req.path()))),
    }
}
