//! PetAds end to end on the running test stack: campaigns in KV, serving
//! with targeting, pause, budget exhaustion and frequency caps, and the
//! click path (click URLs expire after 4 s on the test stack).
//!
//! Each test targets a species of its own, so campaigns of tests running in
//! parallel never compete in its auctions.

use std::time::{Duration, Instant};

use e2e::{secret, send, service_url, Reply};
use serde_json::{json, Value};

fn ads() -> String {
    service_url("ads")
}

fn ops() -> String {
    secret("OPS_TOKEN")
}

fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{prefix}{nanos}x{}", COUNTER.fetch_add(1, Ordering::SeqCst))
}

fn campaign(species: &str, patch: Value) -> Value {
    let mut body = json!({
        "advertiser_id": "adv_e2e",
        "status": "active",
        "bid": {"type": "cpm", "value": "2.00", "currency": "EUR"},
        "daily_budget": {"value": "100.00", "currency": "EUR"},
        "targeting": {"species": [species]},
        "creative": {"title": "Crunchy treats", "image_url": "https://cdn.example/t.png", "landing_url": "https://shop.example/treats?ref=petads"}
    });
    if let (Some(target), Value::Object(patch)) = (body.as_object_mut(), patch) {
        for (k, v) in patch {
            target.insert(k, v);
        }
    }
    body
}

fn put(id: &str, body: &Value) -> Reply {
    send("PUT", &format!("{}/v1/campaigns/{id}", ads()), Some(&ops()), Some(body))
}

fn ad(params: &str) -> Reply {
    send("GET", &format!("{}/v1/ads?{params}", ads()), None, None)
}

/// `GET` without following redirects: (status, Location, body).
fn raw_get(url: &str) -> (u16, Option<String>, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    let mut response = agent.get(url).call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let location = response.headers().get("location").and_then(|v| v.to_str().ok()).map(str::to_string);
    (response.status().as_u16(), location, response.body_mut().read_to_string().unwrap_or_default())
}

fn events(campaign: &str) -> Vec<Value> {
    let reply = send("GET", &format!("{}/_test/events?campaign={campaign}", ads()), None, None);
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    reply.body["points"].as_array().cloned().unwrap_or_default()
}

fn count(events: &[Value], kind: &str) -> usize {
    events.iter().filter(|p| p["blobs"][0] == kind).count()
}

