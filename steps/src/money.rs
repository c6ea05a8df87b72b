//! Money with an explicit currency and explicit rounding.

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Supported currencies with their minor-unit exponent (ISO 4217).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Currency {
    EUR,
    USD,
    GBP,
    CHF,
    JPY,
}

impl Currency {
    /// Digits after the decimal point in the minor unit (cents: 2, yen: 0).
    pub const fn exponent(self) -> u32 {
        match self {
            Currency::EUR | Currency::USD | Currency::GBP | Currency::CHF => 2,
            Currency::JPY => 0,
        }
    }
    /// Lowercase ISO code, as Stripe expects it.
    pub const fn stripe_code(self) -> &'static str {
        match self {
            Currency::EUR => "eur",
            Currency::USD => "usd",
            Currency::GBP => "gbp",
            Currency::CHF => "chf",
            Currency::JPY => "jpy",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("{value} has more decimals than {currency:?} allows")]
    TooPrecise { value: Decimal, currency: Currency },
    #[error("amounts must not be negative")]
    Negative,
    #[error("currency mismatch: {0:?} vs {1:?}")]
    CurrencyMismatch(Currency, Currency),
    #[error("amount out of range")]
    Overflow,
    #[error("fee rate {0} bps is above 100 %")]
    BadRate(u32),
    #[error("not a decimal: {0}")]
    Parse(String),
}

/// A non-negative amount in one currency, always at the currency's scale.
/// Serialized as `{"value": "120.00", "currency": "EUR"}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Money {
    value: Decimal,
    currency: Currency,
}

impl Money {
    /// Refuses values with sub-minor-unit precision rather than rounding them
    /// silently; rounding only ever happens in [`Money::split_fee`].
    pub fn new(value: Decimal, currency: Currency) -> Result<Money, MoneyError> {
        if value.is_sign_negative() && !value.is_zero() {
            return Err(MoneyError::Negative);
        }
        let exp = currency.exponent();
        let mut v = value.normalize();
        if v.scale() > exp {
            return Err(MoneyError::TooPrecise { value, currency });
        }
        v.rescale(exp);
        Ok(Money { value: v, currency })
    }

    /// From integer minor units (what Stripe sends and expects).
    pub fn from_minor(minor: i64, currency: Currency) -> Result<Money, MoneyError> {
        if minor < 0 {
            return Err(MoneyError::Negative);
        }
        Ok(Money { value: Decimal::new(minor, currency.exponent()), currency })
    }

    /// Integer minor units. Exact: the value is always at the currency's scale.
    pub fn to_minor(&self) -> Result<i64, MoneyError> {
        let mut v = self.value;
        v.rescale(self.currency.exponent());
        i64::try_from(v.mantissa()).map_err(|_| MoneyError::Overflow)
    }

    pub fn value(&self) -> Decimal {
        self.value
    }
    pub fn currency(&self) -> Currency {
        self.currency
    }
    pub fn zero(currency: Currency) -> Money {
        Money { value: Decimal::new(0, currency.exponent()), currency }
    }

    pub fn checked_sub(self, other: Money) -> Result<Money, MoneyError> {
        if self.currency != other.currency {
            return Err(MoneyError::CurrencyMismatch(self.currency, other.currency));
        }
        let v = self.value.checked_sub(other.value).ok_or(MoneyError::Overflow)?;
        Money::new(v, self.currency)
    }

    /// Splits a total into the platform fee and the seller payout.
    ///
    /// The fee is `total * fee_bps / 10_000` rounded **once**, to the
    /// currency's minor unit, **half-up** (midpoint away from zero: 0.125 EUR
    /// -> 0.13 EUR). The payout is `total - fee`, so `fee + payout == total`
    /// exactly, always.
    pub fn split_fee(self, fee_bps: u32) -> Result<Split, MoneyError> {
        if fee_bps > 10_000 {
            return Err(MoneyError::BadRate(fee_bps));
        }
        let raw = self
            .value
            .checked_mul(Decimal::from(fee_bps))
            .and_then(|v| v.checked_div(Decimal::from(10_000u32)))
            .ok_or(MoneyError::Overflow)?;
        let fee_value = raw.round_dp_with_strategy(self.currency.exponent(), RoundingStrategy::MidpointAwayFromZero);
        let fee = Money::new(fee_value, self.currency)?;
        let payout = self.checked_sub(fee)?;
        Ok(Split { total: self, fee, payout })
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}", self.value, self.currency)
    }
}

/// A total and its two parts; `fee + payout == total` by construction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    pub total: Money,
    pub fee: Money,
    pub payout: Money,
}

#[derive(Serialize, Deserialize)]
struct MoneyRepr {
    value: String,
    currency: Currency,
}

impl Serialize for Money {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut v = self.value;
        v.rescale(self.currency.exponent());
        MoneyRepr { value: v.to_string(), currency: self.currency }.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = MoneyRepr::deserialize(d)?;
        let v: Decimal = r.value.parse().map_err(|_| serde::de::Error::custom(MoneyError::Parse(r.value.clone())))?;
        Money::new(v, r.currency).map_err(serde::de::Error::custom)
    }
}
