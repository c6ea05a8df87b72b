//! Listings: validation of what sellers submit, and their rows.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use steps::money::{Currency, Money};
use tokio_postgres::Row;
use worker_common::ApiError;

/// The species a listing can be for. Products and services name the species
/// they are for.
pub const SPECIES: &[&str] = &["dog", "cat", "bird", "fish", "reptile", "rabbit", "rodent", "horse", "other"];

/// A price as clients send it: `{"value": "120.00", "currency": "EUR"}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoneyInput {
    pub value: String,
    pub currency: String,
}

impl MoneyInput {
    /// A positive amount in a known currency with no more decimals than the
    /// currency has (1.005 EUR is refused, not rounded: the seller must say
    /// what they mean).
    pub fn to_money(&self, field: &str) -> Result<Money, ApiError> {
        let currency: Currency =
            serde_json::from_value(Value::String(self.currency.to_ascii_uppercase())).map_err(|_| {
                ApiError::invalid(
                    "unknown_currency",
                    format!("{field}.currency {:?} is not a supported currency", self.currency),
                )
            })?;
        let raw = self.value.trim();
        let plain = raw.split_once('.').map_or(raw, |(int, frac)| if frac.is_empty() { "" } else { int });
        let digits_only = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let well_formed =
            digits_only(plain) && raw.split_once('.').is_none_or(|(_, frac)| digits_only(frac)) && raw.len() <= 24;
        if !well_formed {
            return Err(ApiError::invalid(
                "invalid_amount",
                format!("{field}.value {:?} must be a plain decimal such as \"120.00\"", self.value),
            ));
        }
        let value: Decimal = raw.parse().map_err(|_| {
            ApiError::invalid("invalid_amount", format!("{field}.value {:?} is not a decimal number", self.value))
        })?;
        if value <= Decimal::ZERO {
            return Err(ApiError::invalid("invalid_amount", format!("{field}.value must be positive")));
        }
        if value.normalize().scale() > currency.exponent() {
            return Err(ApiError::invalid(
                "invalid_amount",
                format!("{field}.value has more decimals than {} allows ({})", self.currency, currency.exponent()),
            ));
        }
        Money::new(value, currency).map_err(|e| ApiError::invalid("invalid_amount", format!("{field}: {e}")))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewListingInput {
    pub seller_id: String,
    pub seller_account: String,
    pub title: String,
    #[serde(default)]
    pub description: String,
    pub species: String,
    #[serde(default)]
    pub breed: Option<String>,
    #[serde(default)]
    pub age_months: Option<i64>,
    pub region: String,
    pub price: MoneyInput,
    #[serde(default = "one")]
    pub quantity: i64,
}

fn one() -> i64 {
    1
}

/// A listing that passed validation.
#[derive(Debug)]
pub struct NewListing {
    pub seller_id: String,
    pub seller_account: String,
    pub title: String,
    pub description: String,
    pub species: String,
    pub breed: Option<String>,
    pub age_months: Option<i32>,
    pub region: String,
    pub price: Money,
    pub quantity: i32,
}

fn text(field: &str, value: &str, max: usize) -> Result<String, ApiError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(ApiError::invalid("invalid_field", format!("{field} must not be empty")));
    }
    if value.chars().count() > max {
        return Err(ApiError::invalid("invalid_field", format!("{field} is longer than {max} characters")));
    }
    if value.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(ApiError::invalid("invalid_field", format!("{field} contains control characters")));
    }
    Ok(value.to_string())
}

fn identifier(field: &str, value: &str) -> Result<String, ApiError> {
    let value = text(field, value, 64)?;
    if !value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(ApiError::invalid(
            "invalid_field",
            format!("{field} may only contain letters, digits, '_' and '-'"),
        ));
    }
    Ok(value)
}

impl NewListingInput {
    pub fn validate(self) -> Result<NewListing, ApiError> {
        let seller_account = identifier("seller_account", &self.seller_account)?;
        if !seller_account.starts_with("acct_") {
            return Err(ApiError::invalid("invalid_field", "seller_account must be a connected account id (acct_...)"));
        }
        let species = self.species.trim().to_ascii_lowercase();
        if !SPECIES.contains(&species.as_str()) {
            return Err(ApiError::invalid("invalid_field", format!("species must be one of {}", SPECIES.join(", "))));
        }
        let age_months = match self.age_months {
            None => None,
            Some(months @ 0..=600) => Some(months as i32),
            Some(_) => return Err(ApiError::invalid("invalid_field", "age_months must be between 0 and 600")),
        };
        if !(1..=100_000).contains(&self.quantity) {
            return Err(ApiError::invalid("invalid_quantity", "quantity must be between 1 and 100000"));
        }
        let description = self.description.trim();
        if description.chars().count() > 5000 {
            return Err(ApiError::invalid("invalid_field", "description is longer than 5000 characters"));
        }
        Ok(NewListing {
            seller_id: identifier("seller_id", &self.seller_id)?,
            seller_account,
            title: text("title", &self.title, 200)?,
            description: description.to_string(),
            species,
            breed: self.breed.as_deref().map(|b| text("breed", b, 100)).transpose()?,
            age_months,
            region: text("region", &self.region, 64)?.to_ascii_lowercase(),
            price: self.price.to_money("price")?,
            quantity: self.quantity as i32,
        })
    }
}

/// `PATCH /v1/listings/{id}`: what an operator may change after creation.
/// Price and quantity are not among them: running purchases rely on both.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListingChangeInput {
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
}

#[derive(Debug)]
pub struct ListingChange {
    pub title: Option<String>,
    pub description: Option<String>,
    pub status: Option<String>,
}

