//! `cargo xtask bench saga`: the purchase saga of this project against the
//! same saga on Restate and on Cloudflare Workflows, on this machine, in one
//! run, printed as one table (docs/benchmarks.md, "Sagas").
//!
//! Systems, one after another, each on processes of its own that are stopped
//! before the next starts:
//! - *engine*: the payments Worker with `SAGA_EFFECTS=inline` (every effect
//!   succeeds at once inside the Worker, no mirror): the saga machinery alone;
//! - *full*: the normal test stack (PostgreSQL reservation, the sandbox
//!   provider and its webhooks), on real listings;
//! - *Workflows*: `bench/peers/workflows`, served by the pinned wrangler;
//! - *Restate*: `bench/peers/restate` on `@restatedev/restate-server`.
//!
//! Protocol, the same for all: N sagas with C in flight; each is started,
//! sent the delivery confirmation at once, and waited for until it reports
//! completed. A warm-up of `3·C` sagas (not counted) precedes each run.

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::direct;
use crate::paths;
use crate::process::{self, Output, Supervisor};
use crate::stack::{self, Profile, Secrets};
use crate::tools::{self, Tools};
use crate::ui;
use crate::workers;

/// Ports of the peers (the stack itself uses the test ports of `PETNET_TEST_SLOT`).
const WORKFLOWS_PORT: u16 = 9510;
const WORKFLOWS_INSPECTOR_PORT: u16 = 9511;
const RESTATE_INGRESS_PORT: u16 = 9530;
const RESTATE_FABRIC_PORT: u16 = 9531;
const RESTATE_ADMIN_PORT: u16 = 9532;
const RESTATE_SERVICE_PORT: u16 = 9534;
const RESTATE_VERSION: &str = "1.7.12";

/// How often a client asks again when it has to poll for a state.
const POLL: Duration = Duration::from_millis(5);
/// A saga not finished after this long counts as an error.
const SAGA_TIMEOUT: Duration = Duration::from_secs(60);

const SYSTEMS: [&str; 4] = ["engine", "full", "workflows", "restate"];

struct Options {
    sagas: usize,
    concurrency: usize,
    only: Vec<String>,
    /// Durable state (Durable Objects, Workflows, Restate) on /dev/shm.
    tmpfs: bool,
    /// Drive the wrangler-served systems through `wrangler dev`'s proxy
    /// instead of their own workerd socket (see `direct.rs`).
    via_proxy: bool,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options> {
        let mut options = Options {
            sagas: 1000,
            concurrency: 16,
            only: SYSTEMS.iter().map(|s| s.to_string()).collect(),
            tmpfs: false,
            via_proxy: false,
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
            match arg.as_str() {
                "--tmpfs" => options.tmpfs = true,
                "--via-wrangler-proxy" => options.via_proxy = true,
                "--sagas" => options.sagas = value()?.parse().context("--sagas takes a whole number")?,
                "--concurrency" => options.concurrency = value()?.parse().context("--concurrency takes a whole number")?,
                "--only" => {
                    options.only = value()?.split(',').map(str::to_string).collect();
                    if let Some(bad) = options.only.iter().find(|s| !SYSTEMS.contains(&s.as_str())) {
                        bail!("--only: unknown system `{bad}` (systems: {})", SYSTEMS.join(","));
                    }
                }
                other => bail!("unknown argument `{other}`; usage: cargo xtask bench saga [--sagas N] [--concurrency C] [--tmpfs] [--via-wrangler-proxy] [--only engine,full,workflows,restate]"),
            }
        }
        if options.sagas == 0 || options.concurrency == 0 {
            bail!("--sagas and --concurrency must be at least 1");
        }
        Ok(options)
    }

    fn wants(&self, system: &str) -> bool {
        self.only.iter().any(|s| s == system)
    }
}

