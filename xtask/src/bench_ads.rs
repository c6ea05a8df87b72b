//! `cargo xtask bench ads [--url URL] [--seconds N] [--connections C]`:
//! loads 10,000 active campaigns into the running ads Worker (the dev stack
//! by default) and drives `GET /v1/ads` with keep-alive connections from
//! C threads, then prints p50/p99 latency and requests per second.
//! Latency is measured at the client on loopback, so it bounds the Worker's
//! own time from above.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

const CAMPAIGNS: usize = 10_000;
const BATCH: usize = 500;
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

pub fn main(args: &[String]) -> Result<()> {
    let mut url = "http://127.0.0.1:8789".to_string();
    let mut seconds = 10u64;
    let mut connections = 8usize;
    let mut it = args.iter();
    match it.next().map(String::as_str) {
        Some("ads") => {}
        _ => bail!("usage: cargo xtask bench ads [--url URL] [--seconds N] [--connections C]"),
    }
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--url" => url = value.trim_end_matches('/').to_string(),
            "--seconds" => seconds = value.parse().context("--seconds")?,
            "--connections" => connections = value.parse().context("--connections")?,
            other => bail!("unknown flag {other}"),
        }
    }
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
                if n % 3 == 0 {
                    targeting["regions"] = json!([pick(&mut s, REGIONS)]);
                }
                if n % 4 == 0 {
                    targeting["interests"] = json!([pick(&mut s, INTERESTS), pick(&mut s, INTERESTS)]);
                }
                if n % 5 == 0 {
                    targeting["age_months"] = json!({"min": 0, "max": 36 + rng(&mut s) % 100});
                }
                json!({
                    "id": format!("cmp_bench_{n:05}"),
                    "advertiser_id": format!("adv_bench_{}", n % 97),
                    "status": "active",
                    "bid": {"type": if cpc { "cpc" } else { "cpm" }, "value": bid, "currency": "EUR"},
                    "daily_budget": {"value": "100000.00", "currency": "EUR"},
                    "targeting": targeting,
                    "frequency_cap": if n % 7 == 0 { json!({"max": 5, "per_seconds": 60}) } else { serde_json::Value::Null },
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
                while !stop.load(Ordering::Relaxed) {
                    let u = request_url_for(&url, &mut s);
                    let t0 = Instant::now();
                    match agent.get(&u).call() {
                        Ok(mut r) => {
                            let _ = r.body_mut().read_to_vec();
                            latencies.push(t0.elapsed());
                            match r.status().as_u16() {
                                200 => ok += 1,
                                204 => empty += 1,
                                _ => other += 1,
                            }
                        }
                        Err(_) => other += 1,
                    }
                }
                (latencies, ok, empty, other)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let (mut ok, mut empty, mut other) = (0, 0, 0);
    for t in threads {
        let (l, o, e, x) = t.join().map_err(|_| anyhow::anyhow!("a load thread panicked"))?;
        all.extend(l);
        ok += o;
        empty += e;
        other += x;
    }
    if all.is_empty() {
        bail!("no request completed");
    }
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)].as_secs_f64() * 1000.0;
    println!("GET /v1/ads over {CAMPAIGNS} campaigns, {connections} connections, {seconds}s:");
    println!("  requests {}  (200: {ok}, 204: {empty}, other/errors: {other})", all.len());
    println!(
        "  p50 {:.2} ms   p99 {:.2} ms   max {:.2} ms",
        pct(0.50),
        pct(0.99),
        all[all.len() - 1].as_secs_f64() * 1000.0
    );
    println!("  {:.0} requests/s", all.len() as f64 / seconds as f64);
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
