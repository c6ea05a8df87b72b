//! Small helpers for matching requests by hand: explicit `match` on method
//! and path segments reads better than a router for a handful of routes, and
//! lets every miss answer in the standard error shape.

use worker::Request;

use crate::ApiError;

/// The non-empty path segments, or 404 for paths that try to escape
/// (`..`, percent-encoded slashes) or are absurdly long.
pub fn segments(req: &Request) -> Result<Vec<String>, ApiError> {
    let url = req.url().map_err(|_| ApiError::not_found("unparseable URL"))?;
    let path = url.path();
    if path.len() > 512 {
        return Err(ApiError::not_found("path too long"));
    }
    let mut out = Vec::new();
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        let lower = segment.to_ascii_lowercase();
        if segment == "." || segment == ".." || lower.contains("%2f") || lower.contains("%5c") || lower.contains("%2e")
        {
            return Err(ApiError::not_found(format!("no such resource: {path}")));
        }
        out.push(segment.to_string());
    }
    Ok(out)
}

/// The value of a var or secret binding, if set and non-empty.
pub fn config(env: &worker::Env, name: &str) -> Option<String> {
    env.var(name)
        .map(|v| v.to_string())
        .or_else(|_| env.secret(name).map(|s| s.to_string()))
        .ok()
        .filter(|v| !v.is_empty())
}
