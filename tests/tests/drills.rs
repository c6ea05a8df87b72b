//! Reliability drills on the running stack (docs/reliability.md): chaos at
//! the provider, races for the last unit and on one purchase, hostile input,
//! and a saga whose retries run out. Each prints what it checked; run one
//! with `cargo xtask drill <name>`.
//!
//! The drills change the sandbox's chaos settings, so they run one at a time
//! (a lock) and always reset chaos when they end, even on failure.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use e2e::shop::{
    buyer, checkout_token, ledger, listing, operator, ops_token, payments, purchase, stripe_key, unique, wait_until,
};
use e2e::{listing_body, money, secret, send, send_raw, service_url, shop, Reply};
use serde_json::{json, Value};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Holds the drill lock and resets the sandbox's chaos on drop.
struct Drill<'a> {
    _lock: MutexGuard<'a, ()>,
    name: &'static str,
    started: Instant,
}

impl<'a> Drill<'a> {
    fn start(name: &'static str) -> Drill<'a> {
        let lock = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        reset_chaos();
        println!("drill {name}: started");
        Drill { _lock: lock, name, started: Instant::now() }
    }

    fn report(&self, line: impl AsRef<str>) {
        println!("drill {}: {}", self.name, line.as_ref());
    }
}

impl Drop for Drill<'_> {
    fn drop(&mut self) {
        reset_chaos();
        println!("drill {}: finished in {:.1}s", self.name, self.started.elapsed().as_secs_f64());
    }
}

fn set_chaos(settings: Value) {
    let reply =
        send("POST", &format!("{}/_sandbox/chaos", service_url("sandbox-psp")), Some(&stripe_key()), Some(&settings));
    assert_eq!(reply.status, 200, "setting chaos: {:?}", reply.body);
}

fn reset_chaos() {
    let _ = send("DELETE", &format!("{}/_sandbox/chaos", service_url("sandbox-psp")), Some(&stripe_key()), None);
}

fn create_listing(price: &str, quantity: i64) -> String {
    shop::create_listing(json!({ "price": {"value": price, "currency": "EUR"}, "quantity": quantity }))
}

fn checkout(key: &str, listing_id: &str, payment_method: &str) -> Reply {
    shop::checkout(key, &shop::order(listing_id, "buyer_drill", payment_method))
}

/// The money rules every finished purchase must obey at the provider.
fn check_money(p: &Value) -> Result<(), String> {
    money::check(p, &ledger(p["id"].as_str().unwrap_or_default()))
}

fn state_of(id: &str) -> String {
    purchase(id)["state"].as_str().unwrap_or_default().to_string()
}

/// The inspection window ran out (a timer moved the purchase out of
/// `awaiting_delivery`), so a buyer's late action is refused with 409.
fn window_passed(purchase: &Value) -> bool {
    purchase["history"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|h| h["input"] == "timer" && h["from"] == "awaiting_delivery" && h["to"] == "releasing")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Plan {
    Confirm,
    Cancel,
    DisputeRefund,
    DisputeRelease,
    Silence,
    Declined,
}

impl Plan {
    fn expected(self) -> &'static str {
        match self {
            Plan::Confirm | Plan::DisputeRelease | Plan::Silence => "completed",
            Plan::Cancel | Plan::DisputeRefund => "refunded",
            Plan::Declined => "cancelled",
        }
    }
}

/// Runs one purchase through its plan; returns its final view.
fn run_plan(listing_id: &str, plan: Plan) -> Value {
    let key = unique("chaos");
    let pm = if plan == Plan::Declined { "pm_card_chargeDeclined" } else { "pm_card_visa" };
    // Checkout itself may meet a 5xx at the listing lookup; the client retries
    // with the same key, as a real checkout would.
    let mut created = checkout(&key, listing_id, pm);
    for _ in 0..5 {
        if created.status < 500 {
            break;
        }
        thread::sleep(Duration::from_millis(300));
        created = checkout(&key, listing_id, pm);
    }
    assert!(matches!(created.status, 200 | 201), "checkout: {:?}", created.body);
    let id = created.body["id"].as_str().expect("id").to_string();
    if plan == Plan::Declined {
        return wait_until(&id, &["cancelled"], Duration::from_secs(90));
    }
    wait_until(&id, &["awaiting_delivery"], Duration::from_secs(90));
    let acted = match plan {
        Plan::Confirm => buyer(&id, "confirm-delivery"),
        Plan::Cancel => buyer(&id, "cancel"),
        Plan::DisputeRefund | Plan::DisputeRelease => buyer(&id, "dispute"),
        _ => Reply { status: 200, body: Value::Null },
    };
    if acted.status == 409 && window_passed(&purchase(&id)) {
        // Under load the buyer can be slower than the 8 s inspection window:
        // the saga rightly released the funds first.
        return wait_until(&id, &["completed"], Duration::from_secs(120));
    }
    assert_eq!(acted.status, 200, "{plan:?} on {id}: {:?}", acted.body);
    if matches!(plan, Plan::DisputeRefund | Plan::DisputeRelease) {
        let outcome = if plan == Plan::DisputeRefund { "refund" } else { "release" };
        let resolved = operator(&id, "resolve", Some(&json!({ "outcome": outcome })));
        assert_eq!(resolved.status, 200, "resolve {id}: {:?}", resolved.body);
    }
    wait_until(&id, &[plan.expected()], Duration::from_secs(120))
}

