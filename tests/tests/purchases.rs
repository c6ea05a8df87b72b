//! Purchases end to end: the payments Worker's saga in its Durable Object,
//! the marketplace's reservations in PostgreSQL and the sandbox provider's
//! ledger, on the running test stack (inspection window: 8 s).

use std::time::{Duration, Instant};

use e2e::money::minor;
use e2e::shop::{
    self, buyer, checkout, checkout_token, create_listing, ledger, operator, ops_token, payments, purchase, unique,
};
use e2e::{send, send_with, service_url, Reply};
use serde_json::{json, Value};

/// Polls until the purchase is in `state`; fails at once if it finishes in
/// another one.
fn wait_for(id: &str, state: &str, within: Duration) -> Value {
    shop::wait_until(id, &[state], within)
}

fn order(listing_id: &str, payment_method: &str) -> Value {
    shop::order(listing_id, "buyer_e2e", payment_method)
}

fn listing_available(id: &str) -> i64 {
    let reply = send("GET", &format!("{}/v1/listings/{id}", service_url("marketplace")), None, None);
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    reply.body["available"].as_i64().expect("available")
}

fn send_with_key(method: &str, url: &str, token: Option<&str>, key: Option<&str>, body: Option<&Value>) -> Reply {
    let headers: Vec<(&str, &str)> = key.map(|k| ("idempotency-key", k)).into_iter().collect();
    send_with(method, url, token, &headers, body)
}

/// Every operation the provider saw for this purchase ran exactly once,
/// however often it was asked.
fn assert_each_key_executed_once(ledger: &Value) {
    for op in ledger["operations"].as_array().expect("operations") {
        assert_eq!(op["executions"], 1, "{op}");
    }
}

#[test]
fn happy_path_pays_the_seller_total_minus_fee() {
    let listing = create_listing(json!({ "price": {"value": "120.00", "currency": "EUR"}, "quantity": 1 }));
    let key = unique("happy");
    let created = checkout(&key, &order(&listing, "pm_card_visa"));
    assert_eq!(created.status, 201, "{:?}", created.body);
    let id = created.body["id"].as_str().expect("id").to_string();
    assert!(id.starts_with("pur_"));
    assert_eq!(created.body["amount"], json!({"value": "120.00", "currency": "EUR"}));
    assert_eq!(created.body["fee"], json!({"value": "12.00", "currency": "EUR"}));
    assert_eq!(created.body["seller_payout"], json!({"value": "108.00", "currency": "EUR"}));
    assert_eq!(created.body["seller_id"], "sel_test");

    // Same key, same body: the same purchase. Same key, other body: refused.
    let again = checkout(&key, &order(&listing, "pm_card_visa"));
    assert_eq!((again.status, again.body["id"].as_str()), (200, Some(id.as_str())));
    let mut other = order(&listing, "pm_card_visa");
    other["quantity"] = json!(2);
    let reused = checkout(&key, &other);
    assert_eq!((reused.status, reused.body["error"]["code"].as_str()), (422, Some("idempotency_key_reused")));

    let waiting = wait_for(&id, "awaiting_delivery", Duration::from_secs(30));
    assert!(waiting["payment_intent"].as_str().is_some_and(|pi| pi.starts_with("pi_")), "{waiting:#}");
    assert!(waiting["auto_release_at"].is_string());
    assert_eq!(listing_available(&listing), 0);

    let confirmed = buyer(&id, "confirm-delivery");
    assert_eq!(confirmed.status, 200, "{:?}", confirmed.body);
    let done = wait_for(&id, "completed", Duration::from_secs(30));
    assert!(done["steps"].as_array().expect("steps").iter().all(|s| s["status"] == "succeeded"), "{done:#}");

    let ledger = ledger(&id);
    assert_eq!(ledger["captured"], 12_000, "{ledger:#}");
    assert_eq!(ledger["refunded"], 0, "{ledger:#}");
    assert_eq!(ledger["transferred"], 10_800, "{ledger:#}");
    // The platform keeps the fee: captured minus what went to the seller.
    assert_eq!(ledger["captured"].as_i64().unwrap() - ledger["transferred"].as_i64().unwrap(), minor(&done["fee"]));
    assert_each_key_executed_once(&ledger);
    assert_eq!(listing_available(&listing), 0, "the unit is sold");

    // Finished: the buyer can no longer act on it.
    let late = buyer(&id, "cancel");
    assert_eq!((late.status, late.body["error"]["code"].as_str()), (409, Some("invalid_state")));
}

