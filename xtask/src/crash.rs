//! `cargo xtask drill crash`: SIGKILL the payments Worker's workerd at
//! random moments while purchases are in flight, restart it on the same
//! persisted state each time, and check that every saga resumes and ends
//! right, with each provider operation executed once.
//!
//! Clients behave like real ones: a request that meets a dead server is
//! retried with the same `Idempotency-Key`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::{json, Value};

// Pure rules shared with the e2e crate without depending on it (its OpenAPI
// checker would make every first `cargo xtask` compile a JSON Schema engine).
#[path = "../../tests/src/money.rs"]
mod money;

use crate::stack::{self, Profile, Secrets, Stack};
use crate::tools::Tools;
use crate::ui;

const PURCHASES: usize = 100;
const LISTINGS: usize = 10;
const MIN_KILLS: usize = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Plan {
    Confirm,
    Cancel,
    Silence,
    Declined,
}

impl Plan {
    fn expected(self) -> &'static str {
        match self {
            Plan::Confirm | Plan::Silence => "completed",
            Plan::Cancel => "refunded",
            Plan::Declined => "cancelled",
        }
    }
}

struct Client {
    agent: ureq::Agent,
    payments: String,
    marketplace: String,
    sandbox: String,
    checkout: String,
    ops: String,
    stripe: String,
}

impl Client {
    /// One request, retried (same key) while the server is down or answers 5xx.
    fn call(&self, method: &str, url: &str, token: &str, key: Option<&str>, body: Option<&Value>) -> (u16, Value) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let mut request = ureq::http::Request::builder()
                .method(method)
                .uri(url)
                .header("authorization", format!("Bearer {token}"));
            if let Some(key) = key {
                request = request.header("idempotency-key", key);
            }
            if body.is_some() {
                request = request.header("content-type", "application/json");
            }
            let payload = body.map(|b| b.to_string()).unwrap_or_default();
            // A crash can cut an answer off after its status line: only a
            // whole JSON body counts as an answer; anything less is retried.
            let answer = request.body(payload).ok().and_then(|r| self.agent.run(r).ok()).and_then(|mut response| {
                let status = response.status().as_u16();
                let text = response.body_mut().read_to_string().ok()?;
                Some((status, serde_json::from_str::<Value>(&text).ok()?))
            });
            match answer {
                Some((status, body)) if status < 500 => return (status, body),
                other if Instant::now() > deadline => {
                    return other.unwrap_or((599, json!({ "error": { "code": "unreachable", "message": url } })))
                }
                _ => thread::sleep(Duration::from_millis(250)),
            }
        }
    }

    fn purchase(&self, id: &str) -> Value {
        self.call("GET", &format!("{}/v1/purchases/{id}", self.payments), &self.checkout, None, None).1
    }

    fn wait_for(&self, id: &str, states: &[&str], within: Duration) -> Result<Value> {
        let deadline = Instant::now() + within;
        loop {
            let p = self.purchase(id);
            let state = p["state"].as_str().unwrap_or_default();
            if states.contains(&state) {
                return Ok(p);
            }
            if Instant::now() > deadline || ["completed", "refunded", "cancelled", "needs_attention"].contains(&state) {
                bail!("purchase {id} is `{state}`, expected {states:?}: {p}");
            }
            thread::sleep(Duration::from_millis(300));
        }
    }

    fn run(&self, n: usize, listing: &str, plan: Plan) -> Result<(Plan, Value)> {
        let key = format!("crash-{}-{n}", std::process::id());
        let pm = if plan == Plan::Declined { "pm_card_chargeDeclined" } else { "pm_card_visa" };
        let body = json!({ "listing_id": listing, "buyer_id": "buyer_crash", "payment_method": pm });
        let (status, created) =
            self.call("POST", &format!("{}/v1/purchases", self.payments), &self.checkout, Some(&key), Some(&body));
        if !matches!(status, 200 | 201) {
            bail!("checkout {n} answered {status}: {created}");
        }
        let id = created["id"].as_str().unwrap_or_default().to_string();
        if plan == Plan::Declined {
            return Ok((plan, self.wait_for(&id, &["cancelled"], Duration::from_secs(180))?));
        }
        self.wait_for(&id, &["awaiting_delivery"], Duration::from_secs(180))?;
        let action = match plan {
            Plan::Confirm => Some("confirm-delivery"),
            Plan::Cancel => Some("cancel"),
            _ => None,
        };
        if let Some(action) = action {
            let url = format!("{}/v1/purchases/{id}/{action}", self.payments);
            let (status, answer) = self.call("POST", &url, &self.checkout, Some(&format!("{key}-{action}")), None);
            if status == 409 && window_passed(&self.purchase(&id)) {
                // On a loaded machine the server can be down or slow for
                // longer than the test stack's 8 s inspection window: the
                // saga rightly released the funds before the buyer spoke.
                return Ok((Plan::Silence, self.wait_for(&id, &["completed"], Duration::from_secs(180))?));
            }
            if status != 200 {
                bail!("{action} on {id} answered {status}: {answer}");
            }
        }
        Ok((plan, self.wait_for(&id, &[plan.expected()], Duration::from_secs(180))?))
    }
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

/// The money rules of a finished purchase, read from the provider's ledger:
/// the same rules as the e2e tests' (one file, compiled into both).
fn check_money(client: &Client, p: &Value) -> Result<(), String> {
    let id = p["id"].as_str().unwrap_or_default();
    let (_, ledger) =
        client.call("GET", &format!("{}/_sandbox/ledger?purchase_id={id}", client.sandbox), &client.stripe, None, None);
    money::check(p, &ledger)
}

