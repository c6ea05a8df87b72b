//! Fault injection: what a real provider does on a bad day.
//!
//! Settings are probabilities in [0, 1] (plus one delay bound), changed with
//! `POST /_sandbox/chaos` (only the fields given change), shown with `GET`,
//! reset with `DELETE`. The decisions here are pure: callers pass the random
//! draws (uniform in [0, 1)), so they are tested without randomness.

use serde::{Deserialize, Serialize};
use worker_common::ApiError;

/// Longest `webhook_max_delay_ms` accepted (10 minutes).
pub const MAX_DELAY_LIMIT_MS: u64 = 600_000;
/// Default bound for delayed and held-back (reordered) webhooks.
pub const DEFAULT_MAX_DELAY_MS: u64 = 5_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chaos {
    /// A webhook is delivered twice (two deliveries of the same event id).
    pub webhook_duplicate_rate: f64,
    /// A webhook is held back until a later event has been sent (or
    /// `webhook_max_delay_ms` passed), so it arrives out of order.
    pub webhook_reorder_rate: f64,
    /// A webhook's first attempt waits a random time up to `webhook_max_delay_ms`.
    pub webhook_delay_rate: f64,
    pub webhook_max_delay_ms: u64,
    /// A webhook's first attempt is silently not sent; the retry sends it.
    pub webhook_drop_rate: f64,
    /// A `/v1` request is answered 500 `api_error` before executing.
    pub api_error_rate: f64,
    /// A `/v1` request executes and is stored, but the caller gets a 500.
    pub api_lost_response_rate: f64,
}

impl Default for Chaos {
    fn default() -> Self {
        Chaos {
            webhook_duplicate_rate: 0.0,
            webhook_reorder_rate: 0.0,
            webhook_delay_rate: 0.0,
            webhook_max_delay_ms: DEFAULT_MAX_DELAY_MS,
            webhook_drop_rate: 0.0,
            api_error_rate: 0.0,
            api_lost_response_rate: 0.0,
        }
    }
}

/// The body of `POST /_sandbox/chaos`: every field optional.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChaosPatch {
    pub webhook_duplicate_rate: Option<f64>,
    pub webhook_reorder_rate: Option<f64>,
    pub webhook_delay_rate: Option<f64>,
    pub webhook_max_delay_ms: Option<u64>,
    pub webhook_drop_rate: Option<f64>,
    pub api_error_rate: Option<f64>,
    pub api_lost_response_rate: Option<f64>,
}

impl Chaos {
    /// Applies `patch` after validating every field (422 `invalid_field`
    /// naming the first bad one; nothing changes then).
    pub fn apply(&self, patch: &ChaosPatch) -> Result<Chaos, ApiError> {
        let rate = |name: &str, value: Option<f64>, current: f64| -> Result<f64, ApiError> {
            match value {
                None => Ok(current),
                Some(v) if v.is_finite() && (0.0..=1.0).contains(&v) => Ok(v),
                Some(v) => {
                    Err(ApiError::invalid("invalid_field", format!("{name} must be a number between 0 and 1, not {v}")))
                }
            }
        };
        let max_delay = match patch.webhook_max_delay_ms {
            None => self.webhook_max_delay_ms,
            Some(ms) if ms <= MAX_DELAY_LIMIT_MS => ms,
            Some(ms) => {
                return Err(ApiError::invalid(
                    "invalid_field",
                    format!("webhook_max_delay_ms must be at most {MAX_DELAY_LIMIT_MS}, not {ms}"),
                ))
            }
        };
        Ok(Chaos {
            webhook_duplicate_rate: rate(
                "webhook_duplicate_rate",
                patch.webhook_duplicate_rate,
                self.webhook_duplicate_rate,
            )?,
            webhook_reorder_rate: rate("webhook_reorder_rate", patch.webhook_reorder_rate, self.webhook_reorder_rate)?,
            webhook_delay_rate: rate("webhook_delay_rate", patch.webhook_delay_rate, self.webhook_delay_rate)?,
            webhook_max_delay_ms: max_delay,
            webhook_drop_rate: rate("webhook_drop_rate", patch.webhook_drop_rate, self.webhook_drop_rate)?,
            api_error_rate: rate("api_error_rate", patch.api_error_rate, self.api_error_rate)?,
            api_lost_response_rate: rate(
                "api_lost_response_rate",
                patch.api_lost_response_rate,
                self.api_lost_response_rate,
            )?,
        })
    }

