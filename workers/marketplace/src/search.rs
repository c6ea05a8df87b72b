//! `GET /v1/search`: hybrid search over active listings.
//!
//! Two rankings of at most [`DEPTH`] listings each, both with the filters
//! applied inside the scan: pgvector's HNSW index (cosine distance to the
//! query's embedding, same model only; iterative index scans keep reading
//! the graph until enough rows pass the filters) and PostgreSQL full-text
//! search (listings with every word of the query, by cover density). They
//! are fused by reciprocal rank fusion, `score = Σ 1 / (RRF_K + rank)`, so an exact word (a breed name)
//! that the vector side ranks low is not lost, and a paraphrase or a
//! partial match that full-text misses is still found. Misspelled words are corrected against
//! the listings' own vocabulary first (`search_spell`). See docs/search.md.

use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::{json, Value};
use steps::money::{Currency, Money};
use tokio_postgres::types::ToSql;
use worker_common::ApiError;

use crate::listing::{MoneyInput, SPECIES};
use crate::search_spell;
use crate::search_sql::{self, DEPTH, FOR_SALE};

pub const MAX_QUERY_CHARS: usize = 512;
pub const MAX_LIMIT: i64 = 50;
pub const DEFAULT_LIMIT: i64 = 10;

/// A validated search request.
#[derive(Debug, PartialEq)]
pub struct Query {
    pub q: String,
    pub species: Option<String>,
    pub breed: Option<String>,
    pub region: Option<String>,
    pub currency: Option<Currency>,
    pub min_minor: Option<i64>,
    pub max_minor: Option<i64>,
    pub limit: i64,
    pub offset: i64,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::invalid("invalid_field", message)
}

fn filter_text(name: &str, value: &str, max: usize) -> Result<String, ApiError> {
    let value = value.trim();
    if value.is_empty() || value.chars().count() > max || value.chars().any(char::is_control) {
        return Err(invalid(format!("{name} must be 1–{max} printable characters")));
    }
    Ok(value.to_string())
}

