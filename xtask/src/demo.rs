//! `cargo xtask demo`: one complete purchase against the running dev stack
//! (`cargo xtask dev` in another terminal), printed as a timeline.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::stack::{Profile, Secrets};

struct Api {
    agent: ureq::Agent,
    secrets: Secrets,
}

impl Api {
    fn secret(&self, name: &str) -> String {
        self.secrets.0.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone()).unwrap_or_default()
    }

    fn call(
        &self,
        method: &str,
        url: &str,
        token: Option<&str>,
        key: Option<&str>,
        body: Option<&Value>,
    ) -> Result<(u16, Value)> {
        let mut request = ureq::http::Request::builder().method(method).uri(url);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let mut response = self
            .agent
            .run(request.body(payload)?)
            .with_context(|| format!("{method} {url}: is `cargo xtask dev` running in another terminal?"))?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
    }
}

pub fn main(args: &[String]) -> Result<()> {
    if let Some(arg) = args.first() {
        bail!("unknown argument `{arg}`: `cargo xtask demo` takes none");
    }
    let ports = Profile::Dev.ports();
    let payments = format!("http://127.0.0.1:{}", ports.payments);
    let marketplace = format!("http://127.0.0.1:{}", ports.marketplace);
    let sandbox = format!("http://127.0.0.1:{}", ports.sandbox_psp);
    let api = Api {
        agent: ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(30)))
            .http_status_as_error(false)
            .build()
            .into(),
        secrets: Secrets::from_env(),
    };
    let ops = api.secret("OPS_TOKEN");
    let checkout = api.secret("CHECKOUT_TOKEN");
    let started = Instant::now();
    let at = || format!("{:>7.3}s", started.elapsed().as_secs_f64());

    let listing = json!({
        "seller_id": "sel_demo_shelter",
        "seller_account": "acct_demo_shelter",
        "title": "Heated aquarium starter kit, 60 l",
        "description": "Glass tank with a 100 W heater, filter and LED light. Collected from a smoke-free home.",
        "species": "fish",
        "breed": null,
        "age_months": null,
        "region": "berlin",
        "price": {"value": "89.90", "currency": "EUR"},
        "quantity": 1
    });
    let (status, listing) =
        api.call("POST", &format!("{marketplace}/v1/listings"), Some(&ops), None, Some(&listing))?;
    if status != 201 {
        bail!("creating the listing answered {status}: {listing}");
    }
    let listing_id = listing["id"].as_str().unwrap_or_default().to_string();
    println!(
        "{}  listing {listing_id} \"{}\" for {} {}",
        at(),
        listing["title"].as_str().unwrap_or(""),
        listing["price"]["value"].as_str().unwrap_or("?"),
        listing["price"]["currency"].as_str().unwrap_or("")
    );

    let key = format!("demo-{}-{}", now_millis(), std::process::id());
    let order =
        json!({ "listing_id": listing_id, "buyer_id": "buyer_demo", "quantity": 1, "payment_method": "pm_card_visa" });
    let (status, purchase) =
        api.call("POST", &format!("{payments}/v1/purchases"), Some(&checkout), Some(&key), Some(&order))?;
    if status != 201 {
        bail!("checkout answered {status}: {purchase}");
    }
    let id = purchase["id"].as_str().unwrap_or_default().to_string();
    println!(
        "{}  checkout: purchase {id}, {} {} (fee {}, seller gets {}), state {}",
        at(),
        purchase["amount"]["value"].as_str().unwrap_or("?"),
        purchase["amount"]["currency"].as_str().unwrap_or(""),
        purchase["fee"]["value"].as_str().unwrap_or("?"),
        purchase["seller_payout"]["value"].as_str().unwrap_or("?"),
        purchase["state"].as_str().unwrap_or("?")
    );

    let url = format!("{payments}/v1/purchases/{id}");
    let purchase = wait_for(&api, &url, &checkout, "awaiting_delivery")?;
    println!(
        "{}  funds held (PaymentIntent {}); waiting for the buyer, auto-release at {}",
        at(),
        purchase["payment_intent"].as_str().unwrap_or("?"),
        purchase["auto_release_at"].as_str().unwrap_or("?")
    );

    let (status, body) =
        api.call("POST", &format!("{url}/confirm-delivery"), Some(&checkout), Some(&format!("{key}-confirm")), None)?;
    if status != 200 {
        bail!("confirm-delivery answered {status}: {body}");
    }
    println!("{}  buyer confirmed delivery", at());
    let purchase = wait_for(&api, &url, &checkout, "completed")?;
    println!("{}  completed", at());

    println!("\ntimeline of {id} (from the saga's history):");
    for entry in purchase["history"].as_array().into_iter().flatten() {
        let when = entry["at"].as_str().unwrap_or("");
        println!(
            "  {when}  {:<18} -> {:<18} {}",
            entry["from"].as_str().unwrap_or(""),
            entry["to"].as_str().unwrap_or(""),
            entry["input"].as_str().unwrap_or("")
        );
    }
    println!("\nsteps:");
    for step in purchase["steps"].as_array().into_iter().flatten() {
        println!(
            "  {:<18} {:<12} attempts {}",
            step["name"].as_str().unwrap_or(""),
            step["status"].as_str().unwrap_or(""),
            step["attempts"]
        );
    }

    let stripe_key = api.secret("STRIPE_SECRET_KEY");
    let (status, ledger) =
        api.call("GET", &format!("{sandbox}/_sandbox/ledger?purchase_id={id}"), Some(&stripe_key), None, None)?;
    if status == 200 {
        println!(
            "\nprovider ledger (minor units): authorized {}, captured {}, refunded {}, transferred {} to the seller; the platform kept {}",
            ledger["authorized"], ledger["captured"], ledger["refunded"], ledger["transferred"],
            ledger["captured"].as_i64().unwrap_or(0) - ledger["refunded"].as_i64().unwrap_or(0) - ledger["transferred"].as_i64().unwrap_or(0)
        );
    }
    Ok(())
}

fn wait_for(api: &Api, url: &str, token: &str, state: &str) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, purchase) = api.call("GET", url, Some(token), None, None)?;
        if status != 200 {
            bail!("GET {url} answered {status}: {purchase}");
        }
        let now = purchase["state"].as_str().unwrap_or("");
        if now == state {
            return Ok(purchase);
        }
        if matches!(now, "completed" | "refunded" | "cancelled" | "needs_attention") {
            bail!("the purchase ended `{now}` instead of reaching `{state}`: {purchase:#}");
        }
        if Instant::now() > deadline {
            bail!("the purchase is still `{now}` after 60 s (waiting for `{state}`); the logs are in .local/dev/logs");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn now_millis() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
