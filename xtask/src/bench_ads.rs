//! `cargo xtask bench ads [--url URL | --via-wrangler-proxy] [--seconds N]
//! [--connections C] [--production-sink]`: loads 10,000 active campaigns into
//! an ads Worker and drives `GET /v1/ads` with random Pet DNA from C
//! keep-alive connections (one thread each), then prints p50/p99 latency and
//! requests per second.
//!
//! Without `--url` it starts a throw-away test stack (the ports of
//! `PETNET_TEST_SLOT`, `.local/test[-N]`, wiped) and drives the ads Worker
//! at its own workerd socket, behind `wrangler dev`'s proxy (see
//! `direct.rs`): "at the Worker". `--via-wrangler-proxy` drives wrangler's
//! port instead; `--url` drives an ads Worker that is already running (e.g.
//! the dev stack, `http://127.0.0.1:8789`). `--production-sink` restarts
//! the stack's ads Worker with `ADS_EVENT_RECORDER=off`, so data points go
//! to the Analytics Engine binding as in production instead of the local
//! recorder object. `--keep` leaves the stack up after the run (to profile
//! it: `perf record -g -p <the printed workerd pids>`) until killed.
//! Latency is measured at the client on loopback, so it bounds the Worker's
//! own time from above.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::stack::{self, Profile, Secrets};
use crate::{tools, ui, workers};

const CAMPAIGNS: usize = 10_000;
const BATCH: usize = 1000;
const SPECIES: &[&str] = &["dog", "cat", "rabbit", "parrot", "fish", "horse"];
const BREEDS: &[&str] = &["labrador", "tabby", "siamese", "poodle", "beagle", "lop"];
const INTERESTS: &[&str] = &["agility", "toys", "grooming", "food", "travel", "naps", "training"];
const REGIONS: &[&str] = &["berlin", "paris", "madrid", "rome", "vienna"];

fn rng(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn pick<'a>(s: &mut u64, from: &[&'a str]) -> &'a str {
    from[(rng(s) % from.len() as u64) as usize]
}

const USAGE: &str = "usage: cargo xtask bench ads [--url URL | --via-wrangler-proxy] [--seconds N] [--connections C] [--client wrk|rust] [--gzip] [--production-sink] [--tmpfs] [--keep]";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Client {
    Wrk,
    Rust,
}

fn wrk_available() -> bool {
    std::process::Command::new("wrk").arg("--version").output().is_ok_and(|o| {
        String::from_utf8_lossy(&o.stdout).contains("wrk") || String::from_utf8_lossy(&o.stderr).contains("wrk")
    })
}

#[derive(Clone)]
struct Options {
    url: Option<String>,
    via_proxy: bool,
    production_sink: bool,
    /// Keep the stack up after the run (for perf and curl) until killed.
    keep: bool,
    /// `wrk` (when on PATH) or the built-in Rust client.
    client: Client,
    /// Send `Accept-Encoding: gzip`, so the local runtime compresses each
    /// answer as Cloudflare's front line would (in production that happens
    /// in front of the Worker, not in it).
    gzip: bool,
    seconds: u64,
    connections: usize,
    /// Durable Object state on /dev/shm (see `stack::start_with_state_in`).
    tmpfs: bool,
    /// `--connections` was given: one run at that concurrency only.
    connections_given: bool,
}

