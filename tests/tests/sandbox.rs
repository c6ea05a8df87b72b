//! The sandbox payment provider speaks Stripe's protocol: form-encoded
//! requests, Stripe's objects and errors, `Idempotency-Key` replays, and a
//! ledger that shows what really happened to the money.
//!
//! Chaos settings are global to the sandbox: the one test that changes them
//! holds [`CHAOS`] for writing, every other test holds it for reading, so
//! no test runs while faults are being injected. Webhooks go to the
//! payments Worker in the test stack; these tests only check that events
//! were recorded with the right types, not how their delivery went.

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use e2e::{fresh_purchase_id, get, post_form, secret, send, send_form, service_url, RawReply};
use serde_json::{json, Value};

static CHAOS: RwLock<()> = RwLock::new(());

fn calm() -> RwLockReadGuard<'static, ()> {
    CHAOS.read().unwrap_or_else(|e| e.into_inner())
}

fn base() -> String {
    service_url("sandbox-psp")
}

fn key() -> String {
    secret("STRIPE_SECRET_KEY")
}

fn post(path: &str, form: &[(&str, &str)], idempotency_key: Option<&str>) -> RawReply {
    post_form(&format!("{}{path}", base()), &key(), form, idempotency_key)
}

fn get_v1(path: &str) -> RawReply {
    send_form("GET", &format!("{}{path}", base()), Some(&key()), &[], None)
}

/// Holds `amount` with a test card for `purchase`, as the payments saga does.
fn hold(purchase: &str, amount: &str, card: &str, idempotency_key: Option<&str>) -> RawReply {
    post(
        "/v1/payment_intents",
        &[
            ("amount", amount),
            ("currency", "eur"),
            ("payment_method", card),
            ("capture_method", "manual"),
            ("confirm", "true"),
            ("transfer_group", purchase),
            ("metadata[buyer_id]", "buyer_e2e"),
            ("metadata[purchase_id]", purchase),
        ],
        idempotency_key,
    )
}

fn held(purchase: &str, amount: &str) -> String {
    let reply = hold(purchase, amount, "pm_card_visa", None);
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.body["id"].as_str().expect("id").to_string()
}

fn ledger(purchase: &str) -> Value {
    let reply = send("GET", &format!("{}/_sandbox/ledger?purchase_id={purchase}", base()), Some(&key()), None);
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    reply.body
}

fn event_types(ledger: &Value) -> Vec<String> {
    ledger["webhooks"]
        .as_array()
        .map(|a| a.iter().filter_map(|w| w["type"].as_str().map(String::from)).collect())
        .unwrap_or_default()
}

fn error_code(reply: &RawReply) -> (u16, &str, &str) {
    (
        reply.status,
        reply.body["error"]["type"].as_str().unwrap_or(""),
        reply.body["error"]["code"].as_str().unwrap_or(""),
    )
}

