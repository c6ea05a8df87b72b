//! What one purchase's Durable Object persists, and how the API shows it.

use chrono::{TimeZone, Utc};
use orchestrator::{ActionKind, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use steps::{step, Purchase, PurchaseSaga, PurchaseState};

/// The saga (order + engine state) and the checkout facts around it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub purchase: Purchase,
    pub seller_id: String,
    pub payment_method: String,
    /// [`crate::checkout::CheckoutRequest::fingerprint`] of the creating request.
    pub fingerprint: String,
    pub created_at: Timestamp,
}

impl Record {
    pub fn id(&self) -> &str {
        &self.purchase.order.purchase_id
    }

    /// Monotonic: the mirror and any cache compare it to never go backwards.
    pub fn revision(&self) -> u64 {
        self.purchase.saga.transitions()
    }
}

pub fn rfc3339(t: Timestamp) -> String {
    Utc.timestamp_millis_opt(t.0 as i64)
        .single()
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

fn opt_time(t: Option<Timestamp>) -> Value {
    t.map(|t| Value::from(rfc3339(t))).unwrap_or(Value::Null)
}

/// The purchase as `GET /v1/purchases/{id}` shows it.
pub fn view(saga: &PurchaseSaga, r: &Record) -> Value {
    let p = &r.purchase;
    let o = &p.order;
    let state = saga.state(p);
    let steps: Vec<Value> = saga
        .step_views(p)
        .into_iter()
        .map(|s| {
            // A compensation in progress is what an operator needs to see.
            let (attempts, last_error) = if s.compensation_attempts > 0 {
                (s.compensation_attempts, s.compensation_last_error.clone().or(s.last_error.clone()))
            } else {
                (s.attempts, s.last_error.clone())
            };
            json!({
                "name": s.name,
                "status": s.status,
                "attempts": attempts,
                "last_error": last_error,
                "next_attempt_at": opt_time(s.next_attempt_at),
            })
        })
        .collect();
    let history: Vec<Value> = saga
        .history_views(p)
        .into_iter()
        .map(|h| json!({ "at": rfc3339(h.at), "input": h.input, "from": h.from.as_str(), "to": h.to.as_str() }))
        .collect();
    let confirm = p.saga.step(step::CONFIRM_DELIVERY);
    let auto_release_at =
        confirm.and_then(|s| if state == PurchaseState::AwaitingDelivery { s.deadline } else { None });
    let hold_expires_at = match state {
        PurchaseState::AwaitingDelivery | PurchaseState::Disputed | PurchaseState::HoldingFunds => {
            saga.hold_expires_at(p)
        }
        _ => None,
    };
    let attention = p.saga.attention().map(|a| {
        json!({
            "step": a.step_name,
            "action": match a.action { ActionKind::Forward => "forward", ActionKind::Compensation => "compensation" },
            "error": a.error,
            "since": rfc3339(a.since),
        })
    });
    json!({
        "id": o.purchase_id,
        "object": "purchase",
        "state": state.as_str(),
        "listing_id": o.listing_id,
        "buyer_id": o.buyer_id,
        "seller_id": r.seller_id,
        "quantity": o.units,
        "payment_method": r.payment_method,
        "amount": o.total,
        "fee": o.fee,
        "seller_payout": o.payout,
        "payment_intent": p.saga.step(step::HOLD_FUNDS).and_then(|s| s.output.clone()),
        "auto_release_at": opt_time(auto_release_at),
        "hold_expires_at": opt_time(hold_expires_at),
        "attention": attention,
        "steps": steps,
        "history": history,
        "revision": r.revision(),
        "created_at": rfc3339(r.created_at),
        "updated_at": rfc3339(p.saga.updated_at().unwrap_or(r.created_at)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;
    use steps::{Currency, Money, OrderRequest, PurchaseConfig};

    #[test]
    fn a_new_purchase_shows_money_as_decimal_strings_and_every_step() {
        let saga = PurchaseSaga::new(PurchaseConfig::default()).unwrap();
        let order = OrderRequest {
            purchase_id: "pur_1".into(),
            listing_id: "lst_1".into(),
            units: 1,
            buyer_id: "buyer_1".into(),
            seller_account: "acct_1".into(),
            total: Money::new(Decimal::new(12000, 2), Currency::EUR).unwrap(),
        };
        let (purchase, _) = saga.start(order, Timestamp(1_700_000_000_000), 7).unwrap();
        let record = Record {
            purchase,
            seller_id: "sel_1".into(),
            payment_method: "pm_card_visa".into(),
            fingerprint: "f".into(),
            created_at: Timestamp(1_700_000_000_000),
        };
        let v = view(&saga, &record);
        assert_eq!(v["state"], "reserving");
        assert_eq!(v["amount"], json!({"value": "120.00", "currency": "EUR"}));
        assert_eq!(v["fee"], json!({"value": "12.00", "currency": "EUR"}));
        assert_eq!(v["seller_payout"], json!({"value": "108.00", "currency": "EUR"}));
        assert_eq!(v["steps"].as_array().unwrap().len(), 6);
        assert_eq!(v["steps"][0]["status"], "running");
        assert_eq!(v["history"][0]["input"], "start");
        assert_eq!(v["created_at"], "2023-11-14T22:13:20.000Z");
    }
}