#[test]
fn declined_card_ends_cancelled_with_the_listing_available_again() {
    let listing = create_listing(json!({ "quantity": 1 }));
    let created = checkout(&unique("declined"), &order(&listing, "pm_card_chargeDeclined"));
    assert_eq!(created.status, 201, "{:?}", created.body);
    let id = created.body["id"].as_str().expect("id").to_string();
    let done = wait_for(&id, "cancelled", Duration::from_secs(30));
    assert_eq!(done["steps"][1]["status"], "failed", "{done:#}");
    assert_eq!(listing_available(&listing), 1);
    let ledger = ledger(&id);
    assert_eq!((ledger["captured"].as_i64(), ledger["transferred"].as_i64()), (Some(0), Some(0)), "{ledger:#}");
}

#[test]
fn buyer_cancels_while_awaiting_delivery_and_gets_everything_back() {
    let listing = create_listing(json!({ "price": {"value": "45.50", "currency": "EUR"}, "quantity": 1 }));
    let created = checkout(&unique("cancel"), &order(&listing, "pm_card_visa"));
    assert_eq!(created.status, 201, "{:?}", created.body);
    let id = created.body["id"].as_str().expect("id").to_string();
    wait_for(&id, "awaiting_delivery", Duration::from_secs(30));
    let cancelled = buyer(&id, "cancel");
    assert_eq!(cancelled.status, 200, "{:?}", cancelled.body);
    wait_for(&id, "refunded", Duration::from_secs(30));
    let ledger = ledger(&id);
    // The hold is voided: the buyer's money never left; nothing was paid out.
    assert_eq!(ledger["authorized"], 4_550, "{ledger:#}");
    assert_eq!(ledger["captured"].as_i64().unwrap() - ledger["refunded"].as_i64().unwrap(), 0, "{ledger:#}");
    assert_eq!(ledger["transferred"], 0, "{ledger:#}");
    assert_eq!(ledger["voided"].as_i64().unwrap() + ledger["refunded"].as_i64().unwrap(), 4_550, "{ledger:#}");
    assert_each_key_executed_once(&ledger);
    assert_eq!(listing_available(&listing), 1);
}

#[test]
fn silence_auto_releases_after_the_inspection_window() {
    let listing = create_listing(json!({ "quantity": 1 }));
    let created = checkout(&unique("silent"), &order(&listing, "pm_card_visa"));
    let id = created.body["id"].as_str().expect("id").to_string();
    let waiting = wait_for(&id, "awaiting_delivery", Duration::from_secs(30));
    let started = Instant::now();
    // The window is 8 s on the test stack; the alarm must end it on its own.
    let done = wait_for(&id, "completed", Duration::from_secs(40));
    assert!(started.elapsed() >= Duration::from_secs(4), "released too early: {waiting:#}");
    assert!(done["history"].as_array().expect("history").iter().any(|h| h["input"] == "timer"), "{done:#}");
    let ledger = ledger(&id);
    assert_eq!(ledger["transferred"].as_i64(), Some(minor(&done["seller_payout"])), "{ledger:#}");
}

