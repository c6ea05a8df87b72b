//! HTTP plumbing every Worker in this repository shares.
//!
//! - [`ApiError`]: the one error shape on the wire,
//!   `{"error": {"code": "snake_case", "message": "..."}}`, with a fitting 4xx/5xx.
//! - [`auth`]: bearer tokens compared in constant time, mapped to roles.
//! - [`db`]: a tokio-postgres connection over a Workers TCP socket.
//! - [`log`]: one JSON object per log line.
//!
//! Domain logic does not live here: this crate only knows HTTP and plumbing.

pub mod auth;
pub mod body;
pub mod db;
mod error;
pub mod health;
pub mod log;
pub mod route;

pub use error::ApiError;

use serde::Serialize;
use worker::{Headers, Response};

/// A JSON response with the given status. Serialization of our own types
/// cannot fail in practice; if it ever does, the caller gets a 500 in the
/// standard error shape rather than a panic.
pub fn json<T: Serialize>(status: u16, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => bytes_response(status, bytes, "application/json"),
        Err(err) => ApiError::internal(format!("could not encode response: {err}")).into_response(),
    }
}

pub(crate) fn bytes_response(status: u16, bytes: Vec<u8>, content_type: &str) -> Response {
    let headers = Headers::new();
    // Setting a well-formed header name/value cannot fail.
    let _ = headers.set("content-type", content_type);
    let _ = headers.set("cache-control", "no-store");
    Response::builder().with_status(status).with_headers(headers).fixed(bytes)
}

/// Turns the outcome of a handler into the response the client sees: errors
/// become the standard error body, never a thrown exception.
pub fn respond(result: Result<Response, ApiError>) -> worker::Result<Response> {
    Ok(match result {
        Ok(response) => response,
        Err(err) => err.into_response(),
    })
}
