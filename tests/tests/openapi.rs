//! docs/openapi.yaml and its checker, with no running stack: the document is
//! well-formed and self-consistent, and the checker accepts right answers and
//! rejects wrong ones.

use std::collections::{BTreeSet, HashSet};

use e2e::openapi::{self, check, matches_template, resolve_ref, spec, Found, Spec};
use serde_json::{json, Value};

fn document() -> &'static Value {
    spec().document()
}

/// Every `$ref` in `value`, with where it is.
fn refs<'a>(value: &'a Value, at: String, out: &mut Vec<(String, &'a str)>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                if key == "$ref" {
                    if let Some(r) = child.as_str() {
                        out.push((at.clone(), r));
                    }
                } else {
                    refs(child, format!("{at}/{key}"), out);
                }
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                refs(child, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

fn deref(value: &Value) -> &Value {
    let mut value = value;
    while let Some(r) = value.get("$ref").and_then(Value::as_str) {
        value = resolve_ref(document(), r).unwrap_or_else(|| panic!("{r} does not resolve"));
    }
    value
}

const ERROR_REF: &str = "#/components/schemas/Error";

/// Whether a response schema is the shared Error schema (directly, or as the
/// first part of an `allOf` that narrows the code).
fn is_error_schema(schema: &Value) -> bool {
    schema.get("$ref").and_then(Value::as_str) == Some(ERROR_REF)
        || schema["allOf"].as_array().is_some_and(|parts| parts.iter().any(|p| p["$ref"] == ERROR_REF))
}

fn operations() -> Vec<(String, String, &'static Value)> {
    let mut out = Vec::new();
    for (template, item) in document()["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            if ["get", "put", "post", "delete", "options", "head", "patch", "trace"].contains(&method.as_str()) {
                out.push((method.to_uppercase(), template.clone(), op));
            }
        }
    }
    out
}

#[test]
fn the_document_loads_and_every_response_schema_compiles() {
    let loaded = Spec::load(&openapi::spec_path()).expect("docs/openapi.yaml loads");
    assert_eq!(document()["openapi"], "3.1.0");
    assert!(loaded.operations().count() >= 12, "every public operation is described");
}

#[test]
fn every_ref_resolves_inside_the_document() {
    let mut found = Vec::new();
    refs(document(), String::new(), &mut found);
    assert!(found.len() > 50, "the document uses $refs: {}", found.len());
    let broken: Vec<_> =
        found.iter().filter(|(_, r)| !r.starts_with("#/") || resolve_ref(document(), r).is_none()).collect();
    assert!(broken.is_empty(), "unresolvable or external $refs: {broken:?}");
}

#[test]
fn every_component_schema_is_used() {
    let mut found = Vec::new();
    refs(document(), String::new(), &mut found);
    let used: HashSet<&str> = found.iter().map(|(_, r)| *r).collect();
    let unused: Vec<String> = document()["components"]["schemas"]
        .as_object()
        .expect("schemas")
        .keys()
        .filter(|name| !used.contains(format!("#/components/schemas/{name}").as_str()))
        .cloned()
        .collect();
    assert!(unused.is_empty(), "schemas nothing refers to: {unused:?}");
}