impl ListingChangeInput {
    pub fn validate(self) -> Result<ListingChange, ApiError> {
        if self.title.is_none() && self.description.is_none() && self.status.is_none() {
            return Err(ApiError::invalid("invalid_field", "nothing to change: give title, description or status"));
        }
        let description = match self.description {
            None => None,
            Some(d) if d.trim().chars().count() > 5000 => {
                return Err(ApiError::invalid("invalid_field", "description is longer than 5000 characters"))
            }
            Some(d) => Some(d.trim().to_string()),
        };
        let status = match self.status.as_deref() {
            None => None,
            Some(s @ ("active" | "removed")) => Some(s.to_string()),
            Some(_) => return Err(ApiError::invalid("invalid_field", "status must be active or removed")),
        };
        Ok(ListingChange {
            title: self.title.as_deref().map(|t| text("title", t, 200)).transpose()?,
            description,
            status,
        })
    }
}

/// Columns every listing query selects, in the order [`to_json`] reads them.
pub const COLUMNS: &str = "id, seller_id, seller_account, title, description, species, breed, age_months, region, \
    price_minor, currency, quantity, reserved, sold, status, \
    to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS created_at, \
    to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS updated_at";

#[derive(Debug, Serialize)]
pub struct Listing {
    pub id: String,
    pub seller_id: String,
    pub seller_account: String,
    pub title: String,
    pub description: String,
    pub species: String,
    pub breed: Option<String>,
    pub age_months: Option<i32>,
    pub region: String,
    pub price: Money,
    pub quantity: i32,
    pub available: i32,
    pub status: String,
    pub created_at: String,
    pub updated_at: String,
}

pub fn from_row(row: &Row) -> Result<Listing, ApiError> {
    let db = |e: tokio_postgres::Error| ApiError::internal(format!("unexpected listing row: {e}"));
    let currency: String = row.try_get("currency").map_err(db)?;
    let currency: Currency = serde_json::from_value(json!(currency))
        .map_err(|_| ApiError::internal(format!("stored currency {currency:?} is unknown")))?;
    let price_minor: i64 = row.try_get("price_minor").map_err(db)?;
    let quantity: i32 = row.try_get("quantity").map_err(db)?;
    let reserved: i32 = row.try_get("reserved").map_err(db)?;
    let sold: i32 = row.try_get("sold").map_err(db)?;
    Ok(Listing {
        id: row.try_get("id").map_err(db)?,
        seller_id: row.try_get("seller_id").map_err(db)?,
        seller_account: row.try_get("seller_account").map_err(db)?,
        title: row.try_get("title").map_err(db)?,
        description: row.try_get("description").map_err(db)?,
        species: row.try_get("species").map_err(db)?,
        breed: row.try_get("breed").map_err(db)?,
        age_months: row.try_get("age_months").map_err(db)?,
        region: row.try_get("region").map_err(db)?,
        price: Money::from_minor(price_minor, currency).map_err(|e| ApiError::internal(e.to_string()))?,
        quantity,
        available: quantity - reserved - sold,
        status: row.try_get("status").map_err(db)?,
        created_at: row.try_get("created_at").map_err(db)?,
        updated_at: row.try_get("updated_at").map_err(db)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(patch: Value) -> NewListingInput {
        let mut body = json!({
            "seller_id": "sel_1", "seller_account": "acct_1", "title": "Aquarium heater 50W",
            "species": "fish", "region": "Lyon", "price": {"value": "19.90", "currency": "EUR"}
        });
        if let (Some(target), Value::Object(patch)) = (body.as_object_mut(), patch) {
            target.extend(patch);
        }
        serde_json::from_value(body).expect("valid shape")
    }

    #[test]
    fn defaults_and_normalisation() {
        let listing = input(json!({})).validate().expect("valid");
        assert_eq!(listing.quantity, 1);
        assert_eq!(listing.region, "lyon");
        assert_eq!(listing.price.to_minor().ok(), Some(1990));
        assert_eq!(listing.breed, None);
    }

    #[test]
    fn money_rules() {
        let code = |value: &str, currency: &str| {
            MoneyInput { value: value.into(), currency: currency.into() }.to_money("price").err().map(|e| e.code)
        };
        assert_eq!(code("19.90", "eur"), None);
        assert_eq!(code("19.9", "EUR"), None);
        assert_eq!(code("19.900", "EUR"), None, "trailing zeros are not extra precision");
        assert_eq!(code("19.901", "EUR"), Some("invalid_amount"));
        assert_eq!(code("0", "EUR"), Some("invalid_amount"));
        assert_eq!(code("1e3", "EUR"), Some("invalid_amount"));
        assert_eq!(code("100", "JPY"), None);
        assert_eq!(code("100.5", "JPY"), Some("invalid_amount"));
        assert_eq!(code("10", "BTC"), Some("unknown_currency"));
    }

    #[test]
    fn refusals() {
        let code = |patch: Value| input(patch).validate().err().map(|e| e.code);
        assert_eq!(code(json!({"quantity": 0})), Some("invalid_quantity"));
        assert_eq!(code(json!({"quantity": 100_001})), Some("invalid_quantity"));
        assert_eq!(code(json!({"age_months": -1})), Some("invalid_field"));
        assert_eq!(code(json!({"seller_account": "acct_1; DROP TABLE"})), Some("invalid_field"));
        assert_eq!(code(json!({"title": "   "})), Some("invalid_field"));
        assert_eq!(code(json!({"title": "x".repeat(201)})), Some("invalid_field"));
        assert_eq!(code(json!({"species": "Fish"})), None, "species is case-insensitive");
    }
}
