//! Reservations: the internal API the payments Worker calls (through a
//! service binding) to reserve, release and sell listing units. Each is
//! idempotent by purchase id, so a saga can repeat any call after a crash.

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;
use worker_common::ApiError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReserveInput {
    pub purchase_id: String,
    pub listing_id: String,
    pub quantity: i64,
}

#[derive(Debug, Serialize)]
pub struct Reservation {
    pub purchase_id: String,
    pub listing_id: String,
    pub quantity: i32,
    pub status: String,
}

fn db(e: tokio_postgres::Error) -> ApiError {
    ApiError::unavailable("database_error", format!("PostgreSQL: {e}"))
}

/// Reserves units. The guard against two buyers taking the last unit is one
/// conditional UPDATE (`available >= quantity`), serialized by PostgreSQL's
/// row lock; the reservation row makes a repeat call a no-op.
pub async fn reserve(client: &mut Client, input: &ReserveInput) -> Result<(Reservation, bool), ApiError> {
    if !(1..=1000).contains(&input.quantity) {
        return Err(ApiError::invalid("invalid_quantity", "quantity must be between 1 and 1000"));
    }
    let quantity = input.quantity as i32;
    let tx = client.transaction().await.map_err(db)?;
    let inserted = tx
        .execute(
            "INSERT INTO reservations (purchase_id, listing_id, quantity, status)
             SELECT $1, id, $3, 'reserved' FROM listings WHERE id = $2
             ON CONFLICT (purchase_id) DO NOTHING",
            &[&input.purchase_id, &input.listing_id, &quantity],
        )
        .await
        .map_err(db)?;
    if inserted == 0 {
        // Either a repeat (the row exists) or an unknown listing.
        let existing = tx
            .query_opt(
                "SELECT listing_id, quantity, status FROM reservations WHERE purchase_id = $1",
                &[&input.purchase_id],
            )
            .await
            .map_err(db)?;
        let Some(row) = existing else {
            return Err(ApiError::not_found(format!("listing {} does not exist", input.listing_id)));
        };
        let reservation = Reservation {
            purchase_id: input.purchase_id.clone(),
            listing_id: row.get(0),
            quantity: row.get(1),
            status: row.get(2),
        };
        if reservation.listing_id != input.listing_id || reservation.quantity != quantity {
            return Err(ApiError::invalid_state(format!(
                "purchase {} already holds a different reservation ({} x {})",
                input.purchase_id, reservation.quantity, reservation.listing_id
            )));
        }
        return Ok((reservation, false));
    }
    let updated = tx
        .execute(
            "UPDATE listings SET reserved = reserved + $2, updated_at = now()
             WHERE id = $1 AND status = 'active' AND quantity - reserved - sold >= $2",
            &[&input.listing_id, &quantity],
        )
        .await
        .map_err(db)?;
    if updated == 0 {
        tx.rollback().await.map_err(db)?;
        return Err(ApiError::invalid_state(format!(
            "listing {} has fewer than {quantity} unit(s) available",
            input.listing_id
        ))
        .with_code("out_of_stock"));
    }
    tx.commit().await.map_err(db)?;
    Ok((
        Reservation {
            purchase_id: input.purchase_id.clone(),
            listing_id: input.listing_id.clone(),
            quantity,
            status: "reserved".into(),
        },
        true,
    ))
}

/// Moves a reservation to `to` (`released` or `sold`), adjusting the listing's
/// counters in the same transaction. Repeating a finished move is a no-op;
/// releasing a purchase that never reserved anything succeeds (a compensation
/// must always be able to finish).
pub async fn settle(client: &mut Client, purchase_id: &str, to: &str) -> Result<Option<Reservation>, ApiError> {
    let tx = client.transaction().await.map_err(db)?;
    let row = tx
        .query_opt(
            "SELECT listing_id, quantity, status FROM reservations WHERE purchase_id = $1 FOR UPDATE",
            &[&purchase_id],
        )
        .await
        .map_err(db)?;
    let Some(row) = row else {
        return if to == "released" {
            Ok(None)
        } else {
            Err(ApiError::not_found(format!("purchase {purchase_id} holds no reservation")))
        };
    };
    let listing_id: String = row.get(0);
    let quantity: i32 = row.get(1);
    let status: String = row.get(2);
    let reservation = |status: &str| Reservation {
        purchase_id: purchase_id.to_string(),
        listing_id: listing_id.clone(),
        quantity,
        status: status.to_string(),
    };
    if status == to {
        return Ok(Some(reservation(&status)));
    }
    if status != "reserved" {
        return Err(ApiError::invalid_state(format!("the reservation of {purchase_id} is already {status}")));
    }
    let counters = if to == "sold" {
        "UPDATE listings SET reserved = reserved - $2, sold = sold + $2, updated_at = now() WHERE id = $1"
    } else {
        "UPDATE listings SET reserved = reserved - $2, updated_at = now() WHERE id = $1"
    };
    tx.execute(counters, &[&listing_id, &quantity]).await.map_err(db)?;
    tx.execute("UPDATE reservations SET status = $2, updated_at = now() WHERE purchase_id = $1", &[&purchase_id, &to])
        .await
        .map_err(db)?;
    tx.commit().await.map_err(db)?;
    Ok(Some(reservation(to)))
}