#[test]
fn chaos() {
    let drill = Drill::start("chaos");
    const PURCHASES: usize = 200;
    const LISTINGS: usize = 20;
    let listings: Vec<String> =
        (0..LISTINGS).map(|i| create_listing(&format!("{}.{:02}", 20 + i, i * 7 % 100), 10)).collect();
    let settings = json!({
        "webhook_duplicate_rate": 0.3, "webhook_reorder_rate": 0.2, "webhook_delay_rate": 0.3,
        "webhook_max_delay_ms": 1500, "webhook_drop_rate": 0.2, "api_error_rate": 0.2
    });
    set_chaos(settings.clone());
    drill.report(format!("sandbox chaos {settings}"));
    let plans = [
        Plan::Confirm,
        Plan::Cancel,
        Plan::DisputeRefund,
        Plan::DisputeRelease,
        Plan::Silence,
        Plan::Confirm,
        Plan::Silence,
        Plan::Declined,
    ];
    let work: Vec<(String, Plan)> =
        (0..PURCHASES).map(|i| (listings[i % LISTINGS].clone(), plans[i % plans.len()])).collect();
    let queue = Mutex::new(work.into_iter());
    let results = Mutex::new(Vec::new());
    thread::scope(|scope| {
        for _ in 0..16 {
            scope.spawn(|| loop {
                let next = queue.lock().unwrap_or_else(|p| p.into_inner()).next();
                let Some((listing_id, plan)) = next else { break };
                let view = run_plan(&listing_id, plan);
                results.lock().unwrap_or_else(|p| p.into_inner()).push((listing_id, plan, view));
            });
        }
    });
    reset_chaos();
    let results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    assert_eq!(results.len(), PURCHASES);
    let mut by_state: BTreeMap<String, usize> = BTreeMap::new();
    let mut retried = 0;
    let mut problems = Vec::new();
    for (_, plan, view) in &results {
        *by_state.entry(view["state"].as_str().unwrap_or_default().to_string()).or_default() += 1;
        if view["steps"].as_array().into_iter().flatten().any(|s| s["attempts"].as_u64().unwrap_or(0) > 1) {
            retried += 1;
        }
        let late = view["state"] == "completed" && window_passed(view);
        assert!(view["state"] == plan.expected() || late, "{plan:?}: {view:#}");
        if let Err(problem) = check_money(view) {
            problems.push(problem);
        }
    }
    assert!(problems.is_empty(), "money rules broken:\n{}", problems.join("\n"));
    // Inventory: each listing sold exactly its completed purchases, nothing is left reserved.
    for id in &listings {
        let sold = results.iter().filter(|(l, _, v)| l == id && v["state"] == "completed").count() as i64;
        let l = listing(id);
        assert_eq!(l["available"].as_i64(), Some(10 - sold), "listing {id}: {l:#}");
    }
    drill.report(format!(
        "{PURCHASES} purchases over {LISTINGS} listings, end states {by_state:?}, {retried} needed retries"
    ));
    drill.report("every purchase reached its planned state; provider ledger: each idempotency key executed once, completed = captured total and paid total-minus-fee once, refunded = everything back, nobody paid; listings sold exactly the completed units");
}