pub fn main(args: &[String]) -> Result<()> {
    let mut options = Options {
        url: None,
        via_proxy: false,
        production_sink: false,
        keep: false,
        client: if wrk_available() { Client::Wrk } else { Client::Rust },
        gzip: false,
        seconds: 10,
        connections: 8,
        tmpfs: false,
        connections_given: false,
    };
    let mut it = args.iter();
    match it.next().map(String::as_str) {
        Some("ads") => {}
        _ => bail!(USAGE),
    }
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => options.url = Some(value()?.trim_end_matches('/').to_string()),
            "--seconds" => options.seconds = value()?.parse().context("--seconds")?,
            "--connections" => {
                options.connections = value()?.parse().context("--connections")?;
                options.connections_given = true;
            }
            "--via-wrangler-proxy" => options.via_proxy = true,
            "--production-sink" => options.production_sink = true,
            "--keep" => options.keep = true,
            "--gzip" => options.gzip = true,
            "--tmpfs" => options.tmpfs = true,
            "--client" => {
                options.client = match value()?.as_str() {
                    "wrk" if wrk_available() => Client::Wrk,
                    "wrk" => bail!("--client wrk: wrk is not on PATH"),
                    "rust" => Client::Rust,
                    other => bail!("--client takes wrk or rust, not {other}"),
                }
            }
            other => bail!("unknown flag {other}; {USAGE}"),
        }
    }
    if options.seconds == 0 || options.connections == 0 {
        bail!("--seconds and --connections must be at least 1");
    }
    if let Some(url) = options.url.clone() {
        if options.via_proxy || options.production_sink {
            bail!("--via-wrangler-proxy and --production-sink start a stack of their own; they do not go with --url");
        }
        println!("bench ads: driving {url} (given with --url); {}", load_average());
        return run(&url, &options);
    }
    let tools = tools::ensure(false, Profile::Test.database_url_override().is_none())?;
    workers::build_all(&tools)?;
    let secrets = Secrets::from_env();
    let step = ui::step("starting a throw-away stack (test ports, .local/test)");
    let state = std::path::PathBuf::from(format!("/dev/shm/petnet-bench-ads-{}", std::process::id()));
    let mut stack = if options.tmpfs {
        stack::start_with_state_in(Profile::Test, &tools, &secrets, &state)?
    } else {
        stack::start(Profile::Test, &tools, true, &secrets)?
    };
    step.done();
    let result = (|| -> Result<()> {
        if options.production_sink {
            let step = ui::step("restarting ads with ADS_EVENT_RECORDER=off (the production sink)");
            stack.restart_with_vars(&tools, "ads", &[("ADS_EVENT_RECORDER", "off")])?;
            step.done();
        }
        let url = if options.via_proxy { stack.url("ads") } else { stack.direct_url("ads")? };
        let workerd: Vec<String> = stack
            .supervisor
            .group_of("ads")
            .map(crate::process::processes_in_group)
            .unwrap_or_default()
            .into_iter()
            .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "workerd"))
            .map(|pid| pid.to_string())
            .collect();
        println!(
            "bench ads: driving {url} ({}; wrangler's port is {}); durable state on {}; data points to {}; ads workerd pids {}",
            if options.via_proxy { "through wrangler's dev proxy" } else { "the Worker's own workerd socket" },
            stack.url("ads"),
            if options.tmpfs { "tmpfs (/dev/shm)" } else { "disk" },
            if options.production_sink { "the Analytics Engine binding" } else { "the local recorder object" },
            workerd.join(", ")
        );
        run(&url, &options)?;
        if options.keep {
            println!("--keep: the stack stays up ({url}) until this process is stopped");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        Ok(())
    })();
    stack.supervisor.stop_all();
    if options.tmpfs {
        let _ = std::fs::remove_dir_all(&state);
    }
    result
}

/// `uptime`'s load averages, for the record next to every figure.
fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let parts: Vec<&str> = text.split_whitespace().take(3).collect();
    format!("load average {}", parts.join(", "))
}

fn run(url: &str, options: &Options) -> Result<()> {
    let url = url.to_string();
    let ops = std::env::var("OPS_TOKEN").ok().filter(|v| !v.is_empty()).unwrap_or_else(|| "dev_ops_token".into());
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(120)))
        .http_status_as_error(false)
        .build()
        .into();

    let started = Instant::now();
    let mut s = 42u64;
    for batch in 0..CAMPAIGNS / BATCH {
        let campaigns: Vec<serde_json::Value> = (0..BATCH)
            .map(|i| {
                let n = batch * BATCH + i;
                let cpc = n % 2 == 1;
                let bid = if cpc { format!("0.{:02}", 1 + rng(&mut s) % 60) } else { format!("{}.{:02}", rng(&mut s) % 6, 10 + rng(&mut s) % 90) };
                let mut targeting = json!({ "species": [pick(&mut s, SPECIES)] });
                if n.is_multiple_of(3) {
                    targeting["regions"] = json!([pick(&mut s, REGIONS)]);
                }
                if n.is_multiple_of(4) {
                    targeting["interests"] = json!([pick(&mut s, INTERESTS), pick(&mut s, INTERESTS)]);
                }
                if n.is_multiple_of(5) {
                    targeting["age_months"] = json!({"min": 0, "max": 36 + rng(&mut s) % 100});
                }
                json!({
                    "id": format!("cmp_bench_{n:05}"),
                    "advertiser_id": format!("adv_bench_{}", n % 97),
                    "status": "active",
                    "bid": {"type": if cpc { "cpc" } else { "cpm" }, "value": bid, "currency": "EUR"},
                    "daily_budget": {"value": "100000.00", "currency": "EUR"},
                    "targeting": targeting,
                    "frequency_cap": if n.is_multiple_of(7) { json!({"max": 5, "per_seconds": 60}) } else { serde_json::Value::Null },
                    "creative": {"title": format!("Bench creative {n}"), "image_url": "https://cdn.example/b.png", "landing_url": format!("https://shop.example/{n}")}
                })
            })
            .collect();
        let mut response = agent
            .post(&format!("{url}/v1/campaigns/bulk"))
            .header("authorization", &format!("Bearer {ops}"))
            .header("content-type", "application/json")
            .send(json!({ "campaigns": campaigns }).to_string())
            .with_context(|| format!("POST {url}/v1/campaigns/bulk: is the stack up (`cargo xtask dev`)?"))?;
        if response.status() != 200 {
            bail!(
                "bulk load failed: {} {}",
                response.status(),
                response.body_mut().read_to_string().unwrap_or_default()
            );
        }
    }
    println!("loaded {CAMPAIGNS} active campaigns in {:.1}s", started.elapsed().as_secs_f64());

    // Warm-up: the first request reads the snapshot from KV.
    for _ in 0..200 {
        let _ = agent.get(&request_url_for(&url, &mut s)).call();
    }

    if !options.connections_given {
        // Latency is judged below saturation: at 8 connections the runtime's
        // one thread is saturated and p99 is mostly queueing. The Rust client
        // times every request itself (wrk's percentiles did not add up with
        // its own request count at 1 connection).
        let below = Options { client: Client::Rust, connections: 2, ..options.clone() };
        println!("latency below saturation:");
        drive_with_rust(&url, &below)?;
        println!("throughput at saturation:");
    }
    match options.client {
        Client::Wrk => drive_with_wrk(&url, options),
        Client::Rust => drive_with_rust(&url, options),
    }
}