#[test]
fn every_operation_has_an_id_a_success_and_errors_in_the_shared_shape() {
    let mut ids = HashSet::new();
    for (method, template, op) in operations() {
        let name = format!("{method} {template}");
        let id = op["operationId"].as_str().unwrap_or_else(|| panic!("{name}: no operationId"));
        assert!(ids.insert(id.to_string()), "{name}: operationId {id} is used twice");
        assert!(op["summary"].as_str().is_some_and(|s| !s.is_empty()), "{name}: no summary");
        assert!(op["tags"].as_array().is_some_and(|t| !t.is_empty()), "{name}: no tag");
        let responses = op["responses"].as_object().unwrap_or_else(|| panic!("{name}: no responses"));
        assert!(responses.keys().any(|s| s.starts_with('2')), "{name}: no 2xx response");
        assert!(responses.keys().any(|s| s.starts_with('4')), "{name}: no 4xx response");
        for (status, response) in responses {
            let response = deref(response);
            assert!(response["description"].as_str().is_some_and(|d| !d.is_empty()), "{name} {status}: no description");
            let schema = &response["content"]["application/json"]["schema"];
            assert!(!schema.is_null(), "{name} {status}: no application/json schema");
            if !status.starts_with('2') {
                assert!(is_error_schema(schema), "{name} {status}: does not use the shared Error schema: {schema}");
            } else {
                assert!(!is_error_schema(schema), "{name} {status}: a success with the Error schema");
            }
        }
        // Security is always said explicitly, with schemes that exist.
        let security =
            op["security"].as_array().unwrap_or_else(|| panic!("{name}: no security (say `security: []` for none)"));
        for requirement in security {
            for scheme in requirement.as_object().expect("requirement").keys() {
                let def = &document()["components"]["securitySchemes"][scheme];
                assert_eq!(
                    (def["type"].as_str(), def["scheme"].as_str()),
                    (Some("http"), Some("bearer")),
                    "{name}: {scheme}"
                );
            }
        }
        // Authenticated operations document 401; public ones don't.
        assert_eq!(!security.is_empty(), responses.contains_key("401"), "{name}: 401 iff a token is needed");
    }
}