#[test]
fn hold_capture_refund_and_the_ledger_adds_up() {
    let _calm = calm();
    let purchase = fresh_purchase_id();
    let hold = hold(&purchase, "12000", "pm_card_visa", Some(&format!("{purchase}:hold:create")));
    assert_eq!(hold.status, 200, "{}", hold.text);
    assert_eq!(hold.header("content-type"), Some("application/json"));
    assert!(hold.header("request-id").is_some_and(|r| r.starts_with("req_")));
    let pi = hold.body["id"].as_str().expect("id").to_string();
    assert!(pi.starts_with("pi_"), "{pi}");
    assert_eq!(hold.body["object"], "payment_intent");
    assert_eq!(hold.body["status"], "requires_capture");
    assert_eq!(hold.body["amount"], 12000);
    assert_eq!(hold.body["amount_capturable"], 12000);
    assert_eq!(hold.body["amount_received"], 0);
    assert_eq!(hold.body["currency"], "eur");
    assert_eq!(hold.body["capture_method"], "manual");
    assert_eq!(hold.body["metadata"], json!({"buyer_id": "buyer_e2e", "purchase_id": purchase}));
    assert!(hold.body["latest_charge"].as_str().is_some_and(|c| c.starts_with("ch_")));

    let read = get_v1(&format!("/v1/payment_intents/{pi}"));
    assert_eq!((read.status, &read.body), (200, &hold.body));

    let capture = post(
        &format!("/v1/payment_intents/{pi}/capture"),
        &[("amount_to_capture", "12000")],
        Some(&format!("{purchase}:release:capture")),
    );
    assert_eq!(capture.status, 200, "{}", capture.text);
    assert_eq!(
        (&capture.body["status"], &capture.body["amount_received"], &capture.body["amount_capturable"]),
        (&json!("succeeded"), &json!(12000), &json!(0))
    );

    let refund =
        post("/v1/refunds", &[("payment_intent", &pi), ("amount", "2000"), ("metadata[purchase_id]", &purchase)], None);
    assert_eq!(refund.status, 200, "{}", refund.text);
    assert!(refund.body["id"].as_str().is_some_and(|r| r.starts_with("re_")));
    assert_eq!(
        (&refund.body["object"], &refund.body["status"], &refund.body["amount"]),
        (&json!("refund"), &json!("succeeded"), &json!(2000))
    );
    assert_eq!(refund.body["payment_intent"], json!(pi));

    let too_much = post("/v1/refunds", &[("payment_intent", &pi), ("amount", "10001")], None);
    assert_eq!(error_code(&too_much), (400, "invalid_request_error", "amount_too_large"));
    let rest = post("/v1/refunds", &[("payment_intent", &pi)], None);
    assert_eq!((rest.status, &rest.body["amount"]), (200, &json!(10000)), "the default refund is what remains");
    let again = post("/v1/refunds", &[("payment_intent", &pi), ("amount", "1")], None);
    assert_eq!(error_code(&again), (400, "invalid_request_error", "charge_already_refunded"));

    let charge = get_v1(&format!("/v1/charges/{}", hold.body["latest_charge"].as_str().unwrap_or_default()));
    assert_eq!(charge.status, 200, "{}", charge.text);
    assert_eq!(
        (&charge.body["amount_captured"], &charge.body["amount_refunded"], &charge.body["refunded"]),
        (&json!(12000), &json!(12000), &json!(true))
    );

    let book = ledger(&purchase);
    assert_eq!(book["currency"], "eur");
    for (figure, value) in [
        ("authorized", 12000),
        ("captured", 12000),
        ("refunded", 12000),
        ("voided", 0),
        ("held", 0),
        ("transferred", 0),
    ] {
        assert_eq!(book[figure], value, "{figure}: {book}");
    }
    assert_eq!(book["payment_intents"][0]["id"], json!(pi));
    assert_eq!(book["payment_intents"][0]["status"], "succeeded");
    assert_eq!(book["refunds"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        event_types(&book),
        ["payment_intent.amount_capturable_updated", "payment_intent.succeeded", "charge.refunded", "charge.refunded"],
        "{book}"
    );
    for webhook in book["webhooks"].as_array().into_iter().flatten() {
        assert!(webhook["id"].as_str().is_some_and(|e| e.starts_with("evt_")), "{webhook}");
    }
}

#[test]
fn a_partial_capture_releases_the_rest_of_the_hold() {
    let _calm = calm();
    let purchase = fresh_purchase_id();
    let pi = held(&purchase, "5000");
    let over = post(&format!("/v1/payment_intents/{pi}/capture"), &[("amount_to_capture", "5001")], None);
    assert_eq!(error_code(&over), (400, "invalid_request_error", "amount_too_large"));
    let capture = post(&format!("/v1/payment_intents/{pi}/capture"), &[("amount_to_capture", "3000")], None);
    assert_eq!((capture.status, &capture.body["amount_received"]), (200, &json!(3000)));
    let book = ledger(&purchase);
    assert_eq!(
        (book["authorized"].as_i64(), book["captured"].as_i64(), book["voided"].as_i64()),
        (Some(5000), Some(3000), Some(2000))
    );
}

#[test]
fn a_declined_card_is_a_402_card_error_with_the_payment_intent() {
    let _calm = calm();
    let purchase = fresh_purchase_id();
    let declined = hold(&purchase, "4200", "pm_card_chargeDeclined", Some(&format!("{purchase}:hold:create")));
    assert_eq!(error_code(&declined), (402, "card_error", "card_declined"), "{}", declined.text);
    let error = &declined.body["error"];
    assert_eq!(error["decline_code"], "generic_decline");
    assert_eq!(error["message"], "Your card was declined.");
    assert_eq!(error["payment_intent"]["status"], "requires_payment_method");
    assert_eq!(error["payment_intent"]["metadata"]["purchase_id"], json!(purchase));
    assert_eq!(error["payment_intent"]["last_payment_error"]["code"], "card_declined");

    // The decline was executed: the same request replays it.
    let again = hold(&purchase, "4200", "pm_card_chargeDeclined", Some(&format!("{purchase}:hold:create")));
    assert_eq!((again.status, again.header("idempotent-replayed")), (402, Some("true")));
    assert_eq!(again.text, declined.text);

    let book = ledger(&purchase);
    assert_eq!((book["authorized"].as_i64(), book["captured"].as_i64()), (Some(0), Some(0)));
    assert_eq!(event_types(&book), ["payment_intent.payment_failed"]);

    let unknown = hold(&purchase, "4200", "pm_card_from_nowhere", None);
    assert_eq!(error_code(&unknown), (400, "invalid_request_error", "resource_missing"));
    assert_eq!(unknown.body["error"]["param"], "payment_method");
}

#[test]
fn cancel_voids_the_hold_and_wrong_states_are_refused_with_the_payment_intent() {
    let _calm = calm();
    let purchase = fresh_purchase_id();
    let pi = held(&purchase, "3000");
    let cancel =
        post(&format!("/v1/payment_intents/{pi}/cancel"), &[("cancellation_reason", "requested_by_customer")], None);
    assert_eq!(cancel.status, 200, "{}", cancel.text);
    assert_eq!((&cancel.body["status"], &cancel.body["amount_capturable"]), (&json!("canceled"), &json!(0)));
    assert_eq!(cancel.body["cancellation_reason"], "requested_by_customer");

    for action in ["cancel", "capture"] {
        let wrong = post(&format!("/v1/payment_intents/{pi}/{action}"), &[], None);
        assert_eq!(error_code(&wrong), (400, "invalid_request_error", "payment_intent_unexpected_state"), "{action}");
        assert_eq!(wrong.body["error"]["payment_intent"]["id"], json!(pi));
        assert_eq!(wrong.body["error"]["payment_intent"]["status"], "canceled");
    }
    let refund = post("/v1/refunds", &[("payment_intent", &pi)], None);
    assert_eq!(refund.status, 400, "nothing was captured: {}", refund.text);

    // A captured PaymentIntent cannot be cancelled either.
    let other = held(&purchase, "1000");
    assert_eq!(post(&format!("/v1/payment_intents/{other}/capture"), &[], None).status, 200);
    let late = post(&format!("/v1/payment_intents/{other}/cancel"), &[], None);
    assert_eq!(error_code(&late), (400, "invalid_request_error", "payment_intent_unexpected_state"));
    assert_eq!(late.body["error"]["payment_intent"]["status"], "succeeded");

    let book = ledger(&purchase);
    assert_eq!(
        (book["authorized"].as_i64(), book["voided"].as_i64(), book["captured"].as_i64()),
        (Some(4000), Some(3000), Some(1000))
    );
    assert_eq!(
        event_types(&book),
        [
            "payment_intent.amount_capturable_updated",
            "payment_intent.canceled",
            "payment_intent.amount_capturable_updated",
            "payment_intent.succeeded"
        ]
    );
}

#[test]
fn transfers_never_exceed_what_the_group_captured_net_of_refunds() {
    let _calm = calm();
    let purchase = fresh_purchase_id();
    let pi = held(&purchase, "10000");
    let transfer = |amount: &str| {
        post(
            "/v1/transfers",
            &[
                ("amount", amount),
                ("currency", "eur"),
                ("destination", "acct_e2e_seller"),
                ("transfer_group", &purchase),
                ("metadata[purchase_id]", &purchase),
            ],
            None,
        )
    };
    assert_eq!(
        error_code(&transfer("1")),
        (400, "invalid_request_error", "balance_insufficient"),
        "nothing captured yet"
    );
    assert_eq!(post(&format!("/v1/payment_intents/{pi}/capture"), &[], None).status, 200);
    assert_eq!(post("/v1/refunds", &[("payment_intent", &pi), ("amount", "1000")], None).status, 200);
    assert_eq!(error_code(&transfer("9001")), (400, "invalid_request_error", "balance_insufficient"));
    let first = transfer("8000");
    assert_eq!(first.status, 200, "{}", first.text);
    assert!(first.body["id"].as_str().is_some_and(|t| t.starts_with("tr_")));
    assert_eq!(
        (&first.body["object"], &first.body["destination"], &first.body["amount"]),
        (&json!("transfer"), &json!("acct_e2e_seller"), &json!(8000))
    );
    assert_eq!(transfer("1000").status, 200);
    assert_eq!(error_code(&transfer("1")), (400, "invalid_request_error", "balance_insufficient"));

    let book = ledger(&purchase);
    assert_eq!(
        (book["captured"].as_i64(), book["refunded"].as_i64(), book["transferred"].as_i64(), book["net"].as_i64()),
        (Some(10000), Some(1000), Some(9000), Some(0))
    );
    let transfers = book["transfers"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        transfers.iter().map(|t| (t["destination"].clone(), t["amount"].clone())).collect::<Vec<_>>(),
        [(json!("acct_e2e_seller"), json!(8000)), (json!("acct_e2e_seller"), json!(1000))]
    );
    assert_eq!(event_types(&book).iter().filter(|t| *t == "transfer.created").count(), 2);
}

#[test]
fn an_idempotency_key_executes_once_and_replays_byte_for_byte() {
    let _calm = calm();
    let purchase = fresh_purchase_id();
    let key = format!("{purchase}:hold:create");
    let first = hold(&purchase, "2500", "pm_card_visa", Some(&key));
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.header("idempotent-replayed"), None);
    let second = hold(&purchase, "2500", "pm_card_visa", Some(&key));
    assert_eq!(second.status, 200);
    assert_eq!(second.header("idempotent-replayed"), Some("true"));
    assert_eq!(second.text, first.text, "the replay is the stored body, byte for byte");

    // Same parameters in another order are the same request.
    let reordered = post(
        "/v1/payment_intents",
        &[
            ("metadata[purchase_id]", &purchase),
            ("metadata[buyer_id]", "buyer_e2e"),
            ("transfer_group", &purchase),
            ("confirm", "true"),
            ("capture_method", "manual"),
            ("payment_method", "pm_card_visa"),
            ("currency", "eur"),
            ("amount", "2500"),
        ],
        Some(&key),
    );
    assert_eq!((reordered.status, reordered.header("idempotent-replayed")), (200, Some("true")));
    assert_eq!(reordered.text, first.text);

    // Other parameters, or another endpoint, under the same key.
    let other = hold(&purchase, "2501", "pm_card_visa", Some(&key));
    assert_eq!(error_code(&other), (400, "idempotency_error", ""));
    assert!(
        other.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("Keys for idempotent requests can only be used with the same parameters")),
        "{}",
        other.text
    );
    let elsewhere =
        post("/v1/refunds", &[("payment_intent", first.body["id"].as_str().unwrap_or_default())], Some(&key));
    assert_eq!(error_code(&elsewhere), (400, "idempotency_error", ""));

    // A request refused by validation stores nothing: the key stays fresh.
    let fresh_key = format!("{purchase}:hold:second");
    let invalid = hold(&purchase, "twelve", "pm_card_visa", Some(&fresh_key));
    assert_eq!(error_code(&invalid), (400, "invalid_request_error", "parameter_invalid_integer"));
    assert_eq!(invalid.body["error"]["param"], "amount");
    let valid = hold(&purchase, "100", "pm_card_visa", Some(&fresh_key));
    assert_eq!((valid.status, valid.header("idempotent-replayed")), (200, None));

    let book = ledger(&purchase);
    assert_eq!(book["payment_intents"].as_array().map(Vec::len), Some(2), "{book}");
    assert_eq!(book["authorized"], 2600);
    let ops = book["operations"].as_array().cloned().unwrap_or_default();
    let op = |k: &str| ops.iter().find(|o| o["idempotency_key"] == json!(k)).cloned().unwrap_or(Value::Null);
    assert_eq!(
        op(&key),
        json!({"idempotency_key": key, "method": "POST", "path": "/v1/payment_intents", "status": 200, "executions": 1, "replays": 2})
    );
    assert_eq!((op(&fresh_key)["executions"].as_i64(), op(&fresh_key)["replays"].as_i64()), (Some(1), Some(0)));
    assert_eq!(
        event_types(&book),
        ["payment_intent.amount_capturable_updated", "payment_intent.amount_capturable_updated"]
    );
}

