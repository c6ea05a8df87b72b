//! Webhook verification (placeholder until it lands).
