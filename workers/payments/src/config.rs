//! The purchase saga's deadlines and retry policies, read from wrangler vars.
//!
//! Every var is optional; an unset var keeps the production default of
//! [`PurchaseConfig::default`]. Durations are whole seconds so that a test
//! stack can use seconds where production uses days. A retry policy is one
//! string of `key=value` pairs, e.g.
//! `"max_attempts=6 initial_delay_ms=2000 multiplier=2 max_delay_ms=600000 jitter=0.2"`
//! (keys left out keep their default).

use orchestrator::{Millis, RetryPolicy};
use steps::PurchaseConfig;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration var {var}: {problem}")]
pub struct ConfigError {
    pub var: &'static str,
    pub problem: String,
}

pub const INSPECTION_WINDOW: &str = "INSPECTION_WINDOW_SECONDS";
pub const HOLD_LIFETIME: &str = "HOLD_LIFETIME_SECONDS";
pub const HOLD_SAFETY_MARGIN: &str = "HOLD_SAFETY_MARGIN_SECONDS";
pub const FEE_BPS: &str = "PLATFORM_FEE_BPS";
pub const CALL_TIMEOUT: &str = "CALL_TIMEOUT_SECONDS";
pub const MARKETPLACE_RETRY: &str = "MARKETPLACE_RETRY";
pub const PAYMENT_RETRY: &str = "PAYMENT_RETRY";
pub const COMPENSATION_RETRY: &str = "COMPENSATION_RETRY";

/// Builds the saga config from `var` (a lookup of wrangler vars).
pub fn purchase_config(var: impl Fn(&str) -> Option<String>) -> Result<PurchaseConfig, ConfigError> {
    let mut c = PurchaseConfig::default();
    let seconds = |name: &'static str, default: Millis| -> Result<Millis, ConfigError> {
        match var(name) {
            None => Ok(default),
            Some(text) => text
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|s| *s > 0 && *s <= 400 * 86_400)
                .map(Millis::seconds)
                .ok_or_else(|| ConfigError {
                    var: name,
                    problem: format!("{text:?} is not a whole number of seconds in 1..=34560000"),
                }),
        }
    };
    c.inspection_window = seconds(INSPECTION_WINDOW, c.inspection_window)?;
    c.hold_lifetime = seconds(HOLD_LIFETIME, c.hold_lifetime)?;
    c.hold_safety_margin = seconds(HOLD_SAFETY_MARGIN, c.hold_safety_margin)?;
    c.call_timeout = seconds(CALL_TIMEOUT, c.call_timeout)?;
    if let Some(text) = var(FEE_BPS) {
        c.fee_bps = text.trim().parse::<u32>().ok().filter(|bps| *bps <= 10_000).ok_or_else(|| ConfigError {
            var: FEE_BPS,
            problem: format!("{text:?} is not basis points in 0..=10000"),
        })?;
    }
    for (name, policy) in [
        (MARKETPLACE_RETRY, &mut c.marketplace_retry),
        (PAYMENT_RETRY, &mut c.payment_retry),
        (COMPENSATION_RETRY, &mut c.compensation_retry),
    ] {
        if let Some(text) = var(name) {
            *policy = retry_policy(&text, *policy).map_err(|problem| ConfigError { var: name, problem })?;
        }
    }
    if c.hold_safety_margin >= c.hold_lifetime {
        return Err(ConfigError { var: HOLD_SAFETY_MARGIN, problem: "must be shorter than the hold lifetime".into() });
    }
    Ok(c)
}

fn retry_policy(text: &str, mut policy: RetryPolicy) -> Result<RetryPolicy, String> {
    for pair in text.split_whitespace() {
        let (key, value) = pair.split_once('=').ok_or_else(|| format!("{pair:?} is not key=value"))?;
        let int = || value.parse::<u64>().map_err(|_| format!("{key}: {value:?} is not a whole number"));
        let float = || {
            value
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .ok_or_else(|| format!("{key}: {value:?} is not a number"))
        };
        match key {
            "max_attempts" => {
                policy.max_attempts = u32::try_from(int()?)
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or("max_attempts must be 1..=1000")?
            }
            "initial_delay_ms" => policy.initial_delay = Millis(int()?),
            "max_delay_ms" => policy.max_delay = Millis(int()?),
            "multiplier" => {
                policy.multiplier = float().and_then(|m| {
                    if (1.0..=10.0).contains(&m) {
                        Ok(m)
                    } else {
                        Err("multiplier must be 1..=10".into())
                    }
                })?
            }
            "jitter" => {
                policy.jitter = float().and_then(|j| {
                    if (0.0..=1.0).contains(&j) {
                        Ok(j)
                    } else {
                        Err("jitter must be 0..=1".into())
                    }
                })?
            }
            other => {
                return Err(format!(
                    "unknown key {other:?} (max_attempts, initial_delay_ms, multiplier, max_delay_ms, jitter)"
                ))
            }
        }
    }
    if policy.max_delay < policy.initial_delay {
        return Err("max_delay_ms is below initial_delay_ms".into());
    }
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn unset_vars_keep_production_defaults() {
        assert_eq!(purchase_config(vars(&[])).unwrap(), PurchaseConfig::default());
    }

    #[test]
    fn test_stacks_can_use_seconds() {
        let c = purchase_config(vars(&[
            (INSPECTION_WINDOW, "8"),
            (CALL_TIMEOUT, "5"),
            (FEE_BPS, "250"),
            (PAYMENT_RETRY, "max_attempts=3 initial_delay_ms=200 multiplier=1.5 max_delay_ms=1000 jitter=0"),
        ]))
        .unwrap();
        assert_eq!(c.inspection_window, Millis::seconds(8));
        assert_eq!(c.call_timeout, Millis::seconds(5));
        assert_eq!(c.fee_bps, 250);
        assert_eq!(c.payment_retry.max_attempts, 3);
        assert_eq!(c.payment_retry.initial_delay, Millis(200));
        assert_eq!(c.payment_retry.multiplier, 1.5);
        assert_eq!(c.marketplace_retry, PurchaseConfig::default().marketplace_retry);
    }

    #[test]
    fn bad_values_name_the_var() {
        for (var, value) in [
            (INSPECTION_WINDOW, "three days"),
            (INSPECTION_WINDOW, "0"),
            (FEE_BPS, "10001"),
            (PAYMENT_RETRY, "max_attempts=0"),
            (PAYMENT_RETRY, "speed=fast"),
            (COMPENSATION_RETRY, "initial_delay_ms=5000 max_delay_ms=10"),
            (HOLD_SAFETY_MARGIN, "700000"),
        ] {
            let err = purchase_config(vars(&[(var, value)])).unwrap_err();
            assert_eq!(err.var, var, "{value}");
        }
    }
}