#[test]
fn a_dispute_stops_the_clock_until_an_operator_resolves_it() {
    let refund_listing = create_listing(json!({ "quantity": 1 }));
    let release_listing = create_listing(json!({ "quantity": 1 }));
    let refund_id = checkout(&unique("dispute-refund"), &order(&refund_listing, "pm_card_visa")).body["id"]
        .as_str()
        .expect("id")
        .to_string();
    let release_id = checkout(&unique("dispute-release"), &order(&release_listing, "pm_card_visa")).body["id"]
        .as_str()
        .expect("id")
        .to_string();
    for id in [&refund_id, &release_id] {
        wait_for(id, "awaiting_delivery", Duration::from_secs(30));
        let disputed = buyer(id, "dispute");
        assert_eq!((disputed.status, disputed.body["state"].as_str()), (200, Some("disputed")), "{:?}", disputed.body);
    }
    // Well past the 8 s window: still disputed, nothing released.
    std::thread::sleep(Duration::from_secs(11));
    assert_eq!(purchase(&refund_id)["state"], "disputed");
    assert_eq!(ledger(&refund_id)["transferred"], 0);

    // The buyer cannot settle a dispute; an operator can.
    assert_eq!(buyer(&refund_id, "confirm-delivery").status, 409);
    let bad = operator(&refund_id, "resolve", Some(&json!({ "outcome": "maybe" })));
    assert_eq!(bad.status, 422, "{:?}", bad.body);
    let resolved = operator(&refund_id, "resolve", Some(&json!({ "outcome": "refund" })));
    assert_eq!(resolved.status, 200, "{:?}", resolved.body);
    wait_for(&refund_id, "refunded", Duration::from_secs(30));
    assert_eq!(listing_available(&refund_listing), 1);

    let resolved = operator(&release_id, "resolve", Some(&json!({ "outcome": "release" })));
    assert_eq!(resolved.status, 200, "{:?}", resolved.body);
    let done = wait_for(&release_id, "completed", Duration::from_secs(30));
    assert_eq!(ledger(&release_id)["transferred"].as_i64(), Some(minor(&done["seller_payout"])));
    // Resolving twice is a state error, not a second payout.
    assert_eq!(operator(&release_id, "resolve", Some(&json!({ "outcome": "refund" }))).status, 409);
}

#[test]
fn operators_list_purchases_from_the_mirror() {
    let listing = create_listing(json!({ "quantity": 1 }));
    let id = checkout(&unique("ops"), &order(&listing, "pm_card_chargeDeclined")).body["id"]
        .as_str()
        .expect("id")
        .to_string();
    wait_for(&id, "cancelled", Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let page = send(
            "GET",
            &format!("{}/v1/ops/purchases?state=cancelled&limit=200", payments()),
            Some(&ops_token()),
            None,
        );
        assert_eq!(page.status, 200, "{:?}", page.body);
        let items = page.body["items"].as_array().expect("items");
        assert!(items.iter().all(|p| p["state"] == "cancelled"));
        if items.iter().any(|p| p["id"] == id.as_str()) {
            break;
        }
        assert!(Instant::now() < deadline, "purchase {id} never appeared in the ops listing: {:?}", page.body);
        std::thread::sleep(Duration::from_millis(300));
    }
    let first = send("GET", &format!("{}/v1/ops/purchases?limit=1", payments()), Some(&ops_token()), None);
    assert_eq!(first.body["items"].as_array().map(Vec::len), Some(1));
    let cursor = first.body["next_cursor"].as_str().expect("a next page exists").to_string();
    let second =
        send("GET", &format!("{}/v1/ops/purchases?limit=1&cursor={cursor}", payments()), Some(&ops_token()), None);
    assert_eq!(second.status, 200);
    assert_ne!(second.body["items"][0]["id"], first.body["items"][0]["id"]);
    for bad in ["state=lost", "limit=0", "limit=500", "cursor=zzz", "colour=red"] {
        let reply = send("GET", &format!("{}/v1/ops/purchases?{bad}", payments()), Some(&ops_token()), None);
        assert_eq!(reply.status, 422, "{bad}: {:?}", reply.body);
    }
}

