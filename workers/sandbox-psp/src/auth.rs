//! The secret API key, as Stripe takes it: `Authorization: Bearer sk_...` or
//! HTTP Basic with the key as user name (`curl -u sk_test_...:`). Compared
//! as SHA-256 digests in constant time; an unset key admits nobody.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::errors::{ErrorType, StripeError};

/// The key presented in an `Authorization` header value, if any.
pub fn presented_key(header: Option<&str>) -> Option<String> {
    let header = header?.trim();
    let (scheme, rest) = header.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        Some(rest.to_string())
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64_decode(rest)?;
        let text = String::from_utf8(decoded).ok()?;
        Some(text.split_once(':').map(|(user, _)| user.to_string()).unwrap_or(text))
    } else {
        None
    }
}

/// `Ok` when `presented` is the configured key.
pub fn check(configured: Option<&str>, authorization: Option<&str>) -> Result<(), StripeError> {
    let Some(presented) = presented_key(authorization).filter(|k| !k.is_empty()) else {
        return Err(StripeError::new(
            401,
            ErrorType::InvalidRequestError,
            "You did not provide an API key. You need to provide your API key in the Authorization header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
        ));
    };
    let matches = match configured.filter(|k| !k.is_empty()) {
        Some(expected) => bool::from(Sha256::digest(expected.as_bytes()).ct_eq(&Sha256::digest(presented.as_bytes()))),
        None => false,
    };
    if matches {
        Ok(())
    } else {
        Err(StripeError::new(
            401,
            ErrorType::InvalidRequestError,
            format!("Invalid API Key provided: {}", redact(&presented)),
        ))
    }
}

/// `sk_test_****************abcd`, as Stripe echoes a wrong key.
pub fn redact(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    let prefix = ["sk_test_", "sk_live_", "rk_test_", "rk_live_"]
        .iter()
        .find(|p| key.starts_with(**p))
        .map(|p| p.len())
        .unwrap_or(0);
    if chars.len() <= prefix + 4 {
        return format!("{}{}", &key[..prefix.min(key.len())], "*".repeat(chars.len().saturating_sub(prefix)));
    }
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{}{}{}", &key[..prefix], "*".repeat(chars.len() - prefix - 4), tail)
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    };
    let trimmed = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(trimmed.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in trimmed.bytes() {
        acc = (acc << 6) | value(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_and_basic_both_carry_the_key() {
        assert_eq!(presented_key(Some("Bearer sk_test_x")).as_deref(), Some("sk_test_x"));
        assert_eq!(presented_key(Some("bearer  sk_test_x ")).as_deref(), Some("sk_test_x"));
        // base64("sk_test_x:") = c2tfdGVzdF94Og==
        assert_eq!(presented_key(Some("Basic c2tfdGVzdF94Og==")).as_deref(), Some("sk_test_x"));
        assert_eq!(presented_key(Some("Token sk_test_x")), None);
        assert_eq!(presented_key(Some("Basic !!!")), None);
        assert_eq!(presented_key(None), None);
    }

    #[test]
    fn only_the_configured_key_passes() {
        assert!(check(Some("sk_test_x"), Some("Bearer sk_test_x")).is_ok());
        let wrong = check(Some("sk_test_x"), Some("Bearer sk_test_wrongkey1234")).unwrap_err();
        assert_eq!((wrong.status, wrong.kind), (401, ErrorType::InvalidRequestError));
        assert_eq!(wrong.message, "Invalid API Key provided: sk_test_********1234");
        assert!(check(Some("sk_test_x"), None).unwrap_err().message.starts_with("You did not provide an API key"));
        assert!(check(None, Some("Bearer sk_test_x")).is_err(), "an unset key admits nobody");
        assert!(check(Some(""), Some("Bearer ")).is_err());
    }

    #[test]
    fn short_keys_are_fully_masked() {
        assert_eq!(redact("abc"), "***");
        assert_eq!(redact("sk_test_ab"), "sk_test_**");
    }
}