pub fn main(args: &[String]) -> Result<()> {
    let options = Options::parse(args)?;
    let tools = tools::ensure(false, Profile::Test.database_url_override().is_none())?;
    if options.wants("engine") || options.wants("full") {
        workers::build_all(&tools)?;
    }
    if options.wants("restate") {
        ensure_peer_modules()?;
    }
    println!(
        "bench saga: {} sagas per system, {} in flight, warm-up {} each; state on {}; wrangler-served systems {}; {}",
        options.sagas,
        options.concurrency,
        warmup(&options),
        if options.tmpfs { "tmpfs (/dev/shm)" } else { "disk" },
        if options.via_proxy { "through wrangler's dev proxy" } else { "at their own workerd socket" },
        machine()
    );
    let mut rows = Vec::new();
    if options.wants("engine") || options.wants("full") {
        rows.extend(this_project(&tools, &options)?);
    }
    if options.wants("workflows") {
        rows.push(workflows(&tools, &options)?);
    }
    if options.wants("restate") {
        rows.push(restate(&options)?);
    }
    print_table(&options, &rows);
    if options.tmpfs {
        let _ = fs::remove_dir_all(state_dir(&options));
    }
    Ok(())
}

fn warmup(options: &Options) -> usize {
    3 * options.concurrency
}

/// One line about the machine, for the record.
fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let memory = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| t.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|kb| kb.parse::<u64>().ok()))
        .map(|kb| format!("{:.1} GiB", kb as f64 / 1024.0 / 1024.0))
        .unwrap_or_default();
    let node = Command::new("node")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!("{cores} cores ({cpu}), {memory} RAM, node {node}, driver on the same machine")
}

// ---------------------------------------------------------------- measuring

struct Row {
    system: String,
    sagas: usize,
    errors: Vec<String>,
    elapsed: Duration,
    latencies: Vec<Duration>,
    /// Full mode: milliseconds per saga by phase, from the sagas' histories.
    phases: Vec<(String, f64)>,
    /// The machine's 1-minute load average just before the measured batch:
    /// on a shared 2-core machine, what else was running shows here.
    load: String,
}

impl Row {
    fn per_second(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, q: f64) -> f64 {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        if sorted.is_empty() {
            return f64::NAN;
        }
        let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[index].as_secs_f64() * 1000.0
    }
}

/// Runs `saga(i)` for a warm-up, then for `options.sagas` more with
/// `options.concurrency` in flight; each call is one saga from start to
/// completed. Returns the measured row and what each saga returned.
fn measure(system: &str, options: &Options, saga: &(dyn Fn(usize) -> Result<Value> + Sync)) -> (Row, Vec<Value>) {
    let step = ui::step(format!("{system}: warm-up ({} sagas)", warmup(options)));
    let (_, warm_errors, _, _) = batch(0, warmup(options), options.concurrency, saga);
    step.done();
    if let Some(first) = warm_errors.first() {
        ui::info(format!("{system}: {} warm-up saga(s) failed, first: {first}", warm_errors.len()));
    }
    let load = load_average();
    let step = ui::step(format!("{system}: {} sagas, {} in flight", options.sagas, options.concurrency));
    let (latencies, errors, elapsed, outputs) = batch(warmup(options), options.sagas, options.concurrency, saga);
    step.done();
    let row =
        Row { system: system.to_string(), sagas: options.sagas, errors, elapsed, latencies, phases: Vec::new(), load };
    println!(
        "{system}: {:.1} sagas/s, p50 {:.1} ms, p99 {:.1} ms, {} error(s){}",
        row.per_second(),
        row.percentile(0.50),
        row.percentile(0.99),
        row.errors.len(),
        row.errors.first().map(|e| format!("; first: {e}")).unwrap_or_default()
    );
    (row, outputs)
}

type Batch = (Vec<Duration>, Vec<String>, Duration, Vec<Value>);