/// Polls the recorder until `cond` holds (points arrive with the isolate's
/// background sync, about a second).
fn wait_events(campaign: &str, cond: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let e = events(campaign);
        if cond(&e) {
            return e;
        }
        assert!(Instant::now() < deadline, "recorded points never matched; last: {e:#?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn campaigns_are_validated_and_stored() {
    let species = unique("crud");
    let id = unique("cmp_crud");
    assert_eq!(
        send("PUT", &format!("{}/v1/campaigns/{id}", ads()), None, Some(&campaign(&species, json!({})))).status,
        401
    );
    assert_eq!(
        send("PUT", &format!("{}/v1/campaigns/{id}", ads()), Some("nope"), Some(&campaign(&species, json!({})))).status,
        401
    );
    let bad = put(
        &id,
        &campaign(
            &species,
            json!({"creative": {"title": "x", "image_url": "https://a.example/i.png", "landing_url": "http://a.example/"}}),
        ),
    );
    assert_eq!((bad.status, bad.body["error"]["code"].as_str()), (422, Some("invalid_field")), "{:?}", bad.body);
    let bad = put(&id, &campaign(&species, json!({"bid": {"type": "cpm", "value": "0.00", "currency": "EUR"}})));
    assert_eq!(bad.status, 422, "{:?}", bad.body);
    let bad = put(&id, &campaign(&species, json!({"bid": {"type": "cpm", "value": "1.00", "currency": "USD"}})));
    assert_eq!(bad.body["error"]["code"], "unsupported_currency", "{:?}", bad.body);
    let huge = json!({"advertiser_id": "a".repeat(70_000)});
    assert_eq!(put(&id, &huge).status, 413);
    assert_eq!(put("not_an_id", &campaign(&species, json!({}))).status, 404);

    let created = put(&id, &campaign(&species, json!({})));
    assert_eq!(created.status, 201, "{:?}", created.body);
    assert_eq!(created.body["id"], id.as_str());
    assert_eq!(put(&id, &campaign(&species, json!({"status": "paused"}))).status, 200);
    let got = send("GET", &format!("{}/v1/campaigns/{id}", ads()), Some(&ops()), None);
    assert_eq!(got.status, 200);
    assert_eq!(got.body["status"], "paused");
    assert_eq!(got.body["targeting"]["species"][0], species.as_str());
    assert_eq!(send("GET", &format!("{}/v1/campaigns/cmp_missing_{species}", ads()), Some(&ops()), None).status, 404);
    let list = send("GET", &format!("{}/v1/campaigns?limit=500", ads()), Some(&ops()), None);
    assert_eq!(list.status, 200);
    assert!(list.body["campaigns"].is_array());
}

#[test]
fn targeting_decides_eligibility() {
    let species = unique("tgt");
    let id = unique("cmp_tgt");
    let body = campaign(
        &species,
        json!({"targeting": {
            "species": [species], "breeds": ["Labrador"], "age_months": {"min": 2, "max": 24},
            "interests": ["agility", "toys"], "regions": ["berlin"]
        }}),
    );
    assert_eq!(put(&id, &body).status, 201);
    let base =
        format!("placement=feed&species={species}&breed=labrador&age_months=12&interests=naps,toys&region=berlin");
    let hit = ad(&format!("{base}&user={}", unique("u")));
    assert_eq!(hit.status, 200, "{:?}", hit.body);
    assert_eq!(hit.body["ad"]["campaign_id"], id.as_str());
    assert_eq!(hit.body["ad"]["title"], "Crunchy treats");
    assert_eq!(hit.body["ad"]["price"], json!({"value": "0.50", "currency": "EUR"}), "alone, it pays the reserve");
    assert!(hit.body["ad"]["click_url"].as_str().unwrap_or_default().contains("/v1/ads/click/"));
    for miss in [
        format!("placement=feed&species={species}x&breed=labrador&age_months=12&interests=toys&region=berlin"),
        format!("placement=feed&species={species}&breed=poodle&age_months=12&interests=toys&region=berlin"),
        format!("placement=feed&species={species}&breed=labrador&age_months=30&interests=toys&region=berlin"),
        format!("placement=feed&species={species}&breed=labrador&interests=toys&region=berlin"),
        format!("placement=feed&species={species}&breed=labrador&age_months=12&interests=naps&region=berlin"),
        format!("placement=feed&species={species}&breed=labrador&age_months=12&interests=toys&region=paris"),
    ] {
        let r = ad(&format!("{miss}&user={}", unique("u")));
        assert_eq!(r.status, 204, "{miss} -> {:?}", r.body);
    }
    // A second, higher bidder: it wins and pays the first one's eCPM.
    let rich = unique("cmp_tgt_rich");
    assert_eq!(
        put(&rich, &campaign(&species, json!({"bid": {"type": "cpm", "value": "3.00", "currency": "EUR"}}))).status,
        201
    );
    let r = ad(&format!("{base}&user={}", unique("u")));
    assert_eq!(r.body["ad"]["campaign_id"], rich.as_str(), "{:?}", r.body);
    assert_eq!(r.body["ad"]["price"]["value"], "2.00");
    // Bad requests are refused, not guessed at.
    assert_eq!(ad("species=dog&user=u1").status, 422);
    assert_eq!(ad("placement=feed&user=u1&age_months=-3").status, 422);
    assert_eq!(ad("placement=feed&user=u%20x").status, 422);
}

#[test]
fn paused_campaigns_stop_serving() {
    let species = unique("pause");
    let id = unique("cmp_pause");
    assert_eq!(put(&id, &campaign(&species, json!({}))).status, 201);
    assert_eq!(ad(&format!("placement=feed&user={}&species={species}", unique("u"))).status, 200);
    assert_eq!(put(&id, &campaign(&species, json!({"status": "paused"}))).status, 200);
    assert_eq!(ad(&format!("placement=feed&user={}&species={species}", unique("u"))).status, 204);
    assert_eq!(put(&id, &campaign(&species, json!({"status": "active"}))).status, 200);
    assert_eq!(ad(&format!("placement=feed&user={}&species={species}", unique("u"))).status, 200);
}

#[test]
fn budget_exhaustion_stops_delivery_within_the_bound() {
    let species = unique("budget");
    let id = unique("cmp_budget");
    // Alone it pays the 0.50 reserve eCPM: 0.0005 EUR per impression, so a
    // 0.01 budget buys 20 impressions. One isolate (the local stack) may
    // overspend by at most one charge.
    let body = campaign(
        &species,
        json!({"bid": {"type": "cpm", "value": "10.00", "currency": "EUR"}, "daily_budget": {"value": "0.01", "currency": "EUR"}}),
    );
    assert_eq!(put(&id, &body).status, 201);
    let mut served = 0;
    for _ in 0..40 {
        let r = ad(&format!("placement=feed&user={}&species={species}", unique("u")));
        match r.status {
            200 => served += 1,
            204 => {}
            other => panic!("unexpected {other}: {:?}", r.body),
        }
    }
    assert!((20..=21).contains(&served), "served {served} impressions on a 20-impression budget");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let d = send("GET", &format!("{}/v1/campaigns/{id}/delivery", ads()), Some(&ops()), None);
        assert_eq!(d.status, 200, "{:?}", d.body);
        if d.body["impressions"] == served {
            let spent = d.body["spent_micros"].as_i64().unwrap_or(0);
            assert!(spent <= 10_000 + 500, "spent {spent} µEUR of a 10000 µEUR budget");
            break;
        }
        assert!(Instant::now() < deadline, "delivery never caught up: {:?}", d.body);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(ad(&format!("placement=feed&user={}&species={species}", unique("u"))).status, 204);
}

#[test]
fn frequency_cap_limits_each_user() {
    let species = unique("freq");
    let id = unique("cmp_freq");
    assert_eq!(put(&id, &campaign(&species, json!({"frequency_cap": {"max": 2, "per_seconds": 3600}}))).status, 201);
    let alice = unique("alice");
    for _ in 0..2 {
        assert_eq!(ad(&format!("placement=feed&user={alice}&species={species}")).status, 200);
    }
    assert_eq!(ad(&format!("placement=feed&user={alice}&species={species}")).status, 204);
    assert_eq!(
        ad(&format!("placement=story&user={alice}&species={species}")).status,
        204,
        "the cap is per user, not per placement"
    );
    assert_eq!(ad(&format!("placement=feed&user={}&species={species}", unique("bob"))).status, 200);
}

/// Capped impressions reach the user's shard object with the background
/// sync (other isolates load them from there); impressions of uncapped
/// campaigns are not kept, no cap needs them.
#[test]
fn capped_impressions_reach_the_users_shard() {
    let species = unique("shard");
    let capped = unique("cmp_capped");
    let open = unique("cmp_open");
    let cap = json!({"frequency_cap": {"max": 2, "per_seconds": 3600}, "targeting": {"species": [species], "regions": ["oslo"]}});
    assert_eq!(put(&capped, &campaign(&species, cap)).status, 201);
    assert_eq!(
        put(&open, &campaign(&species, json!({"targeting": {"species": [species], "regions": ["lima"]}}))).status,
        201
    );
    let carol = unique("carol");
    for region in ["oslo", "oslo", "lima"] {
        let r = ad(&format!("placement=feed&user={carol}&species={species}&region={region}"));
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = send("GET", &format!("{}/_test/users/{carol}", ads()), None, None);
        assert_eq!(r.status, 200, "{:?}", r.body);
        let history = r.body["history"].as_array().cloned().unwrap_or_default();
        let of = |id: &str| history.iter().filter(|h| h[0] == carol.as_str() && h[1] == id).count();
        if of(&capped) == 2 {
            assert_eq!(of(&open), 0, "uncapped impressions are not kept: {history:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the shard never received the capped impressions: {history:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn click_path() {
    let species = unique("click");
    let id = unique("cmp_click");
    assert_eq!(
        put(&id, &campaign(&species, json!({"bid": {"type": "cpc", "value": "0.40", "currency": "EUR"}}))).status,
        201
    );
    let user = unique("u");
    let r = ad(&format!("placement=feed&user={user}&species={species}&breed=beagle&interests=toys&region=berlin"));
    assert_eq!(r.status, 200, "{:?}", r.body);
    let click_url = r.body["ad"]["click_url"].as_str().expect("click_url").to_string();
    let token = click_url.rsplit('/').next().unwrap_or_default().to_string();
    let (payload, sig) = token.split_once('.').expect("payload.signature");

    // Valid: 302 to the stored landing URL, twice, counted once.
    for _ in 0..2 {
        let (status, location, _) = raw_get(&click_url);
        assert_eq!(status, 302);
        assert_eq!(location.as_deref(), Some("https://shop.example/treats?ref=petads"));
    }
    let points = wait_events(&id, |e| count(e, "click") >= 1 && count(e, "impression") >= 1);
    let click = points.iter().find(|p| p["blobs"][0] == "click").expect("a click");
    assert_eq!(click["blobs"][3], "feed");
    assert_eq!(click["blobs"][4], species.as_str());
    assert_eq!(click["blobs"][5], "beagle");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(count(&events(&id), "click"), 1, "a repeated click within the window counts once");

    let base = click_url.trim_end_matches(&token).to_string();
    let mut flipped = sig.to_string();
    let last = if flipped.ends_with('A') { 'B' } else { 'A' };
    flipped.pop();
    flipped.push(last);
    // The payload is base64url JSON: swap the campaign id, keep the signature.
    let other = unique("cmp_other");
    let swapped = swap_campaign(payload, &id, &other);
    let attacker = swap_campaign(payload, "\"d\":{", "\"l\":\"https://evil.example/\",\"d\":{");
    for (what, bad) in [
        ("tampered signature", format!("{payload}.{flipped}")),
        ("swapped campaign", format!("{swapped}.{sig}")),
        ("attacker URL", format!("{attacker}.{sig}")),
        ("unsigned", payload.to_string()),
        ("garbage", "%%%".to_string()),
    ] {
        let (status, location, body) = raw_get(&format!("{base}{bad}"));
        assert_eq!(status, 400, "{what}: {body}");
        assert_eq!(location, None, "{what} must not redirect");
    }
    // Expired: the test stack's click URLs live 4 s.
    std::thread::sleep(Duration::from_secs(6));
    let (status, location, body) = raw_get(&click_url);
    assert_eq!((status, location), (400, None), "{body}");
    assert!(body.contains("expired_token"), "{body}");
    assert_eq!(count(&events(&id), "click"), 1);
}

/// Rewrites `from` to `to` inside a base64url JSON payload.
fn swap_campaign(payload_b64: &str, from: &str, to: &str) -> String {
    let text = String::from_utf8(b64_decode(payload_b64)).expect("utf-8 payload");
    assert!(text.contains(from), "{text} lacks {from}");
    b64_encode(text.replacen(from, to, 1).as_bytes())
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn b64_decode(s: &str) -> Vec<u8> {
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes() {
        let v = ALPHABET.iter().position(|a| *a == c).expect("base64url") as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    out
}

fn b64_encode(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let v = ((b[0] as u32) << 16) | ((b[1] as u32) << 8) | b[2] as u32;
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((v >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}