impl Query {
    /// Parses the query string. Unknown or repeated parameters are refused,
    /// like unknown fields in bodies: a typo must not silently widen a search.
    pub fn parse<'a>(pairs: impl Iterator<Item = (String, String)> + 'a) -> Result<Query, ApiError> {
        let mut seen = std::collections::HashMap::new();
        for (key, value) in pairs {
            const KNOWN: &[&str] =
                &["q", "species", "breed", "region", "min_price", "max_price", "currency", "limit", "cursor"];
            if !KNOWN.contains(&key.as_str()) {
                return Err(invalid(format!("unknown parameter {key:?}; known: {}", KNOWN.join(", "))));
            }
            if seen.insert(key.clone(), value).is_some() {
                return Err(invalid(format!("parameter {key:?} is given twice")));
            }
        }
        let q = seen.remove("q").unwrap_or_default();
        let q = q.trim();
        if q.is_empty() {
            return Err(ApiError::invalid("invalid_query", "q must not be empty"));
        }
        if q.chars().count() > MAX_QUERY_CHARS {
            return Err(ApiError::invalid("query_too_long", format!("q is longer than {MAX_QUERY_CHARS} characters")));
        }
        if q.chars().any(char::is_control) {
            return Err(ApiError::invalid("invalid_query", "q contains control characters"));
        }
        let species = match seen.remove("species") {
            None => None,
            Some(s) => {
                let s = s.trim().to_ascii_lowercase();
                if !SPECIES.contains(&s.as_str()) {
                    return Err(invalid(format!("species must be one of {}", SPECIES.join(", "))));
                }
                Some(s)
            }
        };
        let breed = seen.remove("breed").map(|b| filter_text("breed", &b, 100)).transpose()?;
        let region =
            seen.remove("region").map(|r| filter_text("region", &r, 64).map(|r| r.to_ascii_lowercase())).transpose()?;
        let currency = match seen.remove("currency") {
            None => None,
            Some(c) => Some(serde_json::from_value::<Currency>(Value::String(c.trim().to_ascii_uppercase())).map_err(
                |_| ApiError::invalid("unknown_currency", format!("currency {c:?} is not a supported currency")),
            )?),
        };
        let price = |name: &str, raw: Option<String>| -> Result<Option<i64>, ApiError> {
            let Some(raw) = raw else { return Ok(None) };
            let Some(currency) = currency else {
                return Err(invalid(format!(
                    "{name} needs currency: prices in different currencies are not comparable"
                )));
            };
            let code = currency.stripe_code().to_ascii_uppercase();
            // Zero is a valid lower bound, though not a valid price.
            if raw.trim().parse::<Decimal>().is_ok_and(|d| d.is_zero()) && !raw.contains(['e', 'E']) {
                return Ok(Some(0));
            }
            let money = MoneyInput { value: raw, currency: code }.to_money(name).map_err(|e| invalid(e.message))?;
            money.to_minor().map(Some).map_err(|e| invalid(format!("{name}: {e}")))
        };
        let min_minor = price("min_price", seen.remove("min_price"))?;
        let max_minor = price("max_price", seen.remove("max_price"))?;
        if let (Some(min), Some(max)) = (min_minor, max_minor) {
            if min > max {
                return Err(invalid("min_price is above max_price"));
            }
        }
        let limit = match seen.remove("limit") {
            None => DEFAULT_LIMIT,
            Some(l) => match l.trim().parse::<i64>() {
                Ok(n @ 1..=MAX_LIMIT) => n,
                _ => return Err(invalid(format!("limit must be an integer from 1 to {MAX_LIMIT}"))),
            },
        };
        let offset = match seen.remove("cursor") {
            None => 0,
            Some(c) => decode_cursor(&c)
                .ok_or_else(|| ApiError::invalid("invalid_cursor", "cursor is not one this API returned"))?,
        };
        Ok(Query { q: q.to_string(), species, breed, region, currency, min_minor, max_minor, limit, offset })
    }
}

/// Cursors are opaque to clients: `c` + the offset into the fused list, in
/// base 36. A cursor past the fused list is refused.
pub fn encode_cursor(offset: i64) -> String {
    let mut n = offset.max(0) as u64;
    let mut digits = Vec::new();
    loop {
        digits.push(std::char::from_digit((n % 36) as u32, 36).unwrap_or('0'));
        n /= 36;
        if n == 0 {
            break;
        }
    }
    digits.reverse();
    format!("c{}", digits.into_iter().collect::<String>())
}

pub fn decode_cursor(raw: &str) -> Option<i64> {
    let digits = raw.strip_prefix('c')?;
    if digits.is_empty() || digits.len() > 4 {
        return None;
    }
    let offset = i64::from_str_radix(digits, 36).ok()?;
    (1..2 * DEPTH).contains(&offset).then_some(offset)
}

/// The filters shared by both rankings, as SQL whose parameters are
/// numbered after those already in `params`. Listings that are removed or sold out never match.
fn filters<'a>(query: &'a Query, params: &mut Vec<&'a (dyn ToSql + Sync)>) -> String {
    let mut sql = String::from(FOR_SALE);
    let mut push = |sql: &mut String, template: &str, value: &'a (dyn ToSql + Sync)| {
        params.push(value);
        sql.push_str(&format!(" AND {}", template.replace('?', &format!("${}", params.len()))));
    };
    if let Some(species) = &query.species {
        push(&mut sql, "species = ?", species);
    }
    if let Some(breed) = &query.breed {
        push(&mut sql, "lower(breed) = lower(?)", breed);
    }
    if let Some(region) = &query.region {
        push(&mut sql, "region = ?", region);
    }
    if let Some(min) = &query.min_minor {
        push(&mut sql, "price_minor >= ?", min);
    }
    if let Some(max) = &query.max_minor {
        push(&mut sql, "price_minor <= ?", max);
    }
    sql
}