fn batch(first: usize, count: usize, concurrency: usize, saga: &(dyn Fn(usize) -> Result<Value> + Sync)) -> Batch {
    let next = AtomicUsize::new(0);
    let results = Mutex::new((Vec::with_capacity(count), Vec::new(), Vec::with_capacity(count)));
    let started = Instant::now();
    thread::scope(|scope| {
        for _ in 0..concurrency.min(count) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= count || crate::interrupted() {
                    break;
                }
                let t0 = Instant::now();
                let outcome = saga(first + i);
                let took = t0.elapsed();
                let mut r = results.lock().unwrap_or_else(|p| p.into_inner());
                match outcome {
                    Ok(output) => {
                        r.0.push(took);
                        r.2.push(output);
                    }
                    Err(e) => r.1.push(format!("saga {}: {e:#}", first + i)),
                }
            });
        }
    });
    let elapsed = started.elapsed();
    let (latencies, errors, outputs) = results.into_inner().unwrap_or_else(|p| p.into_inner());
    (latencies, errors, elapsed, outputs)
}

// ---------------------------------------------------------------- HTTP

struct Http {
    agent: ureq::Agent,
}

impl Http {
    fn new() -> Http {
        Http {
            agent: ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(30)))
                .http_status_as_error(false)
                .max_idle_connections(256)
                .max_idle_connections_per_host(256)
                .build()
                .into(),
        }
    }

    fn call(&self, method: &str, url: &str, headers: &[(&str, &str)], body: Option<&Value>) -> Result<(u16, Value)> {
        let mut request = ureq::http::Request::builder().method(method).uri(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let mut response = self.agent.run(request.body(payload)?).with_context(|| format!("{method} {url}"))?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
    }

    /// Any HTTP answer at all within `within`.
    fn wait_answering(&self, url: &str, within: Duration, supervisor: &mut Supervisor) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if self.call("GET", url, &[], None).is_ok() {
                return Ok(());
            }
            if let Some((name, status, log)) = supervisor.exited() {
                bail!("{name} exited ({status}); last lines of {}:\n{}", log.display(), process::tail(&log, 30));
            }
            if Instant::now() > deadline || crate::interrupted() {
                bail!("{url} did not answer within {}s", within.as_secs());
            }
            thread::sleep(Duration::from_millis(200));
        }
    }
}

fn unique_prefix(system: &str) -> String {
    let millis = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    format!("bench-{system}-{}-{millis}", std::process::id())
}

// ---------------------------------------------------------------- this project

struct Project {
    http: Http,
    payments: String,
    checkout: String,
    listings: Vec<String>,
    prefix: String,
}

impl Project {
    fn auth(&self) -> String {
        format!("Bearer {}", self.checkout)
    }

    fn saga(&self, i: usize) -> Result<Value> {
        let key = format!("{}-{i}", self.prefix);
        let listing = &self.listings[i % self.listings.len()];
        let auth = self.auth();
        let body = json!({ "listing_id": listing, "buyer_id": "buyer_bench", "payment_method": "pm_card_visa" });
        let (status, purchase) = self.http.call(
            "POST",
            &format!("{}/v1/purchases", self.payments),
            &[("authorization", &auth), ("idempotency-key", &key)],
            Some(&body),
        )?;
        if status != 201 {
            bail!("checkout answered {status}: {purchase}");
        }
        let id = purchase["id"].as_str().context("checkout answer without an id")?.to_string();
        if purchase["state"] != "awaiting_delivery" {
            self.wait_for(&id, "awaiting_delivery")?;
        }
        let confirm_key = format!("{key}-confirm");
        let url = format!("{}/v1/purchases/{id}/confirm-delivery", self.payments);
        let (status, answer) =
            self.http.call("POST", &url, &[("authorization", &auth), ("idempotency-key", &confirm_key)], None)?;
        if status != 200 {
            bail!("confirm-delivery on {id} answered {status}: {answer}");
        }
        if answer["state"] == "completed" {
            return Ok(answer);
        }
        self.wait_for(&id, "completed")
    }

