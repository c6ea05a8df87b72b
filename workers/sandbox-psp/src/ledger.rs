//! `GET /_sandbox/ledger`: what the sandbox did with a purchase's money, in
//! minor units, so tests can check the saga's effects on the provider side.
//!
//! Figures per currency:
//! - `authorized`: amounts ever held or charged (declines authorize nothing);
//! - `captured`: received by captures (or automatic charges);
//! - `voided`: holds released without capture (cancelled, or the remainder
//!   of a partial capture), so `authorized = captured + voided + held`;
//! - `held`: still capturable;
//! - `refunded`, `transferred`, and `net = captured - refunded - transferred`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::objects::Object;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Figures {
    pub authorized: i64,
    pub captured: i64,
    pub refunded: i64,
    pub voided: i64,
    pub held: i64,
    pub transferred: i64,
    pub net: i64,
}

/// Figures of `objects`, per currency.
pub fn figures(objects: &[Object]) -> BTreeMap<String, Figures> {
    let mut out: BTreeMap<String, Figures> = BTreeMap::new();
    for object in objects {
        match object {
            Object::PaymentIntent(pi) => {
                let f = out.entry(pi.currency.clone()).or_default();
                f.authorized += pi.authorized;
                f.captured += pi.amount_received;
                f.voided += pi.voided;
                f.held += pi.amount_capturable;
            }
            Object::Refund(r) => out.entry(r.currency.clone()).or_default().refunded += r.amount,
            Object::Transfer(t) => out.entry(t.currency.clone()).or_default().transferred += t.amount,
            Object::Charge(_) => {}
        }
    }
    for f in out.values_mut() {
        f.net = f.captured - f.refunded - f.transferred;
    }
    out
}

/// One idempotency key's record, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Operation {
    pub key: String,
    pub method: String,
    pub path: String,
    pub status: i64,
    pub executions: i64,
    pub replays: i64,
}

/// One webhook delivery of an event, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Delivery {
    pub event_id: String,
    pub event_type: String,
    pub state: String,
    pub attempts: i64,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub last_attempt_ms: Option<i64>,
}

/// Per event: attempts over all its deliveries (duplicates included),
/// delivered if any delivery got a 2xx, the status of the latest attempt.
pub fn webhooks(deliveries: &[Delivery]) -> Vec<Value> {
    let mut order: Vec<&str> = Vec::new();
    let mut by_event: BTreeMap<&str, Vec<&Delivery>> = BTreeMap::new();
    for d in deliveries {
        let entry = by_event.entry(&d.event_id).or_default();
        if entry.is_empty() {
            order.push(&d.event_id);
        }
        entry.push(d);
    }
    order
        .into_iter()
        .filter_map(|id| by_event.get(id).map(|ds| (id, ds)))
        .map(|(id, ds)| {
            let latest = ds.iter().filter(|d| d.last_attempt_ms.is_some()).max_by_key(|d| d.last_attempt_ms);
            let state = if ds.iter().any(|d| d.state == "delivered") {
                "delivered"
            } else if ds.iter().any(|d| d.state == "pending" || d.state == "held") {
                "pending"
            } else {
                "failed"
            };
            json!({
                "id": id,
                "type": ds.first().map(|d| d.event_type.as_str()),
                "attempts": ds.iter().map(|d| d.attempts).sum::<i64>(),
                "deliveries": ds.len(),
                "delivered": state == "delivered",
                "state": state,
                "last_status": latest.and_then(|d| d.last_status),
                "last_error": latest.and_then(|d| d.last_error.clone()),
            })
        })
        .collect()
}

/// The ledger of one purchase.
pub fn purchase(purchase_id: &str, objects: &[Object], operations: &[Operation], deliveries: &[Delivery]) -> Value {
    let per_currency = figures(objects);
    let (currency, top) = match per_currency.len() {
        0 => (Value::Null, json!(Figures::default())),
        1 => {
            let (c, f) = per_currency.iter().next().map(|(c, f)| (c.clone(), *f)).unwrap_or_default();
            (json!(c), json!(f))
        }
        _ => (
            json!("mixed"),
            json!({"authorized": null, "captured": null, "refunded": null, "voided": null, "held": null, "transferred": null, "net": null}),
        ),
    };
    let refunded_by_pi = |pi: &str| -> i64 {
        objects
            .iter()
            .filter_map(|o| match o {
                Object::Refund(r) if r.payment_intent == pi => Some(r.amount),
                _ => None,
            })
            .sum()
    };
    let payment_intents: Vec<Value> = objects
        .iter()
        .filter_map(|o| match o {
            Object::PaymentIntent(pi) => Some(json!({
                "id": pi.id,
                "status": pi.status.as_str(),
                "currency": pi.currency,
                "amount": pi.amount,
                "amount_capturable": pi.amount_capturable,
                "amount_received": pi.amount_received,
                "amount_refunded": refunded_by_pi(&pi.id),
                "voided": pi.voided,
                "latest_charge": pi.latest_charge,
            })),
            _ => None,
        })
        .collect();
    let refunds: Vec<Value> = objects
        .iter()
        .filter_map(|o| match o {
            Object::Refund(r) => Some(json!({"id": r.id, "payment_intent": r.payment_intent, "charge": r.charge, "amount": r.amount, "currency": r.currency, "status": "succeeded"})),
            _ => None,
        })
        .collect();
    let transfers: Vec<Value> = objects
        .iter()
        .filter_map(|o| match o {
            Object::Transfer(t) => Some(json!({"id": t.id, "destination": t.destination, "amount": t.amount, "currency": t.currency, "transfer_group": t.transfer_group})),
            _ => None,
        })
        .collect();
    let operations: Vec<Value> = operations
        .iter()
        .map(|op| json!({"idempotency_key": op.key, "method": op.method, "path": op.path, "status": op.status, "executions": op.executions, "replays": op.replays}))
        .collect();
    let mut body = json!({
        "purchase_id": purchase_id,
        "currency": currency,
        "by_currency": per_currency,
        "payment_intents": payment_intents,
        "refunds": refunds,
        "transfers": transfers,
        "operations": operations,
        "webhooks": webhooks(deliveries),
    });
    if let (Some(body), Some(top)) = (body.as_object_mut(), top.as_object()) {
        body.extend(top.clone());
    }
    body
}

