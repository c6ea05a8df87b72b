//! Campaigns as operators write them, their validation, and the compact
//! entry the serving snapshot keeps of each active one.
//!
//! Pure: no Workers types, tested natively.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use steps::{Currency, Money};

/// Every bid and budget is in this currency, so eCPMs compare without
/// exchange rates. Other ISO currencies are refused with `unsupported_currency`.
pub const AUCTION_CURRENCY: Currency = Currency::EUR;

/// Sane upper bounds: anything above is a typo, not a campaign.
pub const MAX_BID_MICROS: i64 = 1_000 * MICROS;
pub const MAX_DAILY_BUDGET_MICROS: i64 = 1_000_000 * MICROS;
pub const MAX_LIST: usize = 64;
pub const MAX_AGE_MONTHS: u32 = 600;
pub const MAX_FREQ_WINDOW_SECONDS: u32 = 30 * 24 * 3600;

/// Micro-units of the currency per unit (1 EUR = 1,000,000 µEUR). Integer
/// money inside the auction; `Money` (decimal strings) on the wire.
pub const MICROS: i64 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Active,
    Paused,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BidType {
    /// Price per thousand impressions, charged per impression.
    Cpm,
    /// Price per click, charged per (deduplicated) click.
    Cpc,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bid {
    #[serde(rename = "type")]
    pub kind: BidType,
    pub value: String,
    pub currency: Currency,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgeRange {
    #[serde(default)]
    pub min: u32,
    #[serde(default = "max_age")]
    pub max: u32,
}

fn max_age() -> u32 {
    MAX_AGE_MONTHS
}

/// An omitted or empty list means "any".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Targeting {
    #[serde(default)]
    pub species: Vec<String>,
    #[serde(default)]
    pub breeds: Vec<String>,
    #[serde(default)]
    pub age_months: Option<AgeRange>,
    #[serde(default)]
    pub interests: Vec<String>,
    #[serde(default)]
    pub regions: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrequencyCap {
    pub max: u32,
    pub per_seconds: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Creative {
    pub title: String,
    pub image_url: String,
    pub landing_url: String,
}

/// The body of `PUT /v1/campaigns/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignInput {
    pub advertiser_id: String,
    pub status: Status,
    pub bid: Bid,
    pub daily_budget: Money,
    #[serde(default)]
    pub targeting: Targeting,
    #[serde(default)]
    pub frequency_cap: Option<FrequencyCap>,
    pub creative: Creative,
}

/// A stored campaign: the validated input plus its id and the creative's
/// content-derived id (a changed creative gets a new id, so old click
/// tokens no longer match it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Campaign {
    pub id: String,
    pub creative_id: String,
    #[serde(flatten)]
    pub input: CampaignInput,
    pub updated_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub code: &'static str,
    pub field: &'static str,
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> Invalid {
    Invalid { code: "invalid_field", field, message: message.into() }
}

/// `cmp_` followed by 1-64 of `[A-Za-z0-9_-]`.
pub fn valid_campaign_id(id: &str) -> bool {
    id.strip_prefix("cmp_").is_some_and(|rest| !rest.is_empty() && rest.len() <= 64 && rest.bytes().all(token_byte))
}

/// Bytes allowed in ids that travel inside click tokens (no separators).
pub fn token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// Decimal money string to integer micro-units, exactly.
pub fn to_micros(value: Decimal) -> Option<i64> {
    let scaled = value.checked_mul(Decimal::from(MICROS))?;
    if scaled.fract() != Decimal::ZERO {
        return None;
    }
    i64::try_from(scaled.mantissa() / 10i128.pow(scaled.scale())).ok()
}

/// Micro-units back to `Money` in the auction currency. Callers round to the
/// minor unit first; a sub-cent value is an error, never silently rounded.
pub fn money_of_micros(micros: i64) -> Option<Money> {
    Money::new(Decimal::new(micros, 6), AUCTION_CURRENCY).ok()
}

fn normalize_list(field: &'static str, list: &[String]) -> Result<Vec<String>, Invalid> {
    if list.len() > MAX_LIST {
        return Err(invalid(field, format!("at most {MAX_LIST} entries")));
    }
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for item in list {
        let item = normalize_value(item)
            .ok_or_else(|| invalid(field, format!("{item:?} must be 1-64 characters of a-z, 0-9, '_' or '-'")))?;
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out.sort();
    Ok(out)
}

/// Targeting values are case-insensitive slugs (`golden-retriever`).
pub fn normalize_value(raw: &str) -> Option<String> {
    let v = raw.trim().to_ascii_lowercase();
    (!v.is_empty() && v.len() <= 64 && v.bytes().all(token_byte)).then_some(v)
}

fn check_url(field: &'static str, raw: &str) -> Result<(), Invalid> {
    if raw.len() > 2048 || raw.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(invalid(field, "must be at most 2048 characters, without spaces or control characters"));
    }
    let url = url::Url::parse(raw).map_err(|e| invalid(field, format!("not a URL: {e}")))?;
    if url.scheme() != "https" {
        return Err(invalid(field, "must be an https URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid(field, "must name a host"));
    }
    // `https://brand.example@evil.example` shows one host and opens another.
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(field, "must not carry credentials"));
    }
    Ok(())
}

impl CampaignInput {
    /// Checks every field and normalizes targeting values (lowercase, sorted,
    /// deduplicated). Returns the bid and budget in micro-units.
    pub fn validate(mut self) -> Result<CampaignInput, Invalid> {
        let id_ok = |s: &str| !s.is_empty() && s.len() <= 64 && s.bytes().all(token_byte);
        if !id_ok(&self.advertiser_id) {
            return Err(invalid("advertiser_id", "must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-'"));
        }
        if self.bid.currency != AUCTION_CURRENCY || self.daily_budget.currency() != AUCTION_CURRENCY {
            return Err(Invalid {
                code: "unsupported_currency",
                field: "bid.currency",
                message: format!("bids and budgets must be in {AUCTION_CURRENCY:?}, the auction currency"),
            });
        }
        let bid = self.bid_micros()?;
        if bid <= 0 || bid > MAX_BID_MICROS {
            return Err(invalid("bid.value", "must be positive and at most 1000.00"));
        }
        let budget = to_micros(self.daily_budget.value()).unwrap_or(0);
        if budget <= 0 || budget > MAX_DAILY_BUDGET_MICROS {
            return Err(invalid("daily_budget", "must be positive and at most 1000000.00"));
        }
        let t = &mut self.targeting;
        t.species = normalize_list("targeting.species", &t.species)?;
        t.breeds = normalize_list("targeting.breeds", &t.breeds)?;
        t.interests = normalize_list("targeting.interests", &t.interests)?;
        t.regions = normalize_list("targeting.regions", &t.regions)?;
        if let Some(age) = t.age_months {
            if age.min > age.max || age.max > MAX_AGE_MONTHS {
                return Err(invalid("targeting.age_months", format!("needs min <= max <= {MAX_AGE_MONTHS}")));
            }
        }
        if let Some(cap) = self.frequency_cap {
            if cap.max == 0 || cap.max > 1000 || cap.per_seconds == 0 || cap.per_seconds > MAX_FREQ_WINDOW_SECONDS {
                return Err(invalid(
                    "frequency_cap",
                    format!("max must be 1-1000 and per_seconds 1-{MAX_FREQ_WINDOW_SECONDS}"),
                ));
            }
        }
        let c = &self.creative;
        if c.title.trim().is_empty() || c.title.chars().count() > 120 || c.title.chars().any(char::is_control) {
            return Err(invalid("creative.title", "must be 1-120 characters"));
        }
        check_url("creative.image_url", &c.image_url)?;
        check_url("creative.landing_url", &c.landing_url)?;
        Ok(self)
    }

    /// The bid in micro-units: a positive decimal with at most the
    /// currency's minor-unit precision.
    pub fn bid_micros(&self) -> Result<i64, Invalid> {
        let value: Decimal = self
            .bid
            .value
            .trim()
            .parse()
            .map_err(|_| invalid("bid.value", "must be a decimal string like \"1.50\""))?;
        let money = Money::new(value, self.bid.currency).map_err(|e| invalid("bid.value", e.to_string()))?;
        to_micros(money.value()).ok_or_else(|| invalid("bid.value", "out of range"))
    }
}

/// A short content hash: `crv_` + 16 hex digits of SHA-256.
pub fn creative_id(creative: &Creative) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [&creative.title, &creative.image_url, &creative.landing_url] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    format!("crv_{}", hex::encode(&h.finalize()[..8]))
}

/// What the serving path keeps of one active campaign: everything the
/// auction and the ad answer need, nothing else (no advertiser, no status).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub id: String,
    pub creative_id: String,
    pub kind: BidType,
    pub bid_micros: i64,
    pub daily_budget_micros: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub species: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub breeds: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age: Option<(u32, u32)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interests: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regions: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cap: Option<(u32, u32)>,
    pub title: String,
    pub image_url: String,
}