    fn wait_for(&self, id: &str, state: &str) -> Result<Value> {
        let deadline = Instant::now() + SAGA_TIMEOUT;
        let auth = self.auth();
        loop {
            let (status, view) = self.http.call(
                "GET",
                &format!("{}/v1/purchases/{id}", self.payments),
                &[("authorization", &auth)],
                None,
            )?;
            let now = view["state"].as_str().unwrap_or_default();
            if status == 200 && now == state {
                return Ok(view);
            }
            if ["completed", "refunded", "cancelled", "needs_attention"].contains(&now) || Instant::now() > deadline {
                bail!("{id} is `{now}` ({status}), waiting for `{state}`");
            }
            thread::sleep(POLL);
        }
    }
}

fn this_project(tools: &Tools, options: &Options) -> Result<Vec<Row>> {
    let secrets = Secrets::from_env();
    let secret = |name: &str| secrets.0.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone()).unwrap_or_default();
    let step = ui::step(format!("starting a throw-away stack (test ports, {})", Profile::Test.dir().display()));
    let mut stack = if options.tmpfs {
        stack::start_with_state_in(Profile::Test, tools, &secrets, &fresh_dir(options, "stack-state")?)?
    } else {
        stack::start(Profile::Test, tools, true, &secrets)?
    };
    step.done();
    let result = (|| -> Result<Vec<Row>> {
        let mut rows = Vec::new();
        let http = Http::new();
        if options.wants("full") {
            // Enough stock for every saga, spread over a few listings (a
            // reservation locks its listing's row in PostgreSQL).
            let mut listings = Vec::new();
            for i in 0..8 {
                let body = json!({
                    "seller_id": "sel_bench", "seller_account": "acct_bench", "title": format!("Benchmark kibble, pallet {i}"),
                    "description": "Dry food for the saga benchmark.", "species": "dog", "breed": null, "age_months": null,
                    "region": "berlin", "price": {"value": "10.00", "currency": "EUR"}, "quantity": options.sagas + warmup(options) + 10
                });
                let ops = format!("Bearer {}", secret("OPS_TOKEN"));
                let (status, listing) = http.call(
                    "POST",
                    &format!("{}/v1/listings", stack.url("marketplace")),
                    &[("authorization", &ops)],
                    Some(&body),
                )?;
                if status != 201 {
                    bail!("creating a listing answered {status}: {listing}");
                }
                listings.push(listing["id"].as_str().unwrap_or_default().to_string());
            }
            let project = Project {
                http: Http::new(),
                payments: payments_url(&stack, options)?,
                checkout: secret("CHECKOUT_TOKEN"),
                listings,
                prefix: unique_prefix("full"),
            };
            let (mut row, outputs) = measure("this project (full)", options, &|i| project.saga(i));
            row.phases = phases(&outputs);
            rows.push(row);
        }
        if options.wants("engine") {
            let step = ui::step("restarting payments with SAGA_EFFECTS=inline (engine mode)");
            stack.restart_with_vars(tools, "payments", &[("SAGA_EFFECTS", "inline")])?;
            step.done();
            let listings = (0..8).map(|i| format!("lst_bench{i}")).collect();
            let project = Project {
                http: Http::new(),
                payments: payments_url(&stack, options)?,
                checkout: secret("CHECKOUT_TOKEN"),
                listings,
                prefix: unique_prefix("engine"),
            };
            rows.insert(0, measure("this project (engine)", options, &|i| project.saga(i)).0);
        }
        Ok(rows)
    })();
    stack.supervisor.stop_all();
    result
}

fn payments_url(stack: &stack::Stack, options: &Options) -> Result<String> {
    if options.via_proxy {
        Ok(stack.url("payments"))
    } else {
        stack.direct_url("payments")
    }
}

