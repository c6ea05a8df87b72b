//! Listings and the reservation API, against the real PostgreSQL.

use e2e::{fresh_purchase_id, get, listing_body, post, secret, send, service_url};
use serde_json::json;

fn base() -> String {
    service_url("marketplace")
}

fn create(patch: serde_json::Value) -> serde_json::Value {
    let reply = post(&format!("{}/v1/listings", base()), &secret("OPS_TOKEN"), &listing_body(patch));
    assert_eq!(reply.status, 201, "{:?}", reply.body);
    reply.body
}

#[test]
fn a_created_listing_reads_back_with_its_price_and_availability() {
    let created = create(json!({"quantity": 3, "price": {"value": "120", "currency": "eur"}}));
    let id = created["id"].as_str().expect("id");
    assert!(id.starts_with("lst_"), "{id}");
    let read = get(&format!("{}/v1/listings/{id}", base()));
    assert_eq!(read.status, 200);
    assert_eq!(read.body["price"], json!({"value": "120.00", "currency": "EUR"}));
    assert_eq!(read.body["available"], 3);
    assert_eq!(read.body["species"], "cat");
}

#[test]
fn zero_decimal_currencies_keep_no_decimals() {
    let created = create(json!({"price": {"value": "1500", "currency": "JPY"}}));
    assert_eq!(created["price"], json!({"value": "1500", "currency": "JPY"}));
}

