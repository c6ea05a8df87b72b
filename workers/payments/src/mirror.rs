//! The operators' view across all purchases: each Durable Object mirrors its
//! summary to PostgreSQL (`purchases`, migrations/0003), and the ops listing
//! reads it. A write carries the saga's revision and only ever replaces an
//! older one, so retried or reordered writes never move the mirror backwards.

use serde_json::{json, Value};
use steps::PurchaseSaga;
use worker_common::{db, ApiError};

use crate::record::{rfc3339, Record};

pub struct Row {
    pub id: String,
    pub state: &'static str,
    pub listing_id: String,
    pub buyer_id: String,
    pub seller_id: String,
    pub quantity: i32,
    pub amount_minor: i64,
    pub currency: String,
    pub revision: u64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl Row {
    pub fn of(saga: &PurchaseSaga, r: &Record) -> Row {
        let o = &r.purchase.order;
        Row {
            id: o.purchase_id.clone(),
            state: saga.state(&r.purchase).as_str(),
            listing_id: o.listing_id.clone(),
            buyer_id: o.buyer_id.clone(),
            seller_id: r.seller_id.clone(),
            quantity: o.units as i32,
            amount_minor: o.total.to_minor().unwrap_or(0),
            currency: format!("{:?}", o.total.currency()),
            revision: r.revision(),
            created_at_ms: r.created_at.0 as i64,
            updated_at_ms: r.purchase.saga.updated_at().unwrap_or(r.created_at).0 as i64,
        }
    }
}

pub async fn upsert(url: &str, row: &Row) -> Result<(), String> {
    let client = db::connect(url).await.map_err(|e| e.to_string())?;
    client
        .execute(
            "INSERT INTO purchases (id, state, listing_id, buyer_id, seller_id, quantity, amount_minor, currency, revision, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, to_timestamp($10::bigint / 1000.0), to_timestamp($11::bigint / 1000.0))
             ON CONFLICT (id) DO UPDATE SET
                state = excluded.state, revision = excluded.revision, updated_at = excluded.updated_at
             WHERE purchases.revision < excluded.revision",
            &[
                &row.id,
                &row.state,
                &row.listing_id,
                &row.buyer_id,
                &row.seller_id,
                &row.quantity,
                &row.amount_minor,
                &row.currency,
                &(row.revision as i64),
                &row.created_at_ms,
                &row.updated_at_ms,
            ],
        )
        .await
        .map_err(|e| format!("PostgreSQL: {e}"))?;
    Ok(())
}

/// A page of the ops listing, newest first. The cursor is the position of
/// the last row returned (creation time and id, which never change).
pub async fn list(url: &str, state: Option<&str>, limit: i64, cursor: Option<Cursor>) -> Result<Value, ApiError> {
    let client = db::connect(url).await.map_err(|e| ApiError::unavailable("database_unavailable", e.to_string()))?;
    let (after_ms, after_id) = match &cursor {
        Some(c) => (Some(c.created_at_ms), Some(c.id.clone())),
        None => (None, None),
    };
    let rows = client
        .query(
            "SELECT id, state, listing_id, buyer_id, seller_id, quantity, amount_minor, currency,
                    (extract(epoch from created_at) * 1000)::bigint AS created_ms,
                    (extract(epoch from updated_at) * 1000)::bigint AS updated_ms
             FROM purchases
             WHERE ($1::text IS NULL OR state = $1)
               AND ($2::bigint IS NULL OR (created_at, id) < (to_timestamp($2::bigint / 1000.0), $3::text))
             ORDER BY created_at DESC, id DESC
             LIMIT $4",
            &[&state, &after_ms, &after_id, &(limit + 1)],
        )
        .await
        .map_err(|e| ApiError::unavailable("database_error", format!("PostgreSQL: {e}")))?;
    let more = rows.len() as i64 > limit;
    let mut items = Vec::new();
    let mut last = None;
    for row in rows.iter().take(limit as usize) {
        let get = |e: tokio_postgres::Error| ApiError::internal(format!("unexpected mirror row: {e}"));
        let id: String = row.try_get("id").map_err(get)?;
        let currency: String = row.try_get("currency").map_err(get)?;
        let minor: i64 = row.try_get("amount_minor").map_err(get)?;
        let created: i64 = row.try_get("created_ms").map_err(get)?;
        let updated: i64 = row.try_get("updated_ms").map_err(get)?;
        let quantity: i32 = row.try_get("quantity").map_err(get)?;
        let amount = serde_json::from_value::<steps::Currency>(Value::from(currency.clone()))
            .ok()
            .and_then(|c| steps::Money::from_minor(minor, c).ok())
            .map(|m| json!(m))
            .unwrap_or(Value::Null);
        items.push(json!({
            "id": id,
            "state": row.try_get::<_, String>("state").map_err(get)?,
            "listing_id": row.try_get::<_, String>("listing_id").map_err(get)?,
            "buyer_id": row.try_get::<_, String>("buyer_id").map_err(get)?,
            "seller_id": row.try_get::<_, String>("seller_id").map_err(get)?,
            "quantity": quantity,
            "amount": amount,
            "created_at": rfc3339(orchestrator::Timestamp(created.max(0) as u64)),
            "updated_at": rfc3339(orchestrator::Timestamp(updated.max(0) as u64)),
        }));
        last = Some(Cursor { created_at_ms: created, id });
    }
    let next_cursor = if more { last.map(|c| c.encode()) } else { None };
    Ok(json!({ "items": items, "next_cursor": next_cursor }))
}

/// An opaque page position: hex of `"<created_ms>.<id>"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub created_at_ms: i64,
    pub id: String,
}

impl Cursor {
    pub fn encode(&self) -> String {
        hex::encode(format!("{}.{}", self.created_at_ms, self.id))
    }

    pub fn decode(text: &str) -> Option<Cursor> {
        let bytes = hex::decode(text).ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let (ms, id) = text.split_once('.')?;
        let created_at_ms = ms.parse().ok()?;
        crate::checkout::is_prefixed_id(id, "pur_").then(|| Cursor { created_at_ms, id: id.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let c = Cursor { created_at_ms: 1_700_000_000_123, id: "pur_abc".into() };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        for bad in ["", "zz", "00", &hex::encode("x.pur_a"), &hex::encode("1.lst_a"), &hex::encode("1.pur_'--")] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
    }
}