/// Full mode: where a saga's time goes, from its history (state `from`
/// lasted until the next entry's `at`). Averages in ms per saga.
fn phases(views: &[Value]) -> Vec<(String, f64)> {
    let mut totals: Vec<(String, f64)> = Vec::new();
    let mut counted = 0usize;
    for view in views {
        let Some(history) = view["history"].as_array() else { continue };
        let times: Vec<Option<f64>> = history.iter().map(|h| h["at"].as_str().and_then(rfc3339_millis)).collect();
        counted += 1;
        for (k, entry) in history.iter().enumerate().skip(1) {
            let (Some(a), Some(b)) = (times[k - 1], times[k]) else { continue };
            let what =
                format!("{} ({})", entry["from"].as_str().unwrap_or("?"), entry["input"].as_str().unwrap_or("?"));
            match totals.iter_mut().find(|(w, _)| *w == what) {
                Some((_, t)) => *t += b - a,
                None => totals.push((what, b - a)),
            }
        }
    }
    for (_, t) in &mut totals {
        *t /= counted.max(1) as f64;
    }
    totals
}

/// Milliseconds of an RFC 3339 UTC time within its day (enough for
/// differences between entries of one saga, which never spans days here).
fn rfc3339_millis(text: &str) -> Option<f64> {
    let time = text.split('T').nth(1)?.trim_end_matches('Z');
    let mut parts = time.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(((h * 60.0 + m) * 60.0 + s) * 1000.0)
}

// ---------------------------------------------------------------- peers

fn peers_dir() -> PathBuf {
    paths::root().join("bench").join("peers")
}

fn slot() -> String {
    std::env::var("PETNET_TEST_SLOT").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| "0".into())
}

/// Logs and pid files.
fn bench_dir() -> PathBuf {
    paths::local().join(format!("bench-saga-{}", slot()))
}

/// Durable state of the peers (and with `--tmpfs`, of the stack's Workers).
fn state_dir(options: &Options) -> PathBuf {
    if options.tmpfs {
        PathBuf::from("/dev/shm").join(format!("petnet-bench-saga-{}", slot()))
    } else {
        bench_dir()
    }
}

/// `npm ci` in bench/peers when its node_modules is missing or older than
/// the lock file.
fn ensure_peer_modules() -> Result<()> {
    let dir = peers_dir();
    let marker = dir.join("node_modules").join(".package-lock.json");
    let stale = match (
        fs::metadata(&marker).and_then(|m| m.modified()),
        fs::metadata(dir.join("package-lock.json")).and_then(|m| m.modified()),
    ) {
        (Ok(installed), Ok(lock)) => installed < lock,
        _ => true,
    };
    if stale {
        let step = ui::step("installing the peers' packages (npm ci in bench/peers)");
        process::run(
            "npm ci in bench/peers",
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&dir)
                .env("SCARF_ANALYTICS", "false")
                .env("DO_NOT_TRACK", "1"),
            "check that the npm registry is reachable",
        )?;
        step.done();
    }
    Ok(())
}