#[test]
fn bad_checkout_requests_are_refused_and_create_nothing() {
    let listing = create_listing(json!({ "quantity": 1 }));
    let url = format!("{}/v1/purchases", payments());
    let body = order(&listing, "pm_card_visa");
    let code = |r: &Reply| (r.status, r.body["error"]["code"].as_str().unwrap_or_default().to_string());

    assert_eq!(code(&send_with_key("POST", &url, None, Some("k-none"), Some(&body))), (401, "unauthorized".into()));
    assert_eq!(
        code(&send_with_key("POST", &url, Some("wrong"), Some("k-wrong"), Some(&body))),
        (401, "unauthorized".into())
    );
    assert_eq!(
        code(&send_with_key("POST", &url, Some(&ops_token()), Some("k-ops"), Some(&body))),
        (403, "forbidden".into())
    );
    assert_eq!(
        code(&send_with_key("POST", &url, Some(&checkout_token()), None, Some(&body))),
        (422, "idempotency_key_required".into())
    );
    let unknown = order("lst_doesnotexist", "pm_card_visa");
    assert_eq!(code(&checkout(&unique("unknown"), &unknown)), (422, "unknown_listing".into()));
    let mut with_price = body.clone();
    with_price["price"] = json!({"value": "0.01", "currency": "EUR"});
    assert_eq!(code(&checkout(&unique("price"), &with_price)).0, 422);
    for quantity in [json!(0), json!(-1), json!(1_000_000), json!("two")] {
        let mut bad = body.clone();
        bad["quantity"] = quantity.clone();
        assert_eq!(code(&checkout(&unique("qty"), &bad)).0, 422, "quantity {quantity}");
    }
    assert_eq!(listing_available(&listing), 1, "no refused request reserved anything");

    let missing = send("GET", &format!("{}/v1/purchases/pur_doesnotexist", payments()), Some(&checkout_token()), None);
    assert_eq!(code(&missing), (404, "not_found".into()));
    let not_an_id = send("GET", &format!("{}/v1/purchases/lst_abc", payments()), Some(&checkout_token()), None);
    assert_eq!(not_an_id.status, 404);
    assert_eq!(buyer("pur_doesnotexist", "confirm-delivery").status, 404);
}

#[test]
fn an_operator_can_force_a_refund_before_the_payout_but_not_after() {
    let listing = create_listing(json!({ "price": {"value": "30.00", "currency": "EUR"}, "quantity": 1 }));
    let id =
        checkout(&unique("ops-refund"), &order(&listing, "pm_card_visa")).body["id"].as_str().expect("id").to_string();
    wait_for(&id, "awaiting_delivery", Duration::from_secs(30));

    // The buyer's token is not an operator's.
    let forbidden =
        send("POST", &format!("{}/v1/ops/purchases/{id}/refund", payments()), Some(&checkout_token()), None);
    assert_eq!((forbidden.status, forbidden.body["error"]["code"].as_str()), (403, Some("forbidden")));
    let seen = send("GET", &format!("{}/v1/ops/purchases/{id}", payments()), Some(&ops_token()), None);
    assert_eq!((seen.status, seen.body["state"].as_str()), (200, Some("awaiting_delivery")));

    let refunded = operator(&id, "refund", None);
    assert_eq!(refunded.status, 200, "{:?}", refunded.body);
    wait_for(&id, "refunded", Duration::from_secs(30));
    let money = ledger(&id);
    assert_eq!(money["transferred"], 0, "{money:#}");
    assert_eq!(money["voided"].as_i64().unwrap() + money["refunded"].as_i64().unwrap(), 3_000, "{money:#}");
    assert_eq!(listing_available(&listing), 1);
    // Nothing is pending on a finished purchase.
    assert_eq!(operator(&id, "retry", None).status, 409);

    let paid = create_listing(json!({ "quantity": 1 }));
    let paid_id =
        checkout(&unique("ops-late"), &order(&paid, "pm_card_visa")).body["id"].as_str().expect("id").to_string();
    wait_for(&paid_id, "awaiting_delivery", Duration::from_secs(30));
    assert_eq!(buyer(&paid_id, "confirm-delivery").status, 200);
    wait_for(&paid_id, "completed", Duration::from_secs(30));
    let late = operator(&paid_id, "refund", None);
    assert_eq!((late.status, late.body["error"]["code"].as_str()), (409, Some("invalid_state")), "{:?}", late.body);
    assert_eq!(ledger(&paid_id)["refunded"], 0);
}