/// The same requests as `request_url_for` (500 users, random Pet DNA), from
/// wrk's Lua hook.
const WRK_SCRIPT: &str = r#"
local species = {"dog", "cat", "rabbit", "parrot", "fish", "horse"}
local breeds = {"labrador", "tabby", "siamese", "poodle", "beagle", "lop"}
local interests = {"agility", "toys", "grooming", "food", "travel", "naps", "training"}
local regions = {"berlin", "paris", "madrid", "rome", "vienna"}
local function pick(list) return list[math.random(#list)] end
local thread_seed = 0
setup = function(thread) thread_seed = thread_seed + 1; thread:set("seed", thread_seed) end
init = function() math.randomseed(1000 + (seed or 0)) end
request = function()
  return wrk.format("GET", "/v1/ads?placement=feed&user=bu" .. math.random(0, 499)
    .. "&species=" .. pick(species) .. "&breed=" .. pick(breeds)
    .. "&age_months=" .. math.random(0, 149)
    .. "&interests=" .. pick(interests) .. "," .. pick(interests)
    .. "&region=" .. pick(regions))
end
"#;

/// wrk (C, event loop): much less CPU than the Rust client on this 2-core
/// machine, where the client competes with workerd (measured: 9 % vs 46 %
/// of a core at ~1,500 requests/s).
fn drive_with_wrk(url: &str, options: &Options) -> Result<()> {
    let (seconds, connections) = (options.seconds, options.connections);
    let script = std::env::temp_dir().join(format!("petnet-bench-ads-{}.lua", std::process::id()));
    std::fs::write(&script, WRK_SCRIPT).context("writing the wrk script")?;
    // One wrk thread drives 8 connections at well over 10,000 requests/s;
    // a second would only take CPU from workerd.
    let threads = 1;
    let load_before = load_average();
    let output = std::process::Command::new("wrk")
        .args(["-t", &threads.to_string(), "-c", &connections.to_string(), "-d", &format!("{seconds}s")])
        .args([
            "--latency",
            "--timeout",
            "10s",
            "-H",
            if options.gzip { "accept-encoding: gzip" } else { "accept-encoding: identity" },
            "-s",
        ])
        .arg(&script)
        .arg(url)
        .output()
        .context("running wrk")?;
    let load_after = load_average();
    let _ = std::fs::remove_file(&script);
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    if !output.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&output.stderr));
    }
    let field = |prefix: &str| -> Option<String> {
        text.lines().map(str::trim).find(|l| l.starts_with(prefix)).map(|l| l[prefix.len()..].trim().to_string())
    };
    let millis = |v: String| -> Option<f64> {
        let (number, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic())?);
        let n: f64 = number.parse().ok()?;
        Some(match unit {
            "us" => n / 1000.0,
            "ms" => n,
            "s" => n * 1000.0,
            "m" => n * 60_000.0,
            _ => return None,
        })
    };
    let p50 = field("50%").and_then(millis).context("no p50 in wrk's output")?;
    let p99 = field("99%").and_then(millis).context("no p99 in wrk's output")?;
    let rps = field("Requests/sec:").and_then(|v| v.parse::<f64>().ok()).context("no Requests/sec in wrk's output")?;
    let total = text.lines().find(|l| l.contains("requests in")).map(|l| l.trim().to_string()).unwrap_or_default();
    println!(
        "GET /v1/ads over {CAMPAIGNS} campaigns, {connections} connections (wrk, {threads} thread), {seconds}s, accept-encoding {}:",
        if options.gzip { "gzip" } else { "identity" }
    );
    println!("  {total}");
    for line in text.lines().filter(|l| l.contains("Non-2xx") || l.contains("Socket errors")) {
        println!("  {}", line.trim());
    }
    println!(
        "  p50 {p50:.2} ms   p99 {p99:.2} ms   max {}",
        field("Latency").and_then(|l| l.split_whitespace().nth(2).map(str::to_string)).unwrap_or_default()
    );
    println!("  {rps:.0} requests/s");
    println!("  machine: {load_before} before, {load_after} at the end (2-core machine, driver on it too)");
    Ok(())
}

