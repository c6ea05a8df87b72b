//! `POST /v1/webhooks/stripe` on the running stack: only correctly signed,
//! fresh events get through; duplicates and strangers are acknowledged and
//! change nothing.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use e2e::{listing_body, post, secret, send, send_raw, send_with, service_url, Reply};
use serde_json::{json, Value};

fn url() -> String {
    format!("{}/v1/webhooks/stripe", service_url("payments"))
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn event(id: &str, kind: &str, object: Value) -> String {
    json!({
        "id": id, "object": "event", "api_version": "2024-06-20", "created": now(), "type": kind,
        "livemode": false, "pending_webhooks": 1, "data": { "object": object }
    })
    .to_string()
}

fn deliver(body: &str, signature: Option<String>) -> Reply {
    let mut headers = vec![("content-type", "application/json".to_string())];
    if let Some(signature) = signature {
        headers.push(("stripe-signature", signature));
    }
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    send_raw("POST", &url(), &headers, body)
}

fn signed(body: &str, at: i64) -> Option<String> {
    Some(webhooks::stripe::sign_header(&secret("STRIPE_WEBHOOK_SECRET"), at, body.as_bytes()))
}

fn code(reply: &Reply) -> (u16, &str) {
    (reply.status, reply.body["error"]["code"].as_str().unwrap_or(""))
}

fn unique() -> String {
    format!("{}", SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0))
}

#[test]
fn forged_stale_and_malformed_webhooks_are_refused() {
    let body = event(
        &format!("evt_forged{}", unique()),
        "payment_intent.succeeded",
        json!({
            "id": "pi_x", "object": "payment_intent", "metadata": { "purchase_id": "pur_forged" }
        }),
    );
    assert_eq!(code(&deliver(&body, None)), (400, "missing_signature"));
    assert_eq!(code(&deliver(&body, Some("t=abc,v1=00".into()))), (400, "malformed_signature"));
    let wrong = Some(webhooks::stripe::sign_header("whsec_not_ours", now(), body.as_bytes()));
    assert_eq!(code(&deliver(&body, wrong)), (400, "signature_mismatch"));
    let tampered = body.replace("pi_x", "pi_y");
    assert_eq!(code(&deliver(&tampered, signed(&body, now()))), (400, "signature_mismatch"));
    assert_eq!(code(&deliver(&body, signed(&body, now() - 3600))), (400, "timestamp_out_of_tolerance"));
    assert_eq!(code(&deliver(&body, signed(&body, now() + 3600))), (400, "timestamp_out_of_tolerance"));
    let not_json = "not json";
    assert_eq!(code(&deliver(not_json, signed(not_json, now()))), (400, "invalid_payload"));
}

#[test]
fn events_for_no_purchase_of_ours_are_acknowledged() {
    for object in [
        json!({ "id": "pi_other", "object": "payment_intent", "metadata": {} }),
        json!({ "id": "pi_other", "object": "payment_intent", "metadata": { "purchase_id": "pur_neverexisted" } }),
    ] {
        let body = event(&format!("evt_stranger{}", unique()), "payment_intent.succeeded", object);
        let reply = deliver(&body, signed(&body, now()));
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        assert_eq!(reply.body["received"], true);
    }
}

#[test]
fn a_duplicate_event_changes_nothing() {
    let listing =
        post(&format!("{}/v1/listings", service_url("marketplace")), &secret("OPS_TOKEN"), &listing_body(json!({})))
            .body["id"]
            .as_str()
            .expect("listing")
            .to_string();
    let key = format!("webhook-dup-{}", unique());
    let order = json!({ "listing_id": listing, "buyer_id": "buyer_wh", "payment_method": "pm_card_visa" });
    let created = send_with(
        "POST",
        &format!("{}/v1/purchases", service_url("payments")),
        Some(&secret("CHECKOUT_TOKEN")),
        &[("idempotency-key", &key)],
        Some(&order),
    );
    assert_eq!(created.status, 201, "{:?}", created.body);
    let id = created.body["id"].as_str().expect("id").to_string();
    let get = || {
        send("GET", &format!("{}/v1/purchases/{id}", service_url("payments")), Some(&secret("CHECKOUT_TOKEN")), None)
            .body
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut purchase = get();
    while purchase["state"] != "awaiting_delivery" {
        assert!(Instant::now() < deadline, "{purchase:#}");
        std::thread::sleep(Duration::from_millis(150));
        purchase = get();
    }
    // The hold event again, as a second delivery under one event id.
    let body = event(
        &format!("evt_dup{}", unique()),
        "payment_intent.amount_capturable_updated",
        json!({
            "id": purchase["payment_intent"], "object": "payment_intent", "status": "requires_capture",
            "metadata": { "purchase_id": id }
        }),
    );
    let first = deliver(&body, signed(&body, now()));
    assert_eq!(first.status, 200, "{:?}", first.body);
    let before = get();
    let again = deliver(&body, signed(&body, now()));
    assert_eq!((again.status, again.body["outcome"].as_str()), (200, Some("duplicate")), "{:?}", again.body);
    let after = get();
    assert_eq!(before["revision"], after["revision"], "a duplicate must not change the purchase");
    assert_eq!(after["state"], "awaiting_delivery");
}