fn fresh_dir(options: &Options, name: &str) -> Result<PathBuf> {
    let dir = state_dir(options).join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn check_free(ports: &[u16]) -> Result<()> {
    for port in ports {
        if std::net::TcpListener::bind(("127.0.0.1", *port)).is_err() {
            bail!("port {port} is in use on 127.0.0.1 (another `cargo xtask bench saga`?); stop it first");
        }
    }
    Ok(())
}

fn workflows(tools: &Tools, options: &Options) -> Result<Row> {
    check_free(&[WORKFLOWS_PORT, WORKFLOWS_INSPECTOR_PORT])?;
    let dir = fresh_dir(options, "workflows")?;
    let mut supervisor = Supervisor::new(&bench_dir().join("workflows-pids"))?;
    let mut command = Command::new("node");
    command
        .args(["--no-warnings", "--experimental-vm-modules"])
        .arg(&tools.wrangler_js)
        .arg("dev")
        .arg("--config")
        .arg(peers_dir().join("workflows").join("wrangler.toml"))
        .args([
            "--ip",
            "127.0.0.1",
            "--port",
            &WORKFLOWS_PORT.to_string(),
            "--inspector-port",
            &WORKFLOWS_INSPECTOR_PORT.to_string(),
        ])
        .arg("--persist-to")
        .arg(dir.join("state"))
        .arg("--show-interactive-dev-session=false")
        .current_dir(paths::root())
        .env("WRANGLER_SEND_METRICS", "false")
        .env("WRANGLER_REGISTRY_PATH", dir.join("registry"))
        .env("NO_COLOR", "1");
    // Like the stack this project is measured on (see workers::Serve::devtools).
    workers::without_devtools(&mut command);
    let step = ui::step(format!("starting the Workflows peer on 127.0.0.1:{WORKFLOWS_PORT} (wrangler dev)"));
    supervisor.spawn_contained("workflows", command, &dir.join("wrangler.log"), Output::LogFile, libc::SIGTERM)?;
    let base = format!("http://127.0.0.1:{WORKFLOWS_PORT}");
    let http = Http::new();
    let ready = http.wait_answering(&format!("{base}/ready"), Duration::from_secs(120), &mut supervisor);
    step.done();
    let base = match ready {
        Ok(()) if !options.via_proxy => {
            let pgid = supervisor.group_of("workflows").context("the Workflows peer is not running")?;
            let probe = |port: u16| {
                // The peer answers any unknown path with its own JSON 404.
                http.call("GET", &format!("http://127.0.0.1:{port}/ready"), &[], None)
                    .is_ok_and(|(status, body)| status == 404 && body["error"] == "not found")
            };
            match direct::worker_port(pgid, &[WORKFLOWS_PORT, WORKFLOWS_INSPECTOR_PORT], probe) {
                Some(port) => format!("http://127.0.0.1:{port}"),
                None => bail!("could not find the Workflows peer's own workerd socket behind wrangler's proxy"),
            }
        }
        _ => base,
    };
    let result = ready.map(|()| {
        let prefix = unique_prefix("wf");
        measure("Cloudflare Workflows (wrangler 4.86)", options, &|i| {
            workflow_saga(&http, &base, &format!("{prefix}-{i}"))
        })
        .0
    });
    supervisor.stop_all();
    result
}

fn workflow_saga(http: &Http, base: &str, id: &str) -> Result<Value> {
    let order = json!({ "listing_id": "lst_bench", "buyer_id": "buyer_bench", "amount": 1000, "units": 1 });
    let (status, answer) = http.call("POST", &format!("{base}/sagas/{id}"), &[], Some(&order))?;
    if status != 201 {
        bail!("start answered {status}: {answer}");
    }
    let (status, answer) = http.call("POST", &format!("{base}/sagas/{id}/delivery"), &[], None)?;
    if status != 200 {
        bail!("delivery event answered {status}: {answer}");
    }
    let deadline = Instant::now() + SAGA_TIMEOUT;
    loop {
        let (status, view) = http.call("GET", &format!("{base}/sagas/{id}"), &[], None)?;
        match view["status"].as_str().unwrap_or_default() {
            "complete" if view["output"]["state"] == "completed" => return Ok(view),
            "errored" | "terminated" | "complete" => bail!("{id} ended {status}: {view}"),
            _ if Instant::now() > deadline => bail!("{id} not complete after {}s: {view}", SAGA_TIMEOUT.as_secs()),
            _ => thread::sleep(POLL),
        }
    }
}

fn restate_binary() -> PathBuf {
    let arch = match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "x64",
    };
    let os = match std::env::consts::OS {
        "macos" => "darwin",
        other => other,
    };
    peers_dir()
        .join("node_modules")
        .join("@restatedev")
        .join(format!("restate-server-{os}-{arch}"))
        .join("bin")
        .join("restate-server")
}

