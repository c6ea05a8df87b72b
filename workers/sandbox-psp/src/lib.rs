//! The development-only payment provider sandbox. See the crate README.

use worker::{event, Context, Env, Method, Request, Response};
use worker_common::{respond, route, ApiError};

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> worker::Result<Response> {
    respond(handle(req, env).await)
}

async fn handle(req: Request, _env: Env) -> Result<Response, ApiError> {
    let segments = route::segments(&req)?;
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    match (req.method(), segments.as_slice()) {
        (Method::Get, ["healthz"]) => Ok(worker_common::json(
            200,
            &serde_json::json!({ "status": "ok", "service": "sandbox-psp", "checks": [] }),
        )),
        (_, ["healthz"]) => Err(ApiError::method_not_allowed(&req.method().to_string(), "/healthz")),
        _ => Err(ApiError::not_found(format!("no route for {} {}", req.method(), req.path()))),
    }
}