#[derive(Debug, Serialize)]
pub struct Hit {
    pub id: String,
    pub title: String,
    pub price: Money,
    pub species: String,
    pub region: String,
    pub score: f64,
}

/// The query with its misspelled words corrected against the listings'
/// vocabulary (the query itself when nothing needs correcting).
pub async fn correct(client: &tokio_postgres::Client, q: &str) -> Result<String, tokio_postgres::Error> {
    let rows = client.query(search_spell::CANDIDATES_SQL, &[&q]).await?;
    let mut fixes = std::collections::HashMap::new();
    for row in rows {
        let word: String = row.try_get(0)?;
        let candidates: Vec<String> = row.try_get(1)?;
        if let Some(fix) = search_spell::best(&word, &candidates) {
            fixes.insert(word, fix.to_string());
        }
    }
    Ok(search_spell::apply(q, &fixes))
}

/// Runs the search. `corrected` is the query with its misspellings
/// corrected (`search_spell::correct`; the query itself when there were
/// none); `embedding` is the corrected query's vector and its model's name.
pub async fn run(
    client: &mut tokio_postgres::Client,
    query: &Query,
    corrected: &str,
    embedding: Option<(&str, &str)>,
) -> Result<Value, ApiError> {
    let db = |e: tokio_postgres::Error| ApiError::unavailable("database_error", format!("PostgreSQL: {e}"));
    let currency_code = query.currency.map(|c| c.stripe_code().to_ascii_uppercase());
    let (vector, model) = embedding.unwrap_or(("", ""));
    let corrected = corrected.to_string();
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&query.q, &corrected];
    let mut where_sql = filters(query, &mut params);
    if let Some(code) = &currency_code {
        params.push(code);
        where_sql.push_str(&format!(" AND currency = ${}", params.len()));
    }
    let vector_params = embedding.map(|_| {
        params.push(&vector);
        params.push(&model);
        (params.len() - 1, params.len())
    });
    let sql = search_sql::hybrid(&where_sql, vector_params, query.limit + 1, query.offset);
    let tx = client.transaction().await.map_err(db)?;
    tx.batch_execute(search_sql::SCAN_SETTINGS).await.map_err(db)?;
    let rows = tx.query(&sql, &params).await.map_err(db)?;
    tx.commit().await.map_err(db)?;
    let mut items = Vec::with_capacity(rows.len());
    for row in rows.iter().take(query.limit as usize) {
        let bad = |e: tokio_postgres::Error| ApiError::internal(format!("unexpected search row: {e}"));
        let currency: String = row.try_get("currency").map_err(bad)?;
        let currency: Currency = serde_json::from_value(json!(currency))
            .map_err(|_| ApiError::internal(format!("stored currency {currency:?} is unknown")))?;
        let price_minor: i64 = row.try_get("price_minor").map_err(bad)?;
        items.push(Hit {
            id: row.try_get("id").map_err(bad)?,
            title: row.try_get("title").map_err(bad)?,
            price: Money::from_minor(price_minor, currency).map_err(|e| ApiError::internal(e.to_string()))?,
            species: row.try_get("species").map_err(bad)?,
            region: row.try_get("region").map_err(bad)?,
            score: row.try_get("score").map_err(bad)?,
        });
    }
    let next = query.offset + query.limit;
    let next_cursor = (rows.len() as i64 > query.limit && next < 2 * DEPTH).then(|| encode_cursor(next));
    Ok(json!({ "items": items, "next_cursor": next_cursor }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<Query, ApiError> {
        Query::parse(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    fn code(pairs: &[(&str, &str)]) -> Option<&'static str> {
        parse(pairs).err().map(|e| e.code)
    }

    #[test]
    fn defaults() {
        let q = parse(&[("q", "  aquarium heater ")]).expect("valid");
        assert_eq!((q.q.as_str(), q.limit, q.offset, q.species.is_none()), ("aquarium heater", DEFAULT_LIMIT, 0, true));
    }

    #[test]
    fn bad_queries_have_stable_codes() {
        assert_eq!(code(&[]), Some("invalid_query"));
        assert_eq!(code(&[("q", "   ")]), Some("invalid_query"));
        assert_eq!(code(&[("q", "a\u{0}b")]), Some("invalid_query"));
        assert_eq!(code(&[("q", &"x".repeat(513))]), Some("query_too_long"));
        assert_eq!(code(&[("q", &"é".repeat(512))]), None, "characters, not bytes");
        assert_eq!(code(&[("q", "cat"), ("species", "dragon")]), Some("invalid_field"));
        assert_eq!(code(&[("q", "cat"), ("limit", "0")]), Some("invalid_field"));
        assert_eq!(code(&[("q", "cat"), ("limit", "51")]), Some("invalid_field"));
        assert_eq!(code(&[("q", "cat"), ("limit", "ten")]), Some("invalid_field"));
        assert_eq!(code(&[("q", "cat"), ("max_price", "10")]), Some("invalid_field"), "a price needs a currency");
        assert_eq!(code(&[("q", "cat"), ("max_price", "10"), ("currency", "BTC")]), Some("unknown_currency"));
        assert_eq!(code(&[("q", "cat"), ("max_price", "-1"), ("currency", "EUR")]), Some("invalid_field"));
        assert_eq!(code(&[("q", "cat"), ("max_price", "1e3"), ("currency", "EUR")]), Some("invalid_field"));
        assert_eq!(
            code(&[("q", "cat"), ("min_price", "20"), ("max_price", "10"), ("currency", "EUR")]),
            Some("invalid_field")
        );
        assert_eq!(code(&[("q", "cat"), ("cursor", "nope")]), Some("invalid_cursor"));
        assert_eq!(code(&[("q", "cat"), ("cursor", "c0")]), Some("invalid_cursor"));
        assert_eq!(code(&[("q", "cat"), ("sort", "price")]), Some("invalid_field"));
        assert_eq!(code(&[("q", "cat"), ("q", "dog")]), Some("invalid_field"));
    }

    #[test]
    fn filters_are_normalised() {
        let q = parse(&[
            ("q", "cat"),
            ("species", "Cat"),
            ("region", "Berlin"),
            ("min_price", "0"),
            ("max_price", "12.5"),
            ("currency", "eur"),
        ])
        .expect("valid");
        assert_eq!((q.species.as_deref(), q.region.as_deref()), (Some("cat"), Some("berlin")));
        assert_eq!((q.min_minor, q.max_minor, q.currency), (Some(0), Some(1250), Some(Currency::EUR)));
        let jpy = parse(&[("q", "cat"), ("max_price", "1500"), ("currency", "JPY")]).expect("valid");
        assert_eq!(jpy.max_minor, Some(1500));
    }

    #[test]
    fn cursors_round_trip_and_stay_in_range() {
        for offset in [1, 10, 35, 36, 150, 2 * DEPTH - 1] {
            assert_eq!(decode_cursor(&encode_cursor(offset)), Some(offset));
        }
        assert_eq!(decode_cursor(&encode_cursor(2 * DEPTH)), None);
        assert_eq!(decode_cursor("c"), None);
        assert_eq!(decode_cursor("czzzzzzzzz"), None);
    }

    #[test]
    fn filters_number_their_parameters_in_order() {
        let q = parse(&[
            ("q", "cat"),
            ("species", "cat"),
            ("breed", "Maine Coon"),
            ("max_price", "100"),
            ("currency", "EUR"),
        ])
        .expect("valid");
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&q.q, &q.q];
        let sql = filters(&q, &mut params);
        assert_eq!(params.len(), 5);
        assert!(
            sql.contains("species = $3")
                && sql.contains("lower(breed) = lower($4)")
                && sql.contains("price_minor <= $5"),
            "{sql}"
        );
    }
}