pub fn run(tools: &Tools) -> Result<()> {
    let secrets = Secrets::from_env();
    let step = ui::step("starting a throw-away stack (test ports, .local/test)");
    let mut stack = stack::start(Profile::Test, tools, true, &secrets)?;
    step.done();
    let secret = |name: &str| secrets.0.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone()).unwrap_or_default();
    let client = Client {
        agent: ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .http_status_as_error(false)
            .build()
            .into(),
        payments: stack.url("payments"),
        marketplace: stack.url("marketplace"),
        sandbox: stack.url("sandbox-psp"),
        checkout: secret("CHECKOUT_TOKEN"),
        ops: secret("OPS_TOKEN"),
        stripe: secret("STRIPE_SECRET_KEY"),
    };
    let result = drive(&client, &mut stack, tools);
    stack.supervisor.stop_all();
    result
}

fn drive(client: &Client, stack: &mut Stack, tools: &Tools) -> Result<()> {
    let mut listings = Vec::new();
    for i in 0..LISTINGS {
        let body = json!({
            "seller_id": "sel_crash", "seller_account": "acct_crash", "title": format!("Crash-test kibble, bag {i}"),
            "description": "Ten kilos of dry food.", "species": "dog", "breed": null, "age_months": null, "region": "berlin",
            "price": {"value": format!("{}.50", 10 + i), "currency": "EUR"}, "quantity": 10
        });
        let (status, listing) =
            client.call("POST", &format!("{}/v1/listings", client.marketplace), &client.ops, None, Some(&body));
        if status != 201 {
            bail!("creating a listing answered {status}: {listing}");
        }
        listings.push(listing["id"].as_str().unwrap_or_default().to_string());
    }
    let seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
            | 1;
    let mut rng = seed;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    println!("drill crash: seed {seed}, {PURCHASES} purchases over {LISTINGS} listings");
    let plans = [Plan::Confirm, Plan::Cancel, Plan::Silence, Plan::Confirm, Plan::Declined];
    let results = Mutex::new(Vec::new());
    let errors = Mutex::new(Vec::new());
    let queue = Mutex::new((0..PURCHASES).map(|n| (n, listings[n % LISTINGS].clone(), plans[n % plans.len()])));
    let mut kills = Vec::new();
    thread::scope(|scope| -> Result<()> {
        let workers: Vec<_> = (0..25)
            .map(|_| {
                scope.spawn(|| loop {
                    let item = queue.lock().unwrap_or_else(|p| p.into_inner()).next();
                    let Some((n, listing, plan)) = item else { break };
                    match client.run(n, &listing, plan) {
                        Ok(r) => results.lock().unwrap_or_else(|p| p.into_inner()).push(r),
                        Err(e) => errors.lock().unwrap_or_else(|p| p.into_inner()).push(e.to_string()),
                    }
                })
            })
            .collect();
        // Crash the payments Worker at random moments while the sagas run.
        let started = Instant::now();
        while kills.len() < MIN_KILLS || (kills.len() < 8 && !workers.iter().all(|w| w.is_finished())) {
            thread::sleep(Duration::from_millis(700 + next() % 2300));
            if crate::interrupted() {
                bail!("interrupted");
            }
            let in_flight = PURCHASES - results.lock().map(|r| r.len()).unwrap_or(0);
            let down = Duration::from_millis(200 + next() % 1500);
            stack.crash_and_restart(tools, "payments", down)?;
            kills.push(format!(
                "t={:.1}s ({in_flight} unfinished, down {}ms)",
                started.elapsed().as_secs_f64(),
                down.as_millis()
            ));
            println!(
                "drill crash: SIGKILL #{} of payments' workerd at {}",
                kills.len(),
                kills.last().map(String::as_str).unwrap_or("")
            );
        }
        for w in workers {
            let _ = w.join();
        }
        Ok(())
    })?;
    let errors = errors.into_inner().unwrap_or_else(|p| p.into_inner());
    if !errors.is_empty() {
        bail!("{} purchase(s) did not end right:\n{}", errors.len(), errors.join("\n"));
    }
    let results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    let mut states: BTreeMap<String, usize> = BTreeMap::new();
    let mut resumed = 0;
    let mut problems = Vec::new();
    for (plan, view) in &results {
        *states.entry(view["state"].as_str().unwrap_or_default().to_string()).or_default() += 1;
        if view["history"].as_array().into_iter().flatten().any(|h| h["input"] == "resumed after a restart") {
            resumed += 1;
        }
        if view["state"] != plan.expected() {
            problems.push(format!("{} is {} instead of {}", view["id"], view["state"], plan.expected()));
        }
        if let Err(p) = check_money(client, view) {
            problems.push(p);
        }
    }
    for id in &listings {
        let (_, l) = client.call("GET", &format!("{}/v1/listings/{id}", client.marketplace), &client.ops, None, None);
        let sold =
            results.iter().filter(|(_, v)| v["listing_id"] == id.as_str() && v["state"] == "completed").count() as i64;
        if l["available"].as_i64() != Some(10 - sold) {
            problems.push(format!("listing {id}: available {} but {sold} sold of 10", l["available"]));
        }
    }
    if !problems.is_empty() {
        bail!("the crash drill found {} problem(s):\n{}", problems.len(), problems.join("\n"));
    }
    println!(
        "drill crash: {} SIGKILLs of payments' workerd, each restarted on the same state: {}",
        kills.len(),
        kills.join(", ")
    );
    println!("drill crash: {PURCHASES} purchases ended as planned: {states:?}; {resumed} sagas recorded a resume after a restart");
    println!("drill crash: provider ledger: every idempotency key executed once; money and inventory rules held");
    Ok(())
}