#[test]
fn invalid_requests_get_stripes_errors_with_the_param() {
    let _calm = calm();
    type Form<'a> = &'a [(&'a str, &'a str)];
    let cases: [(Form, &str, &str); 5] = [
        (&[("currency", "eur")], "parameter_missing", "amount"),
        (&[("amount", "-5"), ("currency", "eur")], "parameter_invalid_integer", "amount"),
        (&[("amount", "100"), ("currency", "eur"), ("colour", "tabby")], "parameter_unknown", "colour"),
        (&[("amount", "100"), ("currency", "xts")], "", "currency"),
        (&[("amount", "100"), ("currency", "eur"), ("capture_method", "whenever")], "", "capture_method"),
    ];
    for (form, code, param) in cases {
        let reply = post("/v1/payment_intents", form, None);
        assert_eq!(error_code(&reply), (400, "invalid_request_error", code), "{form:?}: {}", reply.text);
        assert_eq!(reply.body["error"]["param"], param, "{form:?}");
    }
    let missing = get_v1("/v1/payment_intents/pi_doesnotexist");
    assert_eq!(error_code(&missing), (404, "invalid_request_error", "resource_missing"));
    let route = get_v1("/v1/customers");
    assert_eq!((route.status, route.body["error"]["type"].as_str()), (404, Some("invalid_request_error")));
    let transfer =
        post("/v1/transfers", &[("amount", "1"), ("currency", "eur"), ("destination", "not-an-account")], None);
    assert_eq!(error_code(&transfer), (400, "invalid_request_error", "resource_missing"));
}