fn restate(options: &Options) -> Result<Row> {
    check_free(&[RESTATE_INGRESS_PORT, RESTATE_FABRIC_PORT, RESTATE_ADMIN_PORT, RESTATE_SERVICE_PORT])?;
    let dir = fresh_dir(options, "restate")?;
    let mut supervisor = Supervisor::new(&bench_dir().join("restate-pids"))?;
    let binary = restate_binary();
    if !binary.exists() {
        bail!("{} is missing: run `npm ci` in bench/peers", binary.display());
    }
    let step = ui::step(format!(
        "starting Restate {RESTATE_VERSION} (ingress 127.0.0.1:{RESTATE_INGRESS_PORT}) and the saga service"
    ));
    let mut server = Command::new(&binary);
    server
        .args(["--no-logo", "--listen-mode", "tcp", "--base-dir"])
        .arg(dir.join("data"))
        .current_dir(&dir)
        .env("RESTATE_BIND_IP", "127.0.0.1")
        .env("RESTATE_BIND_PORT", RESTATE_FABRIC_PORT.to_string())
        .env("RESTATE_INGRESS__BIND_ADDRESS", format!("127.0.0.1:{RESTATE_INGRESS_PORT}"))
        .env("RESTATE_ADMIN__BIND_ADDRESS", format!("127.0.0.1:{RESTATE_ADMIN_PORT}"))
        .env("DO_NOT_TRACK", "1")
        .env("NO_COLOR", "1");
    supervisor.spawn_contained(
        "restate-server",
        server,
        &dir.join("restate-server.log"),
        Output::LogFile,
        libc::SIGTERM,
    )?;
    let mut service = Command::new("node");
    service
        .arg(peers_dir().join("restate").join("saga.mjs"))
        .current_dir(peers_dir())
        .env("PORT", RESTATE_SERVICE_PORT.to_string());
    supervisor.spawn_contained("restate-service", service, &dir.join("service.log"), Output::LogFile, libc::SIGTERM)?;
    let http = Http::new();
    let admin = format!("http://127.0.0.1:{RESTATE_ADMIN_PORT}");
    let ingress = format!("http://127.0.0.1:{RESTATE_INGRESS_PORT}");
    let ready = (|| -> Result<()> {
        http.wait_answering(&format!("{admin}/health"), Duration::from_secs(60), &mut supervisor)?;
        wait_listening(RESTATE_SERVICE_PORT, Duration::from_secs(60), &mut supervisor)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let registration = json!({ "uri": format!("http://127.0.0.1:{RESTATE_SERVICE_PORT}") });
        loop {
            match http.call("POST", &format!("{admin}/deployments"), &[], Some(&registration)) {
                Ok((200 | 201, _)) => break,
                other if Instant::now() > deadline => {
                    bail!("registering the saga service with Restate failed: {other:?}")
                }
                _ => thread::sleep(Duration::from_millis(300)),
            }
        }
        http.wait_answering(&format!("{ingress}/restate/health"), Duration::from_secs(60), &mut supervisor)
    })();
    step.done();
    let result = ready.map(|()| {
        let prefix = unique_prefix("rs");
        measure(&format!("Restate {RESTATE_VERSION}"), options, &|i| {
            restate_saga(&http, &ingress, &format!("{prefix}-{i}"))
        })
        .0
    });
    supervisor.stop_all();
    result
}