#[test]
fn race_for_the_last_unit() {
    let drill = Drill::start("last_unit");
    let listing_id = create_listing("75.00", 1);
    let ids: Vec<String> = thread::scope(|scope| {
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let listing_id = listing_id.clone();
                scope.spawn(move || {
                    let created = checkout(&unique(&format!("race{i}")), &listing_id, "pm_card_visa");
                    assert_eq!(created.status, 201, "{:?}", created.body);
                    created.body["id"].as_str().expect("id").to_string()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("checkout thread")).collect()
    });
    let views: Vec<Value> =
        ids.iter().map(|id| wait_until(id, &["awaiting_delivery", "cancelled"], Duration::from_secs(60))).collect();
    let winners: Vec<&Value> = views.iter().filter(|v| v["state"] == "awaiting_delivery").collect();
    assert_eq!(winners.len(), 1, "exactly one buyer gets the last unit");
    let winner = winners[0]["id"].as_str().expect("id").to_string();
    assert_eq!(buyer(&winner, "confirm-delivery").status, 200);
    wait_until(&winner, &["completed"], Duration::from_secs(30));
    for id in &ids {
        check_money(&purchase(id)).unwrap_or_else(|p| panic!("{p}"));
    }
    let l = listing(&listing_id);
    assert_eq!((l["available"].as_i64(), l["quantity"].as_i64()), (Some(0), Some(1)), "{l:#}");
    drill.report(format!("50 concurrent checkouts of 1 unit: 1 completed ({winner}), 49 cancelled with nothing captured; listing sold, available 0"));
}

#[test]
fn races_on_one_purchase() {
    let drill = Drill::start("one_purchase");
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for round in 0..12 {
        let listing_id = create_listing("64.00", 1);
        let id =
            checkout(&unique("contested"), &listing_id, "pm_card_visa").body["id"].as_str().expect("id").to_string();
        wait_until(&id, &["awaiting_delivery"], Duration::from_secs(30));
        let answers: Vec<(&str, u16)> = thread::scope(|scope| {
            let id = &id;
            const ACTIONS: [&str; 4] = ["cancel", "dispute", "confirm-delivery", "ops-refund"];
            let handles: Vec<_> = ACTIONS
                .iter()
                .map(|action| {
                    scope.spawn(move || {
                        let reply =
                            if *action == "ops-refund" { operator(id, "refund", None) } else { buyer(id, action) };
                        (*action, reply.status)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("action thread")).collect()
        });
        for (action, status) in &answers {
            assert!(matches!(status, 200 | 409), "round {round}: {action} answered {status}");
        }
        let mut view = wait_until(&id, &["completed", "refunded", "disputed"], Duration::from_secs(30));
        if view["state"] == "disputed" {
            assert_eq!(operator(&id, "resolve", Some(&json!({ "outcome": "refund" }))).status, 200);
            view = wait_until(&id, &["refunded"], Duration::from_secs(30));
        }
        check_money(&view).unwrap_or_else(|p| panic!("round {round}: {p}"));
        let refunds =
            ledger(&id)["operations"].as_array().into_iter().flatten().filter(|op| op["path"] == "/v1/refunds").count();
        assert!(refunds <= 1, "round {round}: {refunds} refunds");
        let summary: Vec<String> = answers.iter().map(|(a, s)| format!("{a}={s}")).collect();
        *outcomes.entry(format!("{} [{}]", view["state"].as_str().unwrap_or(""), summary.join(" "))).or_default() += 1;
    }
    drill.report("12 rounds of concurrent cancel, dispute, confirm-delivery and operator refund on one purchase:");
    for (outcome, n) in outcomes {
        drill.report(format!("  {n} x {outcome}"));
    }
    drill.report("each round ended in one coherent state, money rules held, at most one refund");
}

#[test]
fn hostile_input() {
    let drill = Drill::start("hostile");
    let listing_id = create_listing("10.00", 3);
    let victim = checkout(&unique("victim"), &listing_id, "pm_card_visa").body["id"].as_str().expect("id").to_string();
    let before = wait_until(&victim, &["awaiting_delivery"], Duration::from_secs(30));
    let listing_before = listing(&listing_id);
    let p = payments();
    let m = service_url("marketplace");
    let ck = checkout_token();
    let ops = ops_token();
    let good = json!({ "listing_id": listing_id, "buyer_id": "b1", "payment_method": "pm_card_visa" });
    let with = |patch: Value| {
        let mut body = good.clone();
        if let (Some(b), Value::Object(patch)) = (body.as_object_mut(), patch) {
            b.extend(patch);
        }
        body.to_string()
    };
    let purchase_url = format!("{p}/v1/purchases");
    let big = format!("{{\"listing_id\": \"{listing_id}\", \"buyer_id\": \"{}\"}}", "x".repeat(70_000));
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let event = json!({ "id": "evt_hostile", "object": "event", "type": "payment_intent.succeeded", "created": now,
        "data": { "object": { "id": "pi_x", "object": "payment_intent", "metadata": { "purchase_id": victim } } } })
    .to_string();
    let sign =
        |at: i64, body: &str| webhooks::stripe::sign_header(&secret("STRIPE_WEBHOOK_SECRET"), at, body.as_bytes());
    let bearer = |t: &str| format!("Bearer {t}");
    // (what, method, url, headers, body, expected status, expected code)
    type Case = (&'static str, &'static str, String, Vec<(&'static str, String)>, String, u16, &'static str);
    let json_ct = || ("content-type", "application/json".to_string());
    let cases: Vec<Case> = vec![
        (
            "bad JSON",
            "POST",
            purchase_url.clone(),
            vec![json_ct(), ("authorization", bearer(&ck)), ("idempotency-key", unique("h"))],
            "{\"listing_id\": ".into(),
            422,
            "invalid_json",
        ),
        (
            "empty body",
            "POST",
            purchase_url.clone(),
            vec![json_ct(), ("authorization", bearer(&ck)), ("idempotency-key", unique("h"))],
            "".into(),
            422,
            "invalid_json",
        ),
        (
            "JSON array",
            "POST",
            purchase_url.clone(),
            vec![json_ct(), ("authorization", bearer(&ck)), ("idempotency-key", unique("h"))],
            "[1,2]".into(),
            422,
            "invalid_json",
        ),
        (
            "fields by position in an array",
            "POST",
            purchase_url.clone(),
            vec![json_ct(), ("authorization", bearer(&ck)), ("idempotency-key", unique("h"))],
            json!([listing_id, "b1", 1, "pm_card_visa"]).to_string(),
            422,
            "invalid_json",
        ),
        (
            "quantity as string",
            "POST",
            purchase_url.clone(),
            vec![json_ct(), ("authorization", bearer(&ck)), ("idempotency-key", unique("h"))],
            with(json!({"quantity": "1"})),
            422,
            "invalid_field",
        ),
        (
            "negative quantity",
            "POST",
            purchase_url.clone(),
            vec![json_ct(), ("authorization", bearer(&ck)), ("idempotency-key", unique("h"))],
            with(json!({"quantity": -2})),
            422,
            "invalid_field",
        ),
        (
            "zero quantity",
            "POST",
            purchase_url.clone(),
            vec![json_ct(), ("authorization", bearer(&ck)), ("idempotency-key", unique("h"))],
            with(json!({"quantity": 0})),
            422,
            "invalid_field",
        ),
        (
            "huge quantity",
            "POST",
            purchase_url.clone(),
            vec![json_ct(), ("authorization", bearer(&ck)), ("idempotency-key", unique("h"))],
            with(json!({"quantity": 9_007_199_254_740_993u64})),
            422,
            "invalid_field",
        ),
        (
            "fractional quantity",
            "POST",
            purchase_url.clone(),
            vec![json_ct(), ("authorization", bearer(&ck)), ("idempotency-key", unique("h"))],
            with(json!({"quantity": 1.5})),
            422,
            "invalid_field",
        ),
        (
            "client-set price",
            "POST",
            purchase_url.clone(),
            vec![json_ct(), ("authorization", bearer(&ck)), ("idempotency-key", unique("h"))],
            with(json!({"price": {"value": "0.01", "currency": "EUR"}})),
            422,
            "invalid_field",
        ),
        (
            "unknown listing",
            "POST",
            purchase_url.clone(),
            vec![json_ct(), ("authorization", bearer(&ck)), ("idempotency-key", unique("h"))],
            with(json!({"listing_id": "lst_nosuchlisting"})),
            422,
            "unknown_listing",
        ),
        (
            "listing id that is not an id",
            "POST",
            purchase_url.clone(),
            vec![json_ct(), ("authorization", bearer(&ck)), ("idempotency-key", unique("h"))],
            with(json!({"listing_id": "../../etc/passwd"})),
            422,
            "invalid_field",
        ),
        (
            "no token",
            "POST",
            purchase_url.clone(),
            vec![json_ct(), ("idempotency-key", unique("h"))],
            good.to_string(),
            401,
            "unauthorized",
        ),
        (
            "wrong token",
            "POST",
            purchase_url.clone(),
            vec![json_ct(), ("authorization", bearer("guess")), ("idempotency-key", unique("h"))],
            good.to_string(),
            401,
            "unauthorized",
        ),
        (
            "not a bearer token",
            "POST",
            purchase_url.clone(),
            vec![json_ct(), ("authorization", format!("Basic {ck}")), ("idempotency-key", unique("h"))],
            good.to_string(),
            401,
            "unauthorized",
        ),
        (
            "operator token at checkout",
            "POST",
            purchase_url.clone(),
            vec![json_ct(), ("authorization", bearer(&ops)), ("idempotency-key", unique("h"))],
            good.to_string(),
            403,
            "forbidden",
        ),
        (
            "checkout token on the ops API",
            "POST",
            format!("{p}/v1/ops/purchases/{victim}/refund"),
            vec![("authorization", bearer(&ck))],
            String::new(),
            403,
            "forbidden",
        ),
        (
            "missing Idempotency-Key",
            "POST",
            purchase_url.clone(),
            vec![json_ct(), ("authorization", bearer(&ck))],
            good.to_string(),
            422,
            "idempotency_key_required",
        ),
        (
            "Idempotency-Key with spaces",
            "POST",
            purchase_url.clone(),
            vec![json_ct(), ("authorization", bearer(&ck)), ("idempotency-key", "a b".into())],
            good.to_string(),
            422,
            "invalid_idempotency_key",
        ),
        (
            "oversized body",
            "POST",
            purchase_url.clone(),
            vec![json_ct(), ("authorization", bearer(&ck)), ("idempotency-key", unique("h"))],
            big,
            413,
            "payload_too_large",
        ),
        (
            "purchase id that is not an id",
            "GET",
            format!("{p}/v1/purchases/pur_..%2F..%2Fx"),
            vec![("authorization", bearer(&ck))],
            String::new(),
            404,
            "not_found",
        ),
        (
            "encoded dot segments",
            "GET",
            format!("{p}/v1/purchases/%2e%2e"),
            vec![("authorization", bearer(&ck))],
            String::new(),
            404,
            "not_found",
        ),
        (
            "unknown purchase action",
            "POST",
            format!("{p}/v1/purchases/{victim}/refund-me"),
            vec![("authorization", bearer(&ck))],
            String::new(),
            404,
            "not_found",
        ),
        (
            "buyer action on an unknown purchase",
            "POST",
            format!("{p}/v1/purchases/pur_nosuchpurchase/dispute"),
            vec![("authorization", bearer(&ck))],
            String::new(),
            404,
            "not_found",
        ),
        (
            "resolve a purchase that is not disputed",
            "POST",
            format!("{p}/v1/ops/purchases/{victim}/resolve"),
            vec![json_ct(), ("authorization", bearer(&ops))],
            json!({"outcome": "release"}).to_string(),
            409,
            "invalid_state",
        ),
        (
            "resolve with an unknown outcome",
            "POST",
            format!("{p}/v1/ops/purchases/{victim}/resolve"),
            vec![json_ct(), ("authorization", bearer(&ops))],
            json!({"outcome": "both"}).to_string(),
            422,
            "invalid_field",
        ),
        (
            "ops listing with a bad state",
            "GET",
            format!("{p}/v1/ops/purchases?state=stolen"),
            vec![("authorization", bearer(&ops))],
            String::new(),
            422,
            "invalid_field",
        ),
        (
            "ops listing with a forged cursor",
            "GET",
            format!("{p}/v1/ops/purchases?cursor=3132332e6c73745f31"),
            vec![("authorization", bearer(&ops))],
            String::new(),
            422,
            "invalid_field",
        ),
        (
            "webhook without signature",
            "POST",
            format!("{p}/v1/webhooks/stripe"),
            vec![json_ct()],
            event.clone(),
            400,
            "missing_signature",
        ),
        (
            "webhook tampered",
            "POST",
            format!("{p}/v1/webhooks/stripe"),
            vec![json_ct(), ("stripe-signature", sign(now, &event))],
            event.replace("pi_x", "pi_y"),
            400,
            "signature_mismatch",
        ),
        (
            "webhook replayed an hour later",
            "POST",
            format!("{p}/v1/webhooks/stripe"),
            vec![json_ct(), ("stripe-signature", sign(now - 3600, &event))],
            event.clone(),
            400,
            "timestamp_out_of_tolerance",
        ),
        (
            "webhook dated in the future",
            "POST",
            format!("{p}/v1/webhooks/stripe"),
            vec![json_ct(), ("stripe-signature", sign(now + 3600, &event))],
            event.clone(),
            400,
            "timestamp_out_of_tolerance",
        ),
        (
            "webhook signed with another secret",
            "POST",
            format!("{p}/v1/webhooks/stripe"),
            vec![
                json_ct(),
                ("stripe-signature", webhooks::stripe::sign_header("whsec_attacker", now, event.as_bytes())),
            ],
            event.clone(),
            400,
            "signature_mismatch",
        ),
        (
            "listing with an unknown currency",
            "POST",
            format!("{m}/v1/listings"),
            vec![json_ct(), ("authorization", bearer(&ops))],
            listing_body(json!({"price": {"value": "10.00", "currency": "XAU"}})).to_string(),
            422,
            "unknown_currency",
        ),
        (
            "listing with a negative price",
            "POST",
            format!("{m}/v1/listings"),
            vec![json_ct(), ("authorization", bearer(&ops))],
            listing_body(json!({"price": {"value": "-1.00", "currency": "EUR"}})).to_string(),
            422,
            "invalid_amount",
        ),
        (
            "listing with a checkout token",
            "POST",
            format!("{m}/v1/listings"),
            vec![json_ct(), ("authorization", bearer(&ck))],
            listing_body(json!({})).to_string(),
            401,
            "unauthorized",
        ),
    ];
    let mut checked = 0;
    for (what, method, url, headers, body, status, code) in &cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let reply = send_raw(method, url, &headers, body);
        assert_eq!(reply.status, *status, "{what}: {method} {url} answered {:?}", reply.body);
        let got = reply.body["error"]["code"].as_str().unwrap_or_default();
        assert!(!got.is_empty(), "{what}: no error code in {:?}", reply.body);
        assert!(reply.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: no message");
        if !code.is_empty() {
            assert_eq!(got, *code, "{what}");
        }
        checked += 1;
    }
    // Nothing changed: the purchase, its money and the listing are as before.
    let after = purchase(&victim);
    assert_eq!(after["revision"], before["revision"], "a refused request changed the purchase");
    assert_eq!(after["state"], "awaiting_delivery");
    assert_eq!(ledger(&victim)["captured"], 0);
    assert_eq!(listing(&listing_id)["available"], listing_before["available"]);
    drill.report(format!("{checked} hostile requests across checkout, buyer, operator, webhook and listing endpoints: each got its documented 4xx and code; purchase revision, ledger and listing unchanged"));
}

#[test]
fn exhausted_retries_need_attention_and_resume() {
    let drill = Drill::start("needs_attention");
    let listing_id = create_listing("33.00", 1);
    let id = checkout(&unique("stuck"), &listing_id, "pm_card_visa").body["id"].as_str().expect("id").to_string();
    wait_until(&id, &["awaiting_delivery"], Duration::from_secs(30));
    // The provider goes down; the operator's refund cannot void the hold.
    set_chaos(json!({ "api_error_rate": 1.0 }));
    assert_eq!(operator(&id, "refund", None).status, 200);
    let stuck = wait_until(&id, &["needs_attention"], Duration::from_secs(90));
    assert_eq!(stuck["attention"]["step"], "hold_funds", "{stuck:#}");
    assert_eq!(stuck["attention"]["action"], "compensation");
    let listed = send(
        "GET",
        &format!("{}/v1/ops/purchases?state=needs_attention&limit=200", payments()),
        Some(&ops_token()),
        None,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut listed = listed;
    while !listed.body["items"].as_array().into_iter().flatten().any(|p| p["id"] == id.as_str()) {
        assert!(Instant::now() < deadline, "{id} is not in the ops listing: {:?}", listed.body);
        thread::sleep(Duration::from_millis(300));
        listed = send(
            "GET",
            &format!("{}/v1/ops/purchases?state=needs_attention&limit=200", payments()),
            Some(&ops_token()),
            None,
        );
    }
    // It stays put (the alarm does not spin) until someone acts.
    thread::sleep(Duration::from_secs(3));
    assert_eq!(state_of(&id), "needs_attention");
    reset_chaos();
    assert_eq!(operator(&id, "retry", None).status, 200);
    let done = wait_until(&id, &["refunded"], Duration::from_secs(60));
    check_money(&done).unwrap_or_else(|p| panic!("{p}"));
    drill.report(format!("provider down during a refund: {id} went to needs_attention ({}), was listed for operators, stayed put, and after the retry command ended refunded with the hold voided once", stuck["attention"]["error"]));
}