#[test]
fn a_wrong_or_missing_api_key_is_a_401_in_stripes_shape() {
    let _calm = calm();
    let url = format!("{}/v1/payment_intents", base());
    let form = [("amount", "100"), ("currency", "eur")];
    let wrong = send_form("POST", &url, Some("sk_test_not_the_key_1234"), &[], Some(&form));
    assert_eq!(error_code(&wrong), (401, "invalid_request_error", ""));
    let message = wrong.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("Invalid API Key provided: sk_test_"), "{message}");
    assert!(!message.contains("not_the_key"), "the key is redacted: {message}");
    let none = send_form("POST", &url, None, &[], Some(&form));
    assert_eq!(error_code(&none), (401, "invalid_request_error", ""));
    // The sandbox's own endpoints take the same key, in the repository's error shape.
    let ledger = send("GET", &format!("{}/_sandbox/ledger", base()), Some("nope"), None);
    assert_eq!((ledger.status, ledger.body["error"]["code"].as_str()), (401, Some("unauthorized")));
    let chaos = send("POST", &format!("{}/_sandbox/chaos", base()), None, Some(&json!({"api_error_rate": 1})));
    assert_eq!(chaos.status, 401);
}

#[test]
fn the_overall_ledger_totals_everything_and_unknown_purchases_are_zero() {
    let _calm = calm();
    let purchase = fresh_purchase_id();
    held(&purchase, "700");
    let all = send("GET", &format!("{}/_sandbox/ledger", base()), Some(&key()), None);
    assert_eq!(all.status, 200);
    assert!(all.body["totals"]["eur"]["authorized"].as_i64().is_some_and(|a| a >= 700), "{:?}", all.body);
    assert!(all.body["counts"]["objects"]["payment_intent"].as_i64().is_some_and(|n| n >= 1));
    assert!(all.body["counts"]["events"].as_i64().is_some_and(|n| n >= 1));
    let nobody = ledger(&fresh_purchase_id());
    for figure in ["authorized", "captured", "refunded", "voided", "transferred"] {
        assert_eq!(nobody[figure], 0, "{figure}");
    }
    assert_eq!((nobody["payment_intents"].clone(), nobody["webhooks"].clone()), (json!([]), json!([])));
}