/// The SDK's endpoint speaks HTTP/2 only: wait until its port accepts connections.
fn wait_listening(port: u16, within: Duration, supervisor: &mut Supervisor) -> Result<()> {
    let deadline = Instant::now() + within;
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    while std::net::TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_err() {
        if let Some((name, status, log)) = supervisor.exited() {
            bail!("{name} exited ({status}); last lines of {}:\n{}", log.display(), process::tail(&log, 30));
        }
        if Instant::now() > deadline || crate::interrupted() {
            bail!("nothing listens on {address} after {}s", within.as_secs());
        }
        thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

fn restate_saga(http: &Http, ingress: &str, id: &str) -> Result<Value> {
    let order = json!({ "listing_id": "lst_bench", "buyer_id": "buyer_bench", "amount": 1000, "units": 1 });
    let (status, answer) = http.call("POST", &format!("{ingress}/PurchaseSaga/{id}/run/send"), &[], Some(&order))?;
    if !matches!(status, 200 | 202) {
        bail!("start answered {status}: {answer}");
    }
    let (status, answer) =
        http.call("POST", &format!("{ingress}/PurchaseSaga/{id}/confirmDelivery"), &[], Some(&json!({})))?;
    if status != 200 {
        bail!("confirmDelivery answered {status}: {answer}");
    }
    // Attaching blocks until the workflow's `run` has finished.
    let (status, output) =
        http.call("GET", &format!("{ingress}/restate/workflow/PurchaseSaga/{id}/attach"), &[], None)?;
    if status != 200 || output["state"] != "completed" {
        bail!("{id} ended {status}: {output}");
    }
    Ok(output)
}

// ---------------------------------------------------------------- report

fn print_table(options: &Options, rows: &[Row]) {
    println!();
    println!(
        "sagas: {} per system, {} in flight (cargo xtask bench saga --sagas {} --concurrency {})",
        options.sagas, options.concurrency, options.sagas, options.concurrency
    );
    println!("| system | sagas | errors | sagas/s | p50 ms | p99 ms | load before |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {} |",
            row.system,
            row.sagas,
            row.errors.len(),
            row.per_second(),
            row.percentile(0.50),
            row.percentile(0.99),
            row.load
        );
    }
    let engine = rows.iter().find(|r| r.system.contains("(engine)"));
    let peers: Vec<&Row> = rows.iter().filter(|r| !r.system.starts_with("this project")).collect();
    if let Some(engine) = engine {
        println!();
        for peer in &peers {
            println!(
                "engine vs {}: {:.2}x the sagas/s; p99 {:.1} ms vs {:.1} ms ({:.2}x)",
                peer.system,
                engine.per_second() / peer.per_second(),
                engine.percentile(0.99),
                peer.percentile(0.99),
                engine.percentile(0.99) / peer.percentile(0.99)
            );
        }
        if let Some(fastest) = peers.iter().max_by(|a, b| a.per_second().total_cmp(&b.per_second())) {
            let ratio = engine.per_second() / fastest.per_second();
            println!(
                "targets: engine >= 2x the faster peer's sagas/s ({}): {:.2}x, {}; engine p99 <= 50 ms: {:.1} ms, {}",
                fastest.system,
                ratio,
                if ratio >= 2.0 { "met" } else { "MISSED" },
                engine.percentile(0.99),
                if engine.percentile(0.99) <= 50.0 { "met" } else { "MISSED" }
            );
        }
    }
    if let Some(full) = rows.iter().find(|r| !r.phases.is_empty()) {
        println!();
        println!(
            "full mode, mean ms per saga by state (from each saga's history; start-to-complete mean {:.1} ms):",
            mean_ms(&full.latencies)
        );
        for (what, ms) in &full.phases {
            println!("  {ms:>8.1}  {what}");
        }
        let total = mean_ms(&full.latencies);
        let mut shares = [
            ("PostgreSQL (reserve, mark sold: marketplace Worker + SQL)", 0.0),
            ("the sandbox provider (hold, capture, transfer, webhooks)", 0.0),
            ("the saga and the client's next request", 0.0),
        ];
        for (what, ms) in &full.phases {
            shares[phase_owner(what)].1 += ms;
        }
        let outside = (total - shares.iter().map(|(_, ms)| ms).sum::<f64>()).max(0.0);
        println!("full mode, share of start-to-complete time:");
        for (who, ms) in
            shares.iter().chain(std::iter::once(&("outside the history (HTTP in and out, polling)", outside)))
        {
            println!("  {:>5.1} %  {ms:>7.1} ms  {who}", 100.0 * ms / total.max(f64::EPSILON));
        }
    }
}

/// Which part of the system a history phase waited on: 0 PostgreSQL, 1 the
/// sandbox provider, 2 the saga itself (and the client's next command).
fn phase_owner(phase: &str) -> usize {
    if phase.contains("reserve_listing") || phase.contains("mark_sold") {
        0
    } else if ["hold_funds", "capture_funds", "release_funds", "event payment_intent", "event charge", "event transfer"]
        .iter()
        .any(|k| phase.contains(k))
    {
        1
    } else {
        2
    }
}

fn mean_ms(latencies: &[Duration]) -> f64 {
    latencies.iter().map(Duration::as_secs_f64).sum::<f64>() * 1000.0 / latencies.len().max(1) as f64
}
