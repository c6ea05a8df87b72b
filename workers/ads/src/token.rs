//! Click tokens: `base64url(payload) "." base64url(HMAC-SHA256(key, payload))`.
//!
//! The payload names the campaign, creative, placement, user, the time the
//! ad was served and the impression id. It never carries a URL: the click
//! handler redirects to the landing URL stored with the campaign, so a token
//! cannot be turned into an open redirect even by whoever holds the key.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use serde::{Deserialize, Serialize};

/// Longer tokens are refused before any work is done.
pub const MAX_TOKEN_LEN: usize = 2048;

/// The Pet DNA of the request that showed the ad, carried so the click's
/// data point has the same fields as the impression's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dna {
    #[serde(rename = "s", default, skip_serializing_if = "Option::is_none")]
    pub species: Option<String>,
    #[serde(rename = "b", default, skip_serializing_if = "Option::is_none")]
    pub breed: Option<String>,
    #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
    pub age_months: Option<u32>,
    #[serde(rename = "n", default, skip_serializing_if = "Vec::is_empty")]
    pub interests: Vec<String>,
    #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Click {
    #[serde(rename = "v")]
    pub version: u8,
    #[serde(rename = "c")]
    pub campaign_id: String,
    #[serde(rename = "k")]
    pub creative_id: String,
    #[serde(rename = "p")]
    pub placement: String,
    #[serde(rename = "u")]
    pub user: String,
    /// Unix seconds when the ad was served.
    #[serde(rename = "t")]
    pub issued_at: u64,
    #[serde(rename = "i")]
    pub impression_id: String,
    /// What a click costs a CPC campaign (micro-units); 0 for CPM.
    #[serde(rename = "x")]
    pub click_price_micros: i64,
    #[serde(rename = "d", default)]
    pub dna: Dna,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the click token is malformed")]
    Malformed,
    #[error("the click token's signature does not match")]
    BadSignature,
    #[error("the click token has expired")]
    Expired,
    #[error("the click token was issued in the future")]
    FromTheFuture,
}

impl TokenError {
    pub fn code(self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed_token",
            TokenError::BadSignature | TokenError::FromTheFuture => "bad_signature",
            TokenError::Expired => "expired_token",
        }
    }
}

fn mac(key: &[u8]) -> Option<Hmac<Sha256>> {
    // HMAC takes keys of any length; an empty key is refused so a missing
    // secret cannot sign anything.
    (!key.is_empty()).then(|| Hmac::<Sha256>::new_from_slice(key).ok()).flatten()
}

pub fn sign(key: &[u8], click: &Click) -> Option<String> {
    let payload = serde_json::to_vec(click).ok()?;
    let mut m = mac(key)?;
    m.update(&payload);
    let sig = m.finalize().into_bytes();
    Some(format!("{}.{}", URL_SAFE_NO_PAD.encode(payload), URL_SAFE_NO_PAD.encode(sig)))
}

/// Checks the signature (constant time) before looking at the content, then
/// the age: valid for `ttl_seconds` after issue, with 60 s of clock skew.
pub fn verify(key: &[u8], token: &str, now: u64, ttl_seconds: u64) -> Result<Click, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed);
    }
    let (payload_b64, sig_b64) = token.split_once('.').ok_or(TokenError::Malformed)?;
    let payload = URL_SAFE_NO_PAD.decode(payload_b64).map_err(|_| TokenError::Malformed)?;
    let sig = URL_SAFE_NO_PAD.decode(sig_b64).map_err(|_| TokenError::Malformed)?;
    let mut m = mac(key).ok_or(TokenError::BadSignature)?;
    m.update(&payload);
    m.verify_slice(&sig).map_err(|_| TokenError::BadSignature)?;
    let click: Click = serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
    if click.version != 1 {
        return Err(TokenError::Malformed);
    }
    if click.issued_at > now.saturating_add(60) {
        return Err(TokenError::FromTheFuture);
    }
    if now.saturating_sub(click.issued_at) > ttl_seconds {
        return Err(TokenError::Expired);
    }
    Ok(click)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn click() -> Click {
        Click {
            version: 1,
            campaign_id: "cmp_a".into(),
            creative_id: "crv_1".into(),
            placement: "feed".into(),
            user: "u_1".into(),
            issued_at: 1_000,
            impression_id: "imp_x".into(),
            click_price_micros: 0,
            dna: Dna::default(),
        }
    }

    #[test]
    fn round_trip_and_refusals() {
        let t = sign(b"k", &click()).unwrap();
        assert_eq!(verify(b"k", &t, 1_010, 3600), Ok(click()));
        assert_eq!(verify(b"other", &t, 1_010, 3600), Err(TokenError::BadSignature));
        assert_eq!(verify(b"k", &t, 1_000 + 3601, 3600), Err(TokenError::Expired));
        assert_eq!(verify(b"k", &t, 100, 3600), Err(TokenError::FromTheFuture));
        // Swapping the campaign in the payload breaks the signature.
        let (_, sig) = t.split_once('.').unwrap();
        let mut swapped = click();
        swapped.campaign_id = "cmp_b".into();
        let forged = format!("{}.{sig}", URL_SAFE_NO_PAD.encode(serde_json::to_vec(&swapped).unwrap()));
        assert_eq!(verify(b"k", &forged, 1_010, 3600), Err(TokenError::BadSignature));
        for junk in ["", ".", "abc", "a.b.c", "!!!.???", &"a".repeat(5000)] {
            assert!(verify(b"k", junk, 1_010, 3600).is_err());
        }
        assert!(sign(b"", &click()).is_none());
    }
}