/// Resets chaos when dropped, so a failing assertion cannot leave faults on
/// for the tests that run next.
struct ChaosGuard {
    _exclusive: RwLockWriteGuard<'static, ()>,
}

impl Drop for ChaosGuard {
    fn drop(&mut self) {
        let _ = send("DELETE", &format!("{}/_sandbox/chaos", base()), Some(&key()), None);
    }
}

fn set_chaos(settings: Value) -> Value {
    let reply = send("POST", &format!("{}/_sandbox/chaos", base()), Some(&key()), Some(&settings));
    assert_eq!(reply.status, 200, "{settings}: {:?}", reply.body);
    reply.body
}

#[test]
fn chaos_settings_round_trip_and_inject_faults_around_idempotency() {
    let _chaos = ChaosGuard { _exclusive: CHAOS.write().unwrap_or_else(|e| e.into_inner()) };
    let url = format!("{}/_sandbox/chaos", base());
    let reset = send("DELETE", &url, Some(&key()), None);
    assert_eq!(reset.status, 200);
    let calm_settings = reset.body.clone();
    for rate in [
        "webhook_duplicate_rate",
        "webhook_reorder_rate",
        "webhook_delay_rate",
        "webhook_drop_rate",
        "api_error_rate",
        "api_lost_response_rate",
    ] {
        assert_eq!(calm_settings[rate], 0.0, "{rate}: {calm_settings}");
    }

    // Only the fields given change; the answer is the full settings.
    let set = set_chaos(json!({"webhook_duplicate_rate": 0.5, "webhook_max_delay_ms": 1500}));
    assert_eq!((set["webhook_duplicate_rate"].as_f64(), set["webhook_max_delay_ms"].as_u64()), (Some(0.5), Some(1500)));
    let set = set_chaos(json!({"webhook_drop_rate": 0.25, "webhook_reorder_rate": 0.1, "webhook_delay_rate": 0.2}));
    assert_eq!((set["webhook_duplicate_rate"].as_f64(), set["webhook_drop_rate"].as_f64()), (Some(0.5), Some(0.25)));
    let read = get(&format!("{url}?unused=1"));
    assert_eq!(read.status, 401, "reading chaos needs the key too");
    let read = send("GET", &url, Some(&key()), None);
    assert_eq!(read.body, set);

    // Invalid settings are refused and change nothing.
    for bad in [
        json!({"api_error_rate": 1.5}),
        json!({"webhook_drop_rate": -1}),
        json!({"api_error_rate": "often"}),
        json!({"surprise": 1}),
        json!({"webhook_max_delay_ms": 600001}),
    ] {
        let reply = send("POST", &url, Some(&key()), Some(&bad));
        assert_eq!(reply.status, 422, "{bad}: {:?}", reply.body);
        assert!(reply.body["error"]["code"].as_str().is_some_and(|c| !c.is_empty()));
    }
    assert_eq!(send("GET", &url, Some(&key()), None).body, set);
    let reset = send("DELETE", &url, Some(&key()), None);
    assert_eq!(reset.body, calm_settings);

    // A lost response: the request executed, the caller saw a 500, the
    // retry under the same key gets the stored answer.
    let purchase = fresh_purchase_id();
    let key_lost = format!("{purchase}:hold:create");
    set_chaos(json!({"api_lost_response_rate": 1}));
    let lost = hold(&purchase, "900", "pm_card_visa", Some(&key_lost));
    assert_eq!(error_code(&lost), (500, "api_error", ""), "{}", lost.text);
    set_chaos(json!({"api_lost_response_rate": 0}));
    let retried = hold(&purchase, "900", "pm_card_visa", Some(&key_lost));
    assert_eq!((retried.status, retried.header("idempotent-replayed")), (200, Some("true")), "{}", retried.text);
    assert_eq!(retried.body["status"], "requires_capture");

    // An API error before execution: nothing stored, the retry executes.
    let key_error = format!("{purchase}:hold:again");
    set_chaos(json!({"api_error_rate": 1}));
    let failed = hold(&purchase, "100", "pm_card_visa", Some(&key_error));
    assert_eq!(error_code(&failed), (500, "api_error", ""));
    set_chaos(json!({"api_error_rate": 0}));
    let executed = hold(&purchase, "100", "pm_card_visa", Some(&key_error));
    assert_eq!((executed.status, executed.header("idempotent-replayed")), (200, None), "{}", executed.text);

    let book = ledger(&purchase);
    let ops = book["operations"].as_array().cloned().unwrap_or_default();
    let op = |k: &str| {
        ops.iter().find(|o| o["idempotency_key"] == json!(k)).map(|o| (o["executions"].as_i64(), o["replays"].as_i64()))
    };
    assert_eq!(op(&key_lost), Some((Some(1), Some(1))), "{book}");
    assert_eq!(op(&key_error), Some((Some(1), Some(0))), "{book}");
    assert_eq!(book["authorized"], 1000, "two holds, each executed once: {book}");

    // Webhook chaos changes delivery, never what was recorded.
    set_chaos(
        json!({"webhook_duplicate_rate": 1, "webhook_drop_rate": 1, "webhook_delay_rate": 1, "webhook_max_delay_ms": 200}),
    );
    let shaken = fresh_purchase_id();
    held(&shaken, "300");
    let book = ledger(&shaken);
    assert_eq!(event_types(&book), ["payment_intent.amount_capturable_updated"]);
    assert_eq!(book["webhooks"][0]["deliveries"], 2, "duplicated: {book}");

    let reset = send("DELETE", &url, Some(&key()), None);
    assert_eq!((reset.status, &reset.body), (200, &calm_settings));
}
