//! Random ids in Stripe's style (`pi_` + 24 alphanumerics) and random draws
//! for chaos. The sandbox is not the deterministic part of the system: it
//! uses the platform's randomness (`crypto.getRandomValues` in Workers).

const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    if getrandom::fill(&mut bytes).is_err() {
        // Never seen in Workers; fall back to the clock so ids stay unique-ish
        // rather than failing the request.
        let now = worker::Date::now().as_millis();
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (now >> ((i % 8) * 8)) as u8 ^ (i as u8).wrapping_mul(151);
        }
    }
    bytes
}

/// `prefix_` followed by 24 random alphanumerics.
pub fn new_id(prefix: &str) -> String {
    // 62 does not divide 256: drop bytes >= 248 to keep the letters uniform.
    let mut out = String::with_capacity(prefix.len() + 25);
    out.push_str(prefix);
    out.push('_');
    let mut produced = 0;
    while produced < 24 {
        for byte in random_bytes::<32>() {
            if produced == 24 {
                break;
            }
            if byte < 248 {
                out.push(ALPHABET[(byte % 62) as usize] as char);
                produced += 1;
            }
        }
    }
    out
}

/// A uniform draw in [0, 1).
pub fn draw() -> f64 {
    let bytes = random_bytes::<8>();
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_look_like_stripes() {
        let id = new_id("pi");
        assert_eq!(id.len(), 27);
        assert!(id.starts_with("pi_"));
        assert!(id[3..].bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(new_id("pi"), id);
        for _ in 0..1000 {
            let d = draw();
            assert!((0.0..1.0).contains(&d));
        }
    }
}