#[test]
fn path_parameters_and_templates_agree() {
    for (template, item) in document()["paths"].as_object().expect("paths") {
        assert!(
            ["payments", "marketplace"].contains(&item["x-service"].as_str().unwrap_or_default()),
            "{template}: x-service"
        );
        let in_template: BTreeSet<String> = template
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(String::from)
            .collect();
        for (method, op) in item.as_object().expect("item").iter().filter(|(_, v)| v.get("responses").is_some()) {
            let declared: BTreeSet<String> = item["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(op["parameters"].as_array().into_iter().flatten())
                .map(deref)
                .filter(|p| p["in"] == "path")
                .map(|p| {
                    assert_eq!(p["required"], true, "{method} {template}: path parameters are required");
                    p["name"].as_str().expect("name").to_string()
                })
                .collect();
            assert_eq!(declared, in_template, "{method} {template}: path parameters");
        }
    }
}

/// Schemas reachable from any response.
fn response_schemas() -> Vec<(String, &'static Value)> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut stack: Vec<(String, &Value)> = Vec::new();
    for (method, template, op) in operations() {
        for (status, response) in op["responses"].as_object().expect("responses") {
            stack.push((
                format!("{method} {template} {status}"),
                &deref(response)["content"]["application/json"]["schema"],
            ));
        }
    }
    while let Some((at, schema)) = stack.pop() {
        let mut found = Vec::new();
        refs(schema, String::new(), &mut found);
        for (_, r) in found {
            if seen.insert(r.to_string()) {
                stack.push((r.to_string(), resolve_ref(document(), r).expect("resolves")));
            }
        }
        out.push((at, schema));
    }
    out
}

#[test]
fn answers_never_forbid_additional_properties() {
    for (at, schema) in response_schemas() {
        let text = schema.to_string();
        assert!(!text.contains("\"additionalProperties\":false"), "{at}: answers must allow additive fields: {text}");
    }
}

#[test]
fn examples_in_the_document_are_valid() {
    let spec = spec();
    let mut checked = 0;
    for (name, schema) in document()["components"]["schemas"].as_object().expect("schemas") {
        for example in schema["examples"].as_array().into_iter().flatten() {
            let problems = spec.problems(schema, example).expect("compiles");
            assert!(problems.is_empty(), "example of {name} {example}: {problems:?}");
            checked += 1;
        }
    }
    for (method, template, op) in operations() {
        for (status, response) in op["responses"].as_object().expect("responses") {
            let media = &deref(response)["content"]["application/json"];
            for (label, example) in media["examples"].as_object().into_iter().flatten() {
                let problems = spec.problems(&media["schema"], &example["value"]).expect("compiles");
                assert!(problems.is_empty(), "{method} {template} {status} example {label}: {problems:?}");
                checked += 1;
            }
        }
    }
    assert!(checked >= 10, "{checked} examples");
}

fn schema(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

#[test]
fn the_request_bodies_the_tests_send_are_described() {
    let problems = spec().problems(&schema("NewListing"), &e2e::listing_body(json!({}))).expect("compiles");
    assert!(problems.is_empty(), "{problems:?}");
    let unknown =
        spec().problems(&schema("NewListing"), &e2e::listing_body(json!({"unexpected": true}))).expect("compiles");
    assert!(!unknown.is_empty(), "request bodies are strict");
    let purchase =
        json!({"listing_id": "lst_abc123", "buyer_id": "buy_1", "quantity": 2, "payment_method": "pm_card_visa"});
    assert_eq!(spec().problems(&schema("NewPurchase"), &purchase).expect("compiles"), Vec::<String>::new());
    let priced = json!({"listing_id": "lst_abc123", "buyer_id": "buy_1", "payment_method": "pm_card_visa", "amount": {"value": "1.00", "currency": "EUR"}});
    assert!(
        !spec().problems(&schema("NewPurchase"), &priced).expect("compiles").is_empty(),
        "the client does not set the price"
    );
    let key = |k: &str| spec().problems(&schema("IdempotencyKey"), &json!(k)).expect("compiles").is_empty();
    assert!(key("happy-1767225600-0") && key(&"k".repeat(255)));
    assert!(!key("") && !key("has space") && !key(&"k".repeat(256)));
}

// ---------------------------------------------------------------- samples

fn money(value: &str, currency: &str) -> Value {
    json!({"value": value, "currency": currency})
}

fn purchase() -> Value {
    json!({
        "id": "pur_5f1c0a9e2b7d",
        "object": "purchase",
        "revision": 4,
        "state": "awaiting_delivery",
        "listing_id": "lst_0c9a6e4d",
        "buyer_id": "buy_42",
        "seller_id": "sel_test",
        "quantity": 1,
        "payment_method": "pm_card_visa",
        "amount": money("120.00", "EUR"),
        "fee": money("12.00", "EUR"),
        "seller_payout": money("108.00", "EUR"),
        "payment_intent": "pi_3P0x1y2z",
        "auto_release_at": "2026-03-04T12:00:00.000Z",
        "hold_expires_at": "2026-03-08T12:00:00Z",
        "attention": null,
        "steps": [
            {"name": "reserve_listing", "status": "succeeded", "attempts": 1, "last_error": null, "next_attempt_at": null},
            {"name": "hold_funds", "status": "succeeded", "attempts": 2, "last_error": "503 from provider", "next_attempt_at": null},
            {"name": "confirm_delivery", "status": "running", "attempts": 0, "last_error": null, "next_attempt_at": null},
            {"name": "capture_funds", "status": "pending", "attempts": 0, "last_error": null, "next_attempt_at": null},
            {"name": "release_funds", "status": "pending", "attempts": 0, "last_error": null, "next_attempt_at": null},
            {"name": "mark_sold", "status": "pending", "attempts": 0, "last_error": null, "next_attempt_at": null}
        ],
        "history": [
            {"at": "2026-03-01T12:00:00.000Z", "input": "start", "from": "reserving", "to": "reserving"},
            {"at": "2026-03-01T12:00:01.000Z", "input": "reserve_listing forward action succeeded (attempt 1)", "from": "reserving", "to": "holding_funds"}
        ],
        "created_at": "2026-03-01T12:00:00.000Z",
        "updated_at": "2026-03-01T12:00:03.000Z"
    })
}

fn listing() -> Value {
    json!({
        "id": "lst_0c9a6e4d2b8f4a1e", "seller_id": "sel_test", "seller_account": "acct_test_seller",
        "title": "Calm senior tabby", "description": "", "species": "cat", "breed": null, "age_months": null,
        "region": "berlin", "price": money("1500", "JPY"), "quantity": 3, "available": 2, "status": "active",
        "created_at": "2026-03-01T12:00:00.000Z", "updated_at": "2026-03-01T12:00:00.000Z"
    })
}

fn with(mut value: Value, pointer: &str, new: Value) -> Value {
    *value.pointer_mut(pointer).unwrap_or_else(|| panic!("{pointer}")) = new;
    value
}

fn without(mut value: Value, key: &str) -> Value {
    value.as_object_mut().expect("object").remove(key);
    value
}

fn error(code: &str) -> Value {
    json!({"error": {"code": code, "message": "something"}})
}

#[track_caller]
fn accepted(service: &str, method: &str, path: &str, status: u16, body: &Value) {
    if let Err(e) = check(service, method, path, status, body) {
        panic!("{method} {path} {status} should conform: {e}");
    }
}

#[track_caller]
fn rejected(service: &str, method: &str, path: &str, status: u16, body: &Value) -> String {
    match check(service, method, path, status, body) {
        Ok(()) => panic!("{method} {path} {status} should break the spec: {body}"),
        Err(e) => e,
    }
}

#[test]
fn a_right_purchase_is_accepted_in_every_operation_that_returns_one() {
    let p = purchase();
    accepted("payments", "POST", "/v1/purchases", 201, &p);
    accepted("payments", "POST", "/v1/purchases", 200, &p);
    accepted("payments", "GET", "/v1/purchases/pur_5f1c0a9e2b7d", 200, &p);
    accepted("payments", "GET", "/v1/ops/purchases/pur_5f1c0a9e2b7d", 200, &p);
    for action in ["confirm-delivery", "dispute", "cancel"] {
        accepted("payments", "post", &format!("/v1/purchases/pur_1/{action}"), 200, &p);
    }
    for action in ["retry", "refund", "resolve"] {
        accepted("payments", "POST", &format!("/v1/ops/purchases/pur_1/{action}"), 200, &p);
    }
    // Additive fields are fine, and so are the nullable fields' other shapes.
    let mut richer = with(
        p.clone(),
        "/attention",
        json!({"step": "release_funds", "action": "forward", "error": "timeout", "since": "2026-03-02T00:00:00Z"}),
    );
    richer["state"] = json!("needs_attention");
    richer["steps"][0]["compensation_attempts"] = json!(0);
    richer["something_new"] = json!({"x": 1});
    richer["payment_intent"] = Value::Null;
    richer["amount"] = money("1500", "JPY");
    accepted("payments", "GET", "/v1/purchases/pur_1", 200, &richer);
}

#[test]
fn a_wrong_purchase_is_rejected_with_the_reason() {
    let path = "/v1/purchases/pur_1";
    let numeric = rejected("payments", "GET", path, 200, &with(purchase(), "/amount/value", json!(120)));
    assert!(numeric.contains("getPurchase") && numeric.contains("/amount/value"), "{numeric}");
    assert!(numeric.contains("200"), "{numeric}");
    let cases = [
        ("a float value", with(purchase(), "/fee/value", json!(12.0))),
        ("EUR with one decimal", with(purchase(), "/amount/value", json!("120.5"))),
        ("JPY with decimals", with(purchase(), "/amount", money("1500.00", "JPY"))),
        ("an unknown currency", with(purchase(), "/amount/currency", json!("BTC"))),
        ("an unknown state", with(purchase(), "/state", json!("shipped"))),
        ("a bad id", with(purchase(), "/id", json!("purchase-1"))),
        ("a numeric timestamp", with(purchase(), "/created_at", json!(1767225600000u64))),
        ("a timestamp that is not RFC 3339", with(purchase(), "/updated_at", json!("yesterday"))),
        ("an unknown step status", with(purchase(), "/steps/0/status", json!("done"))),
        ("an unknown step", with(purchase(), "/steps/0/name", json!("ship"))),
        ("a history state that is not a state", with(purchase(), "/history/0/to", json!("running"))),
        (
            "a bad attention action",
            with(
                purchase(),
                "/attention",
                json!({"step": "hold_funds", "action": "undo", "error": "x", "since": "2026-03-02T00:00:00Z"}),
            ),
        ),
        ("a missing fee", without(purchase(), "fee")),
        ("a missing nullable field", without(purchase(), "payment_intent")),
        ("a quantity as a string", with(purchase(), "/quantity", json!("1"))),
        ("an error body", error("not_found")),
        ("text", json!("<html>oops</html>")),
    ];
    for (what, body) in cases {
        assert!(check("payments", "GET", path, 200, &body).is_err(), "a purchase with {what} was accepted");
        assert!(check("payments", "POST", "/v1/purchases", 201, &body).is_err(), "a purchase with {what} was accepted");
    }
}

#[test]
fn listings_answers() {
    accepted("marketplace", "GET", "/v1/listings/lst_0c9a6e4d2b8f4a1e", 200, &listing());
    accepted("marketplace", "POST", "/v1/listings", 201, &with(listing(), "/price", money("120.00", "EUR")));
    accepted("marketplace", "GET", "/v1/listings/not-an-id", 404, &error("not_found"));
    accepted("marketplace", "POST", "/v1/listings", 422, &error("invalid_amount"));
    accepted("marketplace", "POST", "/v1/listings", 401, &error("unauthorized"));
    rejected("marketplace", "GET", "/v1/listings/lst_1", 200, &with(listing(), "/price", money("120", "EUR")));
    rejected("marketplace", "GET", "/v1/listings/lst_1", 200, &with(listing(), "/species", json!("dragon")));
    rejected("marketplace", "GET", "/v1/listings/lst_1", 200, &without(listing(), "available"));
    rejected("marketplace", "GET", "/v1/listings/lst_1", 200, &with(listing(), "/available", json!(-1)));
    rejected("marketplace", "GET", "/v1/listings/lst_1", 404, &json!({"error": "not_found"}));
    // No token needed to read, so no 401 for it.
    rejected("marketplace", "GET", "/v1/listings/lst_1", 401, &error("unauthorized"));
}

#[test]
fn error_answers_follow_the_shared_shape_and_their_fixed_codes() {
    accepted("payments", "GET", "/v1/purchases/pur_nope", 404, &error("not_found"));
    accepted("payments", "POST", "/v1/purchases/pur_1/cancel", 409, &error("invalid_state"));
    accepted("payments", "POST", "/v1/purchases", 422, &error("idempotency_key_reused"));
    accepted("payments", "POST", "/v1/purchases", 413, &error("payload_too_large"));
    accepted("payments", "POST", "/v1/purchases", 409, &error("listing_unavailable"));
    rejected("payments", "POST", "/v1/purchases", 409, &error("invalid_state"));
    accepted("payments", "POST", "/v1/ops/purchases/pur_1/refund", 403, &error("forbidden"));
    accepted("payments", "POST", "/v1/webhooks/stripe", 400, &error("signature_mismatch"));
    accepted("payments", "POST", "/v1/webhooks/stripe", 200, &json!({"received": true, "outcome": "duplicate"}));
    accepted("payments", "GET", "/v1/ops/purchases", 503, &error("database_unavailable"));

    rejected("payments", "GET", "/v1/purchases/pur_nope", 404, &error("missing"));
    rejected("payments", "POST", "/v1/purchases", 401, &error("forbidden"));
    rejected("payments", "POST", "/v1/purchases/pur_1/cancel", 409, &error("out_of_stock"));
    rejected("payments", "POST", "/v1/webhooks/stripe", 400, &error("invalid_field"));
    rejected("payments", "POST", "/v1/webhooks/stripe", 200, &json!({"received": "yes", "outcome": "applied"}));
    rejected("payments", "POST", "/v1/purchases", 422, &json!({"error": {"code": "Bad Code", "message": "x"}}));
    rejected("payments", "POST", "/v1/purchases", 422, &json!({"error": {"code": "invalid_field", "message": ""}}));
    rejected("payments", "POST", "/v1/purchases", 422, &json!({"code": "invalid_field", "message": "x"}));
}

#[test]
fn undocumented_statuses_of_documented_operations_are_errors() {
    let e = rejected("payments", "GET", "/v1/purchases/pur_1", 418, &error("teapot"));
    assert!(e.contains("getPurchase") && e.contains("418") && e.contains("does not document"), "{e}");
    // getPurchase accepts both tokens: 403 cannot happen.
    rejected("payments", "GET", "/v1/purchases/pur_1", 403, &error("forbidden"));
    // A purchase is never "created" by a command.
    rejected("payments", "POST", "/v1/purchases/pur_1/cancel", 201, &purchase());
    rejected("payments", "GET", "/v1/ops/purchases", 404, &error("not_found"));
}

#[test]
fn the_operator_list() {
    let page = json!({
        "items": [{
            "id": "pur_1", "state": "needs_attention", "listing_id": "lst_1", "buyer_id": "b", "seller_id": "s",
            "quantity": 2, "amount": money("9.90", "GBP"),
            "created_at": "2026-03-01T12:00:00.000Z", "updated_at": "2026-03-01T12:00:00.000Z"
        }],
        "next_cursor": "eyJpZCI6InB1cl8xIn0"
    });
    accepted("payments", "GET", "/v1/ops/purchases?state=needs_attention&limit=10", 200, &page);
    accepted("payments", "GET", "/v1/ops/purchases", 200, &json!({"items": [], "next_cursor": null}));
    accepted("payments", "GET", "/v1/ops/purchases?limit=0", 422, &error("invalid_field"));
    rejected("payments", "GET", "/v1/ops/purchases", 200, &json!({"items": []}));
    rejected("payments", "GET", "/v1/ops/purchases", 200, &with(page, "/items/0/amount", json!("9.90 GBP")));
}

#[test]
fn paths_are_matched_against_templates_per_service() {
    let found = |service: &str, method: &str, path: &str| match spec().find(service, method, path) {
        Found::Operation { operation, .. } => Some(operation.id.clone()),
        Found::MethodNotDocumented { template, .. } => Some(format!("405 {template}")),
        Found::NotDocumented => None,
    };
    let cases = [
        ("payments", "POST", "/v1/purchases", Some("createPurchase")),
        ("payments", "GET", "/v1/purchases/pur_1", Some("getPurchase")),
        ("payments", "GET", "/v1/purchases/pur_1?expand=steps", Some("getPurchase")),
        ("payments", "GET", "/v1/purchases/pur_1/", Some("getPurchase")),
        ("payments", "POST", "/v1/purchases/pur_1/confirm-delivery", Some("confirmDelivery")),
        ("payments", "POST", "/v1/purchases/pur_1/dispute", Some("openDispute")),
        ("payments", "POST", "/v1/purchases/pur_1/cancel", Some("cancelPurchase")),
        ("payments", "POST", "/v1/webhooks/stripe", Some("receiveStripeWebhook")),
        ("payments", "GET", "/v1/ops/purchases?state=disputed&cursor=abc", Some("listPurchases")),
        ("payments", "GET", "/v1/ops/purchases/pur_1", Some("getPurchaseAsOperator")),
        ("payments", "POST", "/v1/ops/purchases/pur_1/retry", Some("retryPurchase")),
        ("payments", "POST", "/v1/ops/purchases/pur_1/refund", Some("refundPurchase")),
        ("payments", "POST", "/v1/ops/purchases/pur_1/resolve", Some("resolveDispute")),
        ("marketplace", "POST", "/v1/listings", Some("createListing")),
        ("marketplace", "GET", "/v1/listings/lst_1", Some("getListing")),
        ("marketplace", "GET", "/v1/listings/not-an-id", Some("getListing")),
        // Documented paths, undocumented methods.
        ("payments", "DELETE", "/v1/purchases/pur_1", Some("405 /v1/purchases/{id}")),
        ("marketplace", "GET", "/v1/listings", Some("405 /v1/listings")),
        // Not public, or not this service's: skipped.
        ("payments", "GET", "/healthz", None),
        ("marketplace", "GET", "/healthz", None),
        ("marketplace", "POST", "/internal/reservations", None),
        ("marketplace", "POST", "/internal/reservations/pur_1/release", None),
        ("payments", "GET", "/no/such/route", None),
        ("payments", "GET", "/v1/purchases/pur_1/steps/extra", None),
        ("payments", "GET", "/v1/listings/lst_1", None),
        ("marketplace", "GET", "/v1/purchases/pur_1", None),
        ("sandbox-psp", "POST", "/v1/payment_intents", None),
        ("sandbox-psp", "POST", "/_sandbox/webhooks/flush", None),
        ("ads", "GET", "/v1/listings/lst_1", None),
        ("marketplace", "GET", "/v1/search?q=cat", Some("searchListings")),
    ];
    for (service, method, path, expected) in cases {
        assert_eq!(found(service, method, path).as_deref(), expected, "{service} {method} {path}");
    }
    assert!(matches_template("/v1/ops/purchases/{id}/resolve", "/v1/ops/purchases/pur_9/resolve?x"));
}

#[test]
fn skipped_paths_are_never_checked_and_undocumented_methods_must_be_405() {
    // Whatever they answer.
    accepted("payments", "GET", "/healthz", 200, &json!({"status": "ok"}));
    accepted("payments", "GET", "/no/such/route", 404, &json!("not json"));
    accepted("marketplace", "POST", "/internal/reservations", 201, &json!({"purchase_id": "pur_1"}));
    accepted("sandbox-psp", "POST", "/v1/purchases", 200, &json!(null));
    // A method not listed for a listed path: 405 in the shared shape.
    accepted("marketplace", "DELETE", "/v1/listings/lst_1", 405, &error("method_not_allowed"));
    let e = rejected("marketplace", "PUT", "/v1/listings/lst_1", 200, &listing());
    assert!(e.contains("405"), "{e}");
    rejected("marketplace", "PUT", "/v1/listings/lst_1", 405, &error("not_found"));
    rejected("payments", "GET", "/v1/purchases", 405, &json!("Method Not Allowed"));
}

// ------------------------------------------------------- through the harness

/// A loopback HTTP server answering every request with what `answer` says
/// for its path (`status`, JSON text). Returns its base URL.
fn fake_worker(answer: fn(&str) -> (u16, String)) -> String {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((name, value)) = line.split_once(':') {
                    if name.eq_ignore_ascii_case("content-length") {
                        length = value.trim().parse().unwrap_or(0);
                    }
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let path = request_line.split_whitespace().nth(1).unwrap_or("/").to_string();
            let (status, text) = answer(&path);
            let mut stream = reader.into_inner();
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                text.len()
            );
        }
    });
    base
}