#[test]
fn invalid_listings_are_refused_with_a_code_and_nothing_is_created() {
    let ops = secret("OPS_TOKEN");
    let url = format!("{}/v1/listings", base());
    let cases = [
        (listing_body(json!({"quantity": 0})), 422, "invalid_quantity"),
        (listing_body(json!({"quantity": -2})), 422, "invalid_quantity"),
        (listing_body(json!({"price": {"value": "-1.00", "currency": "EUR"}})), 422, "invalid_amount"),
        (listing_body(json!({"price": {"value": "1.005", "currency": "EUR"}})), 422, "invalid_amount"),
        (listing_body(json!({"price": {"value": "12.50", "currency": "XYZ"}})), 422, "unknown_currency"),
        (listing_body(json!({"price": {"value": "12.5", "currency": "JPY"}})), 422, "invalid_amount"),
        (listing_body(json!({"seller_account": "not-an-account"})), 422, "invalid_field"),
        (listing_body(json!({"species": "dragon"})), 422, "invalid_field"),
        (listing_body(json!({"title": ""})), 422, "invalid_field"),
        (listing_body(json!({"quantity": "three"})), 422, "invalid_field"),
        (listing_body(json!({"unexpected": true})), 422, "invalid_field"),
    ];
    for (body, status, code) in cases {
        let reply = post(&url, &ops, &body);
        assert_eq!(
            (reply.status, reply.body["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}: {:?}",
            reply.body
        );
    }
    let garbage = send("POST", &url, Some(&ops), None);
    assert_eq!(garbage.status, 422);
    assert_eq!(garbage.body["error"]["code"], "invalid_json");
}

#[test]
fn creating_a_listing_needs_the_ops_token() {
    let url = format!("{}/v1/listings", base());
    let none = send("POST", &url, None, Some(&listing_body(json!({}))));
    assert_eq!((none.status, none.body["error"]["code"].as_str()), (401, Some("unauthorized")));
    let checkout = post(&url, &secret("CHECKOUT_TOKEN"), &listing_body(json!({})));
    assert_eq!(checkout.status, 401, "the checkout token is not valid on the marketplace: {:?}", checkout.body);
}

#[test]
fn unknown_and_malformed_listing_ids_are_404() {
    for id in ["lst_doesnotexist0", "not-an-id", "lst_", "LST_ABC"] {
        let reply = get(&format!("{}/v1/listings/{id}", base()));
        assert_eq!(reply.status, 404, "{id}: {:?}", reply.body);
        assert_eq!(reply.body["error"]["code"], "not_found");
    }
}

#[test]
fn reservations_are_idempotent_and_never_oversell() {
    let ops = secret("INTERNAL_TOKEN");
    let listing = create(json!({"quantity": 2}));
    let id = listing["id"].as_str().expect("id");
    let reserve = |purchase: &str, quantity: i64| {
        post(
            &format!("{}/internal/reservations", base()),
            &ops,
            &json!({"purchase_id": purchase, "listing_id": id, "quantity": quantity}),
        )
    };
    let first = fresh_purchase_id();
    assert_eq!(reserve(&first, 1).status, 201);
    assert_eq!(reserve(&first, 1).status, 200, "a repeat is a no-op");
    let available = |expected: i64| {
        let read = get(&format!("{}/v1/listings/{id}", base()));
        assert_eq!(read.body["available"], expected, "{:?}", read.body);
    };
    available(1);
    let second = fresh_purchase_id();
    let too_many = reserve(&second, 2);
    assert_eq!((too_many.status, too_many.body["error"]["code"].as_str()), (409, Some("out_of_stock")));
    assert_eq!(reserve(&second, 1).status, 201);
    available(0);
    let third = reserve(&fresh_purchase_id(), 1);
    assert_eq!((third.status, third.body["error"]["code"].as_str()), (409, Some("out_of_stock")));

    // Release the first, sell the second: counters follow, repeats are no-ops.
    let release = post(&format!("{}/internal/reservations/{first}/release", base()), &ops, &json!({}));
    assert_eq!((release.status, release.body["status"].as_str()), (200, Some("released")));
    assert_eq!(post(&format!("{}/internal/reservations/{first}/release", base()), &ops, &json!({})).status, 200);
    available(1);
    let sold = post(&format!("{}/internal/reservations/{second}/sold", base()), &ops, &json!({}));
    assert_eq!((sold.status, sold.body["status"].as_str()), (200, Some("sold")));
    let late_release = post(&format!("{}/internal/reservations/{second}/release", base()), &ops, &json!({}));
    assert_eq!((late_release.status, late_release.body["error"]["code"].as_str()), (409, Some("invalid_state")));
    available(1);
    // A compensation for a purchase that never reserved anything succeeds.
    let never = post(&format!("{}/internal/reservations/{}/release", base(), fresh_purchase_id()), &ops, &json!({}));
    assert_eq!((never.status, never.body["status"].as_str()), (200, Some("none")));
}

#[test]
fn concurrent_buyers_never_share_the_last_unit() {
    let ops = secret("INTERNAL_TOKEN");
    let listing = create(json!({"quantity": 1}));
    let id = listing["id"].as_str().expect("id").to_string();
    let handles: Vec<_> = (0..12)
        .map(|_| {
            let (ops, id, url) = (ops.clone(), id.clone(), format!("{}/internal/reservations", base()));
            std::thread::spawn(move || {
                post(&url, &ops, &json!({"purchase_id": fresh_purchase_id(), "listing_id": id, "quantity": 1})).status
            })
        })
        .collect();
    let statuses: Vec<u16> = handles.into_iter().map(|h| h.join().expect("thread")).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 11, "{statuses:?}");
    assert_eq!(get(&format!("{}/v1/listings/{id}", base())).body["available"], 0);
}

/// Reservations belong to the purchase sagas: an operator's token cannot
/// release (or take) units behind a saga's back, and nothing changes.
#[test]
fn only_the_service_token_moves_reservations() {
    let listing = create(json!({"quantity": 1}));
    let id = listing["id"].as_str().expect("id");
    let purchase = fresh_purchase_id();
    let body = json!({"purchase_id": purchase, "listing_id": id, "quantity": 1});
    let url = format!("{}/internal/reservations", base());
    for token in [secret("OPS_TOKEN"), secret("CHECKOUT_TOKEN")] {
        let refused = post(&url, &token, &body);
        assert!(matches!(refused.status, 401 | 403), "{} {:?}", refused.status, refused.body);
    }
    assert_eq!(get(&format!("{}/v1/listings/{id}", base())).body["available"], 1, "nothing was reserved");
    assert_eq!(post(&url, &secret("INTERNAL_TOKEN"), &body).status, 201);
    let release = format!("{url}/{purchase}/release");
    let by_operator = post(&release, &secret("OPS_TOKEN"), &json!({}));
    assert_eq!((by_operator.status, by_operator.body["error"]["code"].as_str()), (403, Some("forbidden")));
    assert_eq!(get(&format!("{}/v1/listings/{id}", base())).body["available"], 0, "the reservation stands");
}