    /// How to deliver one new event, from five draws in [0, 1).
    pub fn plan_delivery(&self, now_ms: i64, draws: [f64; 5]) -> DeliveryPlan {
        let [duplicate, reorder, delay, delay_amount, drop] = draws;
        let max_delay = self.webhook_max_delay_ms as f64;
        let due_ms =
            if hit(self.webhook_delay_rate, delay) { now_ms + (delay_amount * max_delay) as i64 } else { now_ms };
        let held_until_ms =
            hit(self.webhook_reorder_rate, reorder).then(|| due_ms + self.webhook_max_delay_ms.max(1) as i64);
        // The duplicate goes out shortly after the original.
        let duplicate_due_ms =
            hit(self.webhook_duplicate_rate, duplicate).then(|| due_ms + 100 + (delay_amount * 900.0) as i64);
        DeliveryPlan { due_ms, held_until_ms, drop_first: hit(self.webhook_drop_rate, drop), duplicate_due_ms }
    }
}

/// `true` with probability `rate` for a uniform draw in [0, 1).
pub fn hit(rate: f64, draw: f64) -> bool {
    draw < rate
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryPlan {
    /// When the first attempt is due.
    pub due_ms: i64,
    /// Held back (reorder) until a later event has been sent or this time.
    pub held_until_ms: Option<i64>,
    /// The first attempt is not sent.
    pub drop_first: bool,
    /// A second delivery of the same event, due then.
    pub duplicate_due_ms: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patch(json: &str) -> Result<ChaosPatch, ApiError> {
        worker_common::body::parse_json(json.as_bytes())
    }

    #[test]
    fn only_given_fields_change() {
        let start = Chaos::default();
        let next = start.apply(&patch(r#"{"api_error_rate": 0.25, "webhook_max_delay_ms": 100}"#).unwrap()).unwrap();
        assert_eq!(next.api_error_rate, 0.25);
        assert_eq!(next.webhook_max_delay_ms, 100);
        assert_eq!(next.webhook_drop_rate, 0.0);
        let again = next.apply(&patch(r#"{"webhook_drop_rate": 1}"#).unwrap()).unwrap();
        assert_eq!((again.api_error_rate, again.webhook_drop_rate), (0.25, 1.0));
        assert_eq!(again.apply(&ChaosPatch::default()).unwrap(), again);
    }

    #[test]
    fn invalid_settings_are_422_and_change_nothing() {
        let start = Chaos::default();
        for bad in
            [r#"{"api_error_rate": 1.5}"#, r#"{"webhook_drop_rate": -0.1}"#, r#"{"webhook_max_delay_ms": 600001}"#]
        {
            let err = start.apply(&patch(bad).unwrap()).unwrap_err();
            assert_eq!((err.status, err.code), (422, "invalid_field"), "{bad}");
        }
        for bad in [
            r#"{"api_error_rate": "0.5"}"#,
            r#"{"webhook_max_delay_ms": -1}"#,
            r#"{"webhook_max_delay_ms": 1.5}"#,
            r#"{"surprise": 1}"#,
            r#"[]"#,
        ] {
            let err = patch(bad).unwrap_err();
            assert_eq!(err.status, 422, "{bad}");
        }
    }

    #[test]
    fn calm_settings_deliver_at_once_exactly_once() {
        let plan = Chaos::default().plan_delivery(1_000, [0.0, 0.0, 0.0, 0.9, 0.0]);
        assert_eq!(
            plan,
            DeliveryPlan { due_ms: 1_000, held_until_ms: None, drop_first: false, duplicate_due_ms: None }
        );
    }

    #[test]
    fn rates_of_one_always_hit_and_draws_above_the_rate_miss() {
        let all = Chaos {
            webhook_duplicate_rate: 1.0,
            webhook_reorder_rate: 1.0,
            webhook_delay_rate: 1.0,
            webhook_max_delay_ms: 2_000,
            webhook_drop_rate: 1.0,
            ..Chaos::default()
        };
        let plan = all.plan_delivery(1_000, [0.99, 0.99, 0.99, 0.5, 0.99]);
        assert_eq!(plan.due_ms, 2_000);
        assert_eq!(plan.held_until_ms, Some(4_000));
        assert!(plan.drop_first);
        assert!(plan.duplicate_due_ms.is_some_and(|d| d > plan.due_ms));
        let half = Chaos { webhook_drop_rate: 0.5, ..Chaos::default() };
        assert!(half.plan_delivery(0, [0.0, 0.0, 0.0, 0.0, 0.49]).drop_first);
        assert!(!half.plan_delivery(0, [0.0, 0.0, 0.0, 0.0, 0.5]).drop_first);
        assert!(!hit(0.0, 0.0));
    }
}