fn fake_answer(path: &str) -> (u16, String) {
    let path = path.split('?').next().unwrap_or_default();
    match path {
        "/v1/listings/lst_good" => (200, listing().to_string()),
        "/v1/listings/lst_bad" => (200, with(listing(), "/price/value", json!(1500)).to_string()),
        "/v1/purchases" => (201, purchase().to_string()),
        "/v1/purchases/pur_teapot" => (418, error("teapot").to_string()),
        "/healthz" => (200, "plain text, never checked".to_string()),
        _ => (404, error("not_found").to_string()),
    }
}

fn panic_message(f: impl FnOnce() + std::panic::UnwindSafe) -> Option<String> {
    let payload = std::panic::catch_unwind(f).err()?;
    payload.downcast_ref::<String>().cloned().or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
}

#[test]
fn the_harness_checks_every_answer_of_payments_and_marketplace() {
    let payments = fake_worker(fake_answer);
    let marketplace = fake_worker(fake_answer);
    // This test binary talks to no real stack: these variables only point the
    // harness at the fake Workers above.
    std::env::set_var("E2E_PAYMENTS_URL", &payments);
    std::env::set_var("E2E_MARKETPLACE_URL", format!("{marketplace}/"));

    assert_eq!(e2e::get(&format!("{marketplace}/v1/listings/lst_good")).status, 200);
    assert_eq!(e2e::get(&format!("{marketplace}/healthz")).status, 200);
    assert_eq!(e2e::get(&format!("{marketplace}/v1/listings/lst_missing?x=1")).status, 404);
    let bad = panic_message(|| {
        e2e::get(&format!("{marketplace}/v1/listings/lst_bad"));
    })
    .expect("a wrong answer fails the test");
    assert!(bad.contains("docs/openapi.yaml") && bad.contains("getListing") && bad.contains("/price/value"), "{bad}");
    assert!(bad.contains("1500"), "the body is shown: {bad}");

    // The same wrong body from a path the payments Worker does not document is
    // not checked: the service is told by the URL's base.
    assert_eq!(e2e::get(&format!("{payments}/v1/listings/lst_bad")).status, 200);

    let created = e2e::send_with(
        "POST",
        &format!("{payments}/v1/purchases"),
        Some("token"),
        &[("idempotency-key", "k1")],
        Some(&json!({"listing_id": "lst_good", "buyer_id": "b", "payment_method": "pm_card_visa"})),
    );
    assert_eq!(created.status, 201);
    let teapot = panic_message(|| {
        e2e::send("GET", &format!("{payments}/v1/purchases/pur_teapot"), Some("token"), None);
    })
    .expect("an undocumented status fails the test");
    assert!(teapot.contains("418") && teapot.contains("getPurchase"), "{teapot}");
}