fn drive_with_rust(url: &str, options: &Options) -> Result<()> {
    let (seconds, connections, gzip) = (options.seconds, options.connections, options.gzip);
    let url = url.to_string();
    let load_before = load_average();
    let measured = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..connections)
        .map(|t| {
            let stop = stop.clone();
            let url = url.clone();
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .timeout_global(Some(Duration::from_secs(10)))
                    .http_status_as_error(false)
                    .build()
                    .into();
                let mut s = 1000 + t as u64;
                let mut latencies = Vec::new();
                let (mut ok, mut empty, mut other) = (0u64, 0u64, 0u64);
                let mut first_failure: Option<String> = None;
                while !stop.load(Ordering::Relaxed) {
                    let u = request_url_for(&url, &mut s);
                    let t0 = Instant::now();
                    let request = agent.get(&u);
                    let request = if gzip { request } else { request.header("accept-encoding", "identity") };
                    match request.call() {
                        Ok(mut r) => {
                            let body = r.body_mut().read_to_vec();
                            latencies.push(t0.elapsed());
                            match r.status().as_u16() {
                                200 if body.is_ok() => ok += 1,
                                204 => empty += 1,
                                status => {
                                    other += 1;
                                    first_failure.get_or_insert_with(|| {
                                        format!("{status} {}", String::from_utf8_lossy(&body.unwrap_or_default()))
                                    });
                                }
                            }
                        }
                        Err(e) => {
                            other += 1;
                            first_failure.get_or_insert_with(|| e.to_string());
                        }
                    }
                }
                (latencies, ok, empty, other, first_failure)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    let elapsed = measured.elapsed();
    let load_after = load_average();
    let mut all = Vec::new();
    let (mut ok, mut empty, mut other) = (0, 0, 0);
    let mut failure = None;
    for t in threads {
        let (l, o, e, x, f) = t.join().map_err(|_| anyhow::anyhow!("a load thread panicked"))?;
        all.extend(l);
        ok += o;
        empty += e;
        other += x;
        failure = failure.or(f);
    }
    if all.is_empty() {
        bail!("no request completed");
    }
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)].as_secs_f64() * 1000.0;
    println!(
        "GET /v1/ads over {CAMPAIGNS} campaigns, {connections} connections (Rust client), {seconds}s, accept-encoding {}:",
        if gzip { "gzip" } else { "identity" }
    );
    println!("  requests {}  (200: {ok}, 204: {empty}, other/errors: {other})", all.len());
    if let Some(f) = failure {
        println!("  first failure: {f}");
    }
    println!(
        "  p50 {:.2} ms   p99 {:.2} ms   max {:.2} ms",
        pct(0.50),
        pct(0.99),
        all[all.len() - 1].as_secs_f64() * 1000.0
    );
    println!("  {:.0} requests/s", all.len() as f64 / elapsed.as_secs_f64());
    println!("  machine: {load_before} before, {load_after} at the end (2-core machine, driver on it too)");
    Ok(())
}

fn request_url_for(url: &str, s: &mut u64) -> String {
    format!(
        "{url}/v1/ads?placement=feed&user=bu{}&species={}&breed={}&age_months={}&interests={},{}&region={}",
        rng(s) % 500,
        pick(s, SPECIES),
        pick(s, BREEDS),
        rng(s) % 150,
        pick(s, INTERESTS),
        pick(s, INTERESTS),
        pick(s, REGIONS)
    )
}
