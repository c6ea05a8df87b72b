//! Verification of payment-provider webhooks, as plain Rust.
//!
//! A webhook is an unauthenticated POST from the internet until its signature
//! says otherwise, so the HTTP edge hands this crate three things, the header
//! lookup, the raw body bytes and the current time, and gets back either a
//! typed event or a [`VerifyError`] carrying the stable `code` and HTTP status
//! to answer with. The crate does no I/O and reads no clock, so every rule is
//! tested natively (no workerd, no Workers types).
//!
//! Each provider is one [`Verifier`]; [`stripe::StripeVerifier`] is the first.
//! Stripe's scheme (`Stripe-Signature: t=<unix>,v1=<hex>,...`, HMAC-SHA256
//! over `<t>.<raw body>`) is checked in this order:
//!
//! 1. a verifier without secrets refuses everything (`no_secret_configured`,
//!    a 500: it is our misconfiguration, and it must never fail open);
//! 2. the header must be present and well-formed, the body not oversized;
//! 3. every `v1` is compared with the HMAC under every secret, in constant
//!    time and without stopping at the first mismatch, so that neither timing
//!    nor the position of a match leaks anything; several secrets let a
//!    secret be rotated without dropping deliveries;
//! 4. the timestamp must lie within the tolerance (300 s by default) on
//!    *both* sides of `now`, which bounds replays; it is checked after the
//!    signature so that `timestamp_out_of_tolerance` always means "authentic
//!    but stale or from the future" (a replay or clock skew), never forged junk;
//! 5. only then is the JSON decoded: untrusted bytes never reach the parser.
//!
//! Verification proves that the provider sent the event, not that it is new:
//! the caller still de-duplicates by event id.
//!
//! ```
//! use webhooks::stripe::{sign_header, StripeVerifier};
//! use webhooks::Verifier;
//!
//! let body = br#"{"id":"evt_1","type":"payment_intent.succeeded","created":1700000000,
//!     "data":{"object":{"id":"pi_1","object":"payment_intent","metadata":{"purchase_id":"p_1"}}}}"#;
//! let header = sign_header("whsec_new", 1_700_000_000, body);
//! let verifier = StripeVerifier::from_secret_list("whsec_old, whsec_new");
//! let lookup = |name: &str| (name == "stripe-signature").then(|| header.clone());
//! let event = verifier.verify(&lookup, body, 1_700_000_010).expect("signed with a configured secret");
//! assert_eq!(event.purchase_id.as_deref(), Some("p_1"));
//!
//! let err = verifier.verify(&lookup, body, 1_700_009_999).unwrap_err();
//! assert_eq!((err.code(), err.http_status()), ("timestamp_out_of_tolerance", 400));
//! ```

pub mod stripe;

/// One payment provider's webhook scheme.
pub trait Verifier {
    /// What a verified delivery decodes to.
    type Event;

    /// Authenticates a delivery and decodes it.
    ///
    /// `header` looks up a request header by lowercase name; `body` is the
    /// raw request body exactly as received (signatures cover bytes, so it
    /// must not be re-serialized); `now_unix` is the current time in seconds.
    fn verify(
        &self,
        header: &dyn Fn(&str) -> Option<String>,
        body: &[u8],
        now_unix: i64,
    ) -> Result<Self::Event, VerifyError>;
}

/// Why a delivery was refused. Messages never contain secrets or expected
/// signatures, so they may be returned to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The provider's signature header is absent or empty.
    #[error("missing `{header}` header")]
    MissingSignature { header: &'static str },
    /// The signature header does not follow the provider's format.
    #[error("malformed signature header: {0}")]
    MalformedSignature(String),
    /// Authentic, but signed too long ago or too far in the future.
    #[error("timestamp {timestamp} is more than {tolerance_secs} s away from now ({now})")]
    TimestampOutOfTolerance { timestamp: i64, now: i64, tolerance_secs: i64 },
    /// No signature matches any configured secret.
    #[error("no signature matches the configured secret(s)")]
    SignatureMismatch,
    /// The (authenticated) body is not an event we can use.
    #[error("invalid payload: {0}")]
    InvalidPayload(String),
    /// The verifier has no secret: every delivery is refused.
    #[error("no webhook secret is configured")]
    NoSecretConfigured,
}

impl VerifyError {
    /// Stable machine-readable code for the HTTP edge. Part of the public
    /// API: never rename one, add a new one instead.
    pub fn code(&self) -> &'static str {
        match self {
            VerifyError::MissingSignature { .. } => "missing_signature",
            VerifyError::MalformedSignature(_) => "malformed_signature",
            VerifyError::TimestampOutOfTolerance { .. } => "timestamp_out_of_tolerance",
            VerifyError::SignatureMismatch => "signature_mismatch",
            VerifyError::InvalidPayload(_) => "invalid_payload",
            VerifyError::NoSecretConfigured => "no_secret_configured",
        }
    }

    /// HTTP status the edge should answer with: 400 for anything the sender
    /// got wrong (the provider retries non-2xx answers, and a 400 shows up in
    /// its dashboard), 500 only for our own missing configuration.
    pub fn http_status(&self) -> u16 {
        match self {
            VerifyError::NoSecretConfigured => 500,
            _ => 400,
        }
    }
}