impl Campaign {
    /// The snapshot entry of an active campaign, `None` when paused.
    pub fn entry(&self) -> Option<Entry> {
        let c = &self.input;
        if c.status != Status::Active {
            return None;
        }
        Some(Entry {
            id: self.id.clone(),
            creative_id: self.creative_id.clone(),
            kind: c.bid.kind,
            bid_micros: c.bid_micros().ok()?,
            daily_budget_micros: to_micros(c.daily_budget.value())?,
            species: c.targeting.species.clone(),
            breeds: c.targeting.breeds.clone(),
            age: c.targeting.age_months.map(|a| (a.min, a.max)),
            interests: c.targeting.interests.clone(),
            regions: c.targeting.regions.clone(),
            cap: c.frequency_cap.map(|f| (f.max, f.per_seconds)),
            title: c.creative.title.clone(),
            image_url: c.creative.image_url.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body() -> serde_json::Value {
        json!({
            "advertiser_id": "adv_1", "status": "active",
            "bid": {"type": "cpc", "value": "0.40", "currency": "EUR"},
            "daily_budget": {"value": "50.00", "currency": "EUR"},
            "targeting": {"species": ["Dog"], "age_months": {"min": 2, "max": 24}},
            "frequency_cap": {"max": 3, "per_seconds": 3600},
            "creative": {"title": "Puppy chow", "image_url": "https://cdn.example/p.png", "landing_url": "https://shop.example/p"}
        })
    }

    fn parse(v: serde_json::Value) -> Result<CampaignInput, Invalid> {
        serde_json::from_value::<CampaignInput>(v).map_err(|e| invalid("body", e.to_string()))?.validate()
    }

    #[test]
    fn a_good_campaign_is_normalized() {
        let c = parse(body()).unwrap();
        assert_eq!(c.targeting.species, vec!["dog"]);
        assert_eq!(c.bid_micros().unwrap(), 400_000);
    }

    #[test]
    fn bad_campaigns_are_refused() {
        let cases: Vec<(&str, serde_json::Value)> = vec![
            ("/creative/landing_url", json!("http://shop.example/p")),
            ("/creative/landing_url", json!("https://shop.example@evil.example/")),
            ("/creative/landing_url", json!("javascript:alert(1)")),
            ("/bid/value", json!("0")),
            ("/bid/value", json!("-1.00")),
            ("/bid/value", json!("0.001")),
            ("/bid/value", json!("5000.00")),
            ("/bid/currency", json!("USD")),
            ("/bid/currency", json!("XXX")),
            ("/targeting/age_months", json!({"min": 30, "max": 2})),
            ("/frequency_cap", json!({"max": 0, "per_seconds": 60})),
            ("/targeting/species", json!(["dog cat"])),
            ("/creative/title", json!("")),
            ("/advertiser_id", json!("")),
        ];
        for (path, value) in cases {
            let mut b = body();
            *b.pointer_mut(path).unwrap() = value.clone();
            assert!(parse(b).is_err(), "{path} = {value} was accepted");
        }
    }

    #[test]
    fn ids_and_micros() {
        assert!(valid_campaign_id("cmp_abc-1"));
        assert!(!valid_campaign_id("cmp_"));
        assert!(!valid_campaign_id("abc"));
        assert!(!valid_campaign_id("cmp_a.b"));
        assert_eq!(to_micros("1.50".parse().unwrap()), Some(1_500_000));
        assert_eq!(money_of_micros(1_500_000).unwrap().to_string(), money_of_micros(1_500_000).unwrap().to_string());
        assert!(money_of_micros(1_500_001).is_none());
    }
}
