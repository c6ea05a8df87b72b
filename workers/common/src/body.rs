//! Request bodies: bounded in size, strictly parsed.

use serde::de::DeserializeOwned;
use worker::Request;

use crate::ApiError;

/// The default cap for JSON bodies of our APIs.
pub const JSON_LIMIT: usize = 64 * 1024;

/// Reads the raw body, refusing more than `limit` bytes (413). The declared
/// length is checked first so an oversized upload is refused before it is
/// buffered.
pub async fn bytes(req: &mut Request, limit: usize) -> Result<Vec<u8>, ApiError> {
    if let Ok(Some(declared)) = req.headers().get("content-length") {
        if declared.trim().parse::<u64>().is_ok_and(|n| n > limit as u64) {
            return Err(ApiError::payload_too_large(limit));
        }
    }
    let bytes =
        req.bytes().await.map_err(|e| ApiError::invalid("unreadable_body", format!("could not read the body: {e}")))?;
    if bytes.len() > limit {
        return Err(ApiError::payload_too_large(limit));
    }
    Ok(bytes)
}

/// Parses a JSON body into `T`: 422 `invalid_json` when it is not JSON,
/// 422 `invalid_field` when it is JSON of the wrong shape (serde's message
/// names the field).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid("invalid_json", "the request body is empty; a JSON object is expected"));
    }
    // serde would also fill a struct from a JSON array, by position: our
    // bodies are objects with named fields, nothing else.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::invalid("invalid_json", "the body must be a JSON object"));
    }
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::invalid("invalid_field", e.to_string()),
        _ => ApiError::invalid("invalid_json", format!("the body is not valid JSON: {e}")),
    })
}

pub async fn json<T: DeserializeOwned>(req: &mut Request) -> Result<T, ApiError> {
    let bytes = bytes(req, JSON_LIMIT).await?;
    parse_json(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Thing {
        quantity: u32,
    }

    #[test]
    fn syntax_and_shape_errors_have_distinct_codes() {
        assert_eq!(parse_json::<Thing>(b"{").unwrap_err().code, "invalid_json");
        assert_eq!(parse_json::<Thing>(b"  ").unwrap_err().code, "invalid_json");
        assert_eq!(parse_json::<Thing>(br#"{"quantity": -1}"#).unwrap_err().code, "invalid_field");
        assert_eq!(parse_json::<Thing>(br#"{"quantity": 1, "price": 3}"#).unwrap_err().code, "invalid_field");
        assert!(parse_json::<Thing>(br#"{"quantity": 2}"#).is_ok());
        assert!(parse_json::<Thing>(b" \n{\"quantity\": 2}").is_ok());
        assert_eq!(parse_json::<Thing>(b"[2]").unwrap_err().code, "invalid_json");
        assert_eq!(parse_json::<Thing>(b"2").unwrap_err().code, "invalid_json");
    }
}
