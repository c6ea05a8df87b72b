//! The PetAds Worker. See the crate README for its API.

use worker::{event, Context, Env, Method, Request, Response};
use worker_common::{health, respond, route, ApiError};

const SERVICE: &str = "ads";

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> worker::Result<Response> {
    respond(handle(req, env).await)
}

async fn handle(req: Request, env: Env) -> Result<Response, ApiError> {
    let segments = route::segments(&req)?;
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    match (req.method(), segments.as_slice()) {
        (Method::Get, ["healthz"]) => {
            let nonce = random_nonce()?;
            let store = env.kv("CAMPAIGNS").map_err(|e| format!("KV binding CAMPAIGNS: {e}"));
            Ok(health::report(SERVICE, vec![health::kv(store, &nonce).await]))
        }
        (_, ["healthz"]) => Err(ApiError::method_not_allowed(&req.method().to_string(), "/healthz")),
        _ => Err(ApiError::not_found(format!("no route for {} {}", req.method(), req.path()))),
    }
}

fn random_nonce() -> Result<String, ApiError> {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes).map_err(|e| ApiError::internal(format!("no randomness: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