/// Totals over everything, per currency, and counts.
pub fn overall(objects: &[Object], counts: Value) -> Value {
    json!({ "totals": figures(objects), "counts": counts })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{execute, Ctx, Route};
    use crate::form::decode;
    use crate::store::{MemStore, Store};

    fn run(store: &mut MemStore, n: &mut u32, method: &str, path: &str, body: &str) -> Value {
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).skip(1).collect();
        let route = Route::parse(method, &segments).unwrap();
        let mut ids = |p: &str| {
            *n += 1;
            format!("{p}_{n}")
        };
        let mut ctx = Ctx { now: 0, ids: &mut ids };
        match execute(store, &mut ctx, &route, decode(body.as_bytes()).unwrap()) {
            Ok(outcome) => outcome.body,
            Err(_) => panic!("rejected: {body}"),
        }
    }

    #[test]
    fn figures_follow_the_money() {
        let (mut s, mut n) = (MemStore::default(), 0);
        let hold = "amount=10000&currency=eur&payment_method=pm_card_visa&capture_method=manual&confirm=true&transfer_group=pur_1";
        let a = run(&mut s, &mut n, "POST", "/v1/payment_intents", hold)["id"].as_str().unwrap().to_string();
        let b = run(&mut s, &mut n, "POST", "/v1/payment_intents", hold)["id"].as_str().unwrap().to_string();
        run(&mut s, &mut n, "POST", "/v1/payment_intents", &hold.replace("pm_card_visa", "pm_card_chargeDeclined"));
        run(&mut s, &mut n, "POST", &format!("/v1/payment_intents/{a}/capture"), "amount_to_capture=9000");
        run(&mut s, &mut n, "POST", &format!("/v1/payment_intents/{b}/cancel"), "");
        run(&mut s, &mut n, "POST", "/v1/refunds", &format!("payment_intent={a}&amount=500"));
        run(
            &mut s,
            &mut n,
            "POST",
            "/v1/transfers",
            "amount=7000&currency=eur&destination=acct_1&transfer_group=pur_1",
        );
        let all = s.all().unwrap();
        let f = figures(&all)["eur"];
        assert_eq!(
            f,
            Figures {
                authorized: 20000,
                captured: 9000,
                refunded: 500,
                voided: 11000,
                held: 0,
                transferred: 7000,
                net: 1500
            }
        );
        assert_eq!(f.authorized, f.captured + f.voided + f.held);
        let ledger = purchase("pur_1", &all, &[], &[]);
        assert_eq!(ledger["currency"], "eur");
        assert_eq!(ledger["captured"], 9000);
        assert_eq!(ledger["payment_intents"].as_array().unwrap().len(), 3);
        assert_eq!(ledger["payment_intents"][0]["amount_refunded"], 500);
        assert_eq!(ledger["transfers"][0]["destination"], "acct_1");
    }

    #[test]
    fn an_unknown_purchase_is_all_zeros() {
        let ledger = purchase("pur_nobody", &[], &[], &[]);
        assert_eq!(ledger["authorized"], 0);
        assert_eq!(ledger["transferred"], 0);
        assert_eq!(ledger["currency"], Value::Null);
        assert_eq!(ledger["payment_intents"], json!([]));
    }

    #[test]
    fn webhooks_are_summarised_per_event() {
        let d = |id: &str, state: &str, attempts, status, at| Delivery {
            event_id: id.into(),
            event_type: "payment_intent.succeeded".into(),
            state: state.into(),
            attempts,
            last_status: status,
            last_error: None,
            last_attempt_ms: at,
        };
        let rows = [
            d("evt_1", "failed", 25, Some(500), Some(10)),
            d("evt_2", "pending", 0, None, None),
            d("evt_1", "delivered", 2, Some(200), Some(20)),
        ];
        let summary = webhooks(&rows);
        assert_eq!(summary.len(), 2);
        assert_eq!(summary[0]["id"], "evt_1");
        assert_eq!(
            (summary[0]["attempts"].as_i64(), summary[0]["delivered"].as_bool(), summary[0]["last_status"].as_i64()),
            (Some(27), Some(true), Some(200))
        );
        assert_eq!(summary[0]["deliveries"], 2);
        assert_eq!((summary[1]["state"].as_str(), summary[1]["last_status"].is_null()), (Some("pending"), true));
    }
}
