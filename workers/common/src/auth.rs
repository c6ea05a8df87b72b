//! Bearer-token authentication.
//!
//! Tokens come from Worker secrets. Each configured token grants one
//! [`Role`]. Comparison hashes both sides with SHA-256 first and compares the
//! digests in constant time, so neither the content nor the length of a
//! secret leaks through timing.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use worker::Request;

use crate::ApiError;

/// Who is calling. A token maps to exactly one role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The checkout flow acting for a buyer (`CHECKOUT_TOKEN`).
    Checkout,
    /// An operator (`OPS_TOKEN`).
    Ops,
    /// Another Worker of this system (`INTERNAL_TOKEN`): the payments Worker
    /// moving a purchase's reservation. Operators cannot act in its place,
    /// so a hand-made release can never strand a purchase mid-saga.
    Service,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Checkout => "checkout",
            Role::Ops => "ops",
            Role::Service => "service",
        }
    }
}

/// The configured tokens of one Worker. An empty token is never accepted, so a
/// missing secret locks the door rather than opening it.
#[derive(Clone, Default)]
pub struct Tokens {
    entries: Vec<(Role, [u8; 32])>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").field("roles", &self.entries.iter().map(|(r, _)| r).collect::<Vec<_>>()).finish()
    }
}

impl Tokens {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(mut self, role: Role, token: &str) -> Self {
        if !token.is_empty() {
            self.entries.push((role, digest(token.as_bytes())));
        }
        self
    }

    /// The role of a presented token, checked against every configured token
    /// (no early exit, so timing does not say which one matched).
    pub fn role_of(&self, presented: &str) -> Option<Role> {
        let presented = digest(presented.as_bytes());
        let mut found = None;
        for (role, expected) in &self.entries {
            if bool::from(expected.ct_eq(&presented)) && found.is_none() {
                found = Some(*role);
            }
        }
        found
    }

    /// Authenticates a request and checks its role is one of `allowed`.
    /// 401 when the token is missing or unknown, 403 when it is valid but the
    /// role may not do this.
    pub fn require(&self, req: &Request, allowed: &[Role]) -> Result<Role, ApiError> {
        let header = req
            .headers()
            .get("authorization")
            .ok()
            .flatten()
            .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token> header"))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| ApiError::unauthorized("Authorization header must be `Bearer <token>`"))?
            .trim();
        let role = self.role_of(token).ok_or_else(|| ApiError::unauthorized("unknown token"))?;
        if allowed.contains(&role) {
            Ok(role)
        } else {
            Err(ApiError::forbidden(format!("the {} role may not do this", role.as_str())))
        }
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_told_apart_and_empty_tokens_never_match() {
        let tokens = Tokens::new().with(Role::Checkout, "c-secret").with(Role::Ops, "o-secret").with(Role::Ops, "");
        assert_eq!(tokens.role_of("c-secret"), Some(Role::Checkout));
        assert_eq!(tokens.role_of("o-secret"), Some(Role::Ops));
        assert_eq!(tokens.role_of(""), None);
        assert_eq!(tokens.role_of("c-secre"), None);
        assert_eq!(tokens.role_of("c-secret "), None);
    }
}
