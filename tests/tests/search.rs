//! Search over listings (`GET /v1/search`), against the real PostgreSQL with
//! pgvector and the local embedding service. Each test works in a region of
//! its own, so listings other tests create never change its results.

use e2e::{fresh_purchase_id, get, listing_body, post, secret, send, service_url};
use serde_json::{json, Value};

fn base() -> String {
    service_url("marketplace")
}

/// A region no other test uses.
fn fresh_region(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("e2e-{name}-{nanos}")
}

fn create(region: &str, title: &str, description: &str, species: &str, patch: Value) -> String {
    let mut body = listing_body(
        json!({"title": title, "description": description, "species": species, "breed": null, "region": region}),
    );
    if let (Some(target), Value::Object(patch)) = (body.as_object_mut(), patch) {
        target.extend(patch);
    }
    let reply = post(&format!("{}/v1/listings", base()), &secret("OPS_TOKEN"), &body);
    assert_eq!(reply.status, 201, "{:?}", reply.body);
    reply.body["id"].as_str().expect("id").to_string()
}

fn encode(value: &str) -> String {
    e2e::form_encode(&[("x", value)]).trim_start_matches("x=").to_string()
}

fn search(params: &[(&str, &str)]) -> e2e::Reply {
    let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={}", encode(v))).collect();
    get(&format!("{}/v1/search?{}", base(), query.join("&")))
}

fn ids(reply: &e2e::Reply) -> Vec<String> {
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    reply.body["items"].as_array().expect("items").iter().map(|i| i["id"].as_str().expect("id").to_string()).collect()
}

/// A small shop with one of each kind, in its own region.
fn shop(region: &str) -> (String, String, String, String) {
    let heater = create(
        region,
        "Aquarium heater 50 W",
        "Adjustable thermostat, for tanks up to 60 litres. Barely used.",
        "fish",
        json!({}),
    );
    let lead = create(
        region,
        "Red leather dog lead",
        "Two metres, brass clip, suits medium and large dogs.",
        "dog",
        json!({}),
    );
    let tree =
        create(region, "Sisal cat tree", "1.2 m scratching post with two platforms and a hammock.", "cat", json!({}));
    let coon = create(
        region,
        "Maine Coon kitten",
        "Twelve weeks old, vaccinated, litter trained. Very fluffy.",
        "cat",
        json!({"breed": "Maine Coon", "age_months": 3, "price": {"value": "900.00", "currency": "EUR"}}),
    );
    (heater, lead, tree, coon)
}

#[test]
fn a_paraphrase_finds_the_listing_by_meaning() {
    let region = fresh_region("meaning");
    let (heater, lead, tree, _) = shop(&region);
    let reply = search(&[("q", "keep my fish warm"), ("region", &region)]);
    let found = ids(&reply);
    assert_eq!(found.first(), Some(&heater), "{:?}", reply.body);
    let item = &reply.body["items"][0];
    assert_eq!(item["title"], "Aquarium heater 50 W");
    assert_eq!(item["species"], "fish");
    assert_eq!(item["region"], region.as_str());
    assert_eq!(item["price"], json!({"value": "120.00", "currency": "EUR"}));
    let scores: Vec<f64> =
        reply.body["items"].as_array().expect("items").iter().map(|i| i["score"].as_f64().expect("score")).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "best first: {scores:?}");
    // A misspelled query still finds it: the embedding sees sub-words.
    assert_eq!(ids(&search(&[("q", "aquarum heater"), ("region", &region)])).first(), Some(&heater));
    assert_eq!(ids(&search(&[("q", "leash for walking my dog"), ("region", &region)])).first(), Some(&lead));
    assert_eq!(ids(&search(&[("q", "something for my cat to scratch"), ("region", &region)])).first(), Some(&tree));
}

#[test]
fn misspelled_words_are_corrected_against_the_listings_words() {
    let region = fresh_region("typos");
    let (heater, _, _, _) = shop(&region);
    let cage =
        create(&region, "Chinchilla cage, three levels", "Wooden shelves and a dust bath corner.", "rodent", json!({}));
    // Two typos: neither word is one that listings use; both are corrected
    // ("aquarium heater") before the query is embedded and matched.
    assert_eq!(ids(&search(&[("q", "aquarim heeter"), ("region", &region)])).first(), Some(&heater));
    assert_eq!(ids(&search(&[("q", "chinchila cage"), ("region", &region)])).first(), Some(&cage));
    // Short words are never "corrected" into other words.
    assert_eq!(search(&[("q", "gray house"), ("region", &region)]).status, 200);
}

#[test]
fn an_exact_breed_name_ranks_first() {
    let region = fresh_region("breed");
    let (_, _, _, coon) = shop(&region);
    assert_eq!(ids(&search(&[("q", "maine coon"), ("region", &region)])).first(), Some(&coon));
    let filtered = ids(&search(&[("q", "cat"), ("region", &region), ("breed", "maine coon")]));
    assert_eq!(filtered, vec![coon]);
}

#[test]
fn filters_narrow_the_result_and_an_empty_result_is_not_an_error() {
    let region = fresh_region("filters");
    let (heater, _, tree, coon) = shop(&region);
    let cats = ids(&search(&[("q", "cat"), ("region", &region), ("species", "cat")]));
    assert_eq!(cats.len(), 2, "{cats:?}");
    assert!(cats.contains(&tree) && cats.contains(&coon));
    let cheap = ids(&search(&[
        ("q", "cat"),
        ("region", &region),
        ("species", "cat"),
        ("max_price", "500"),
        ("currency", "eur"),
    ]));
    assert_eq!(cheap, vec![tree.clone()]);
    let pricey = ids(&search(&[("q", "cat"), ("region", &region), ("min_price", "500.00"), ("currency", "EUR")]));
    assert_eq!(pricey, vec![coon]);
    let usd = search(&[("q", "heater"), ("region", &region), ("currency", "USD")]);
    assert_eq!(usd.body, json!({"items": [], "next_cursor": null}));
    assert!(!ids(&search(&[("q", "heater"), ("region", &region)])).is_empty());
    let _ = heater;
    let nowhere = search(&[("q", "aquarium heater"), ("region", &fresh_region("empty"))]);
    assert_eq!(nowhere.body, json!({"items": [], "next_cursor": null}));
}

#[test]
fn removed_and_sold_out_listings_never_appear() {
    let ops = secret("OPS_TOKEN");
    let region = fresh_region("gone");
    let (heater, _, _, _) = shop(&region);
    let spare = create(region.as_str(), "Aquarium heater 100 W", "For big tanks, titanium.", "fish", json!({}));
    let found = ids(&search(&[("q", "aquarium heater"), ("region", &region)]));
    assert!(found.contains(&heater) && found.contains(&spare), "{found:?}");

    // The last unit is reserved, then sold: the listing leaves search.
    let purchase = fresh_purchase_id();
    let reserved = post(
        &format!("{}/internal/reservations", base()),
        &secret("INTERNAL_TOKEN"),
        &json!({"purchase_id": purchase, "listing_id": heater, "quantity": 1}),
    );
    assert_eq!(reserved.status, 201, "{:?}", reserved.body);
    assert!(!ids(&search(&[("q", "aquarium heater"), ("region", &region)])).contains(&heater));
    let sold =
        post(&format!("{}/internal/reservations/{purchase}/sold", base()), &secret("INTERNAL_TOKEN"), &json!({}));
    assert_eq!(sold.status, 200);
    assert!(!ids(&search(&[("q", "aquarium heater"), ("region", &region)])).contains(&heater));

    // Removed by an operator: gone too; back when reactivated.
    let url = format!("{}/v1/listings/{spare}", base());
    let removed = send("PATCH", &url, Some(&ops), Some(&json!({"status": "removed"})));
    assert_eq!((removed.status, removed.body["status"].as_str()), (200, Some("removed")), "{:?}", removed.body);
    assert!(!ids(&search(&[("q", "aquarium heater"), ("region", &region)])).contains(&spare));
    assert_eq!(send("PATCH", &url, Some(&ops), Some(&json!({"status": "active"}))).status, 200);
    assert!(ids(&search(&[("q", "aquarium heater"), ("region", &region)])).contains(&spare));
}

#[test]
fn a_changed_listing_is_found_by_its_new_text_only() {
    let ops = secret("OPS_TOKEN");
    let region = fresh_region("change");
    let (heater, lead, _, _) = shop(&region);
    let url = format!("{}/v1/listings/{heater}", base());
    let changed = send(
        "PATCH",
        &url,
        Some(&ops),
        Some(&json!({"title": "Retractable dog leash", "description": "Five metres, for walks in the park."})),
    );
    assert_eq!(changed.status, 200, "{:?}", changed.body);
    assert_eq!(changed.body["title"], "Retractable dog leash");
    assert_eq!(changed.body["price"], json!({"value": "120.00", "currency": "EUR"}), "the price is untouched");
    let warm = ids(&search(&[("q", "keep my fish warm"), ("region", &region), ("species", "fish")]));
    let dog = ids(&search(&[("q", "leash for walking my dog"), ("region", &region), ("species", "fish")]));
    assert!(warm.is_empty() || warm[0] == heater, "{warm:?}");
    assert_eq!(dog.first(), Some(&heater), "re-embedded with the new text");
    let walks = ids(&search(&[("q", "walks in the park"), ("region", &region)]));
    assert!(walks.iter().take(2).any(|id| *id == heater) && walks.contains(&lead), "{walks:?}");

    // Bad changes are refused and change nothing.
    for (body, code) in [
        (json!({}), "invalid_field"),
        (json!({"status": "sold"}), "invalid_field"),
        (json!({"title": " "}), "invalid_field"),
        (json!({"price": {"value": "1.00", "currency": "EUR"}}), "invalid_field"),
    ] {
        let reply = send("PATCH", &url, Some(&ops), Some(&body));
        assert_eq!((reply.status, reply.body["error"]["code"].as_str()), (422, Some(code)), "{body}");
    }
    assert_eq!(send("PATCH", &url, None, Some(&json!({"status": "removed"}))).status, 401);
    let missing = send(
        "PATCH",
        &format!("{}/v1/listings/lst_doesnotexist0", base()),
        Some(&ops),
        Some(&json!({"status": "removed"})),
    );
    assert_eq!(missing.status, 404);
    assert_eq!(get(&url).body["status"], "active");
}

#[test]
fn pages_cover_every_match_once() {
    let region = fresh_region("pages");
    let ops = secret("OPS_TOKEN");
    let mut created = Vec::new();
    for i in 0..23 {
        let body = listing_body(json!({
            "title": format!("Bird seed mix no. {i}"),
            "description": "Sunflower, millet and oats for garden birds and budgies.",
            "species": "bird", "breed": null, "region": region,
        }));
        let reply = post(&format!("{}/v1/listings", base()), &ops, &body);
        assert_eq!(reply.status, 201, "{:?}", reply.body);
        created.push(reply.body["id"].as_str().expect("id").to_string());
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut params = vec![("q", "bird seed"), ("region", region.as_str()), ("limit", "10")];
        if let Some(c) = &cursor {
            params.push(("cursor", c.as_str()));
        }
        let reply = search(&params);
        seen.extend(ids(&reply));
        pages += 1;
        match reply.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
        assert!(pages < 5, "too many pages");
    }
    assert_eq!(pages, 3);
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 23, "no duplicates, none missing: {seen:?}");
    created.sort();
    assert_eq!(unique, created);
}

#[test]
fn bad_queries_are_refused_with_stable_codes() {
    let long = "a".repeat(513);
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![], "invalid_query"),
        (vec![("q", "")], "invalid_query"),
        (vec![("q", "   ")], "invalid_query"),
        (vec![("q", "cat\u{7}")], "invalid_query"),
        (vec![("q", &long)], "query_too_long"),
        (vec![("q", "cat"), ("limit", "0")], "invalid_field"),
        (vec![("q", "cat"), ("limit", "1000")], "invalid_field"),
        (vec![("q", "cat"), ("species", "unicorn")], "invalid_field"),
        (vec![("q", "cat"), ("max_price", "10")], "invalid_field"),
        (vec![("q", "cat"), ("max_price", "ten"), ("currency", "EUR")], "invalid_field"),
        (vec![("q", "cat"), ("currency", "XYZ")], "unknown_currency"),
        (vec![("q", "cat"), ("cursor", "garbage")], "invalid_cursor"),
        (vec![("q", "cat"), ("colour", "red")], "invalid_field"),
    ];
    for (params, code) in cases {
        let reply = search(&params);
        assert_eq!(
            (reply.status, reply.body["error"]["code"].as_str()),
            (422, Some(code)),
            "{params:?}: {:?}",
            reply.body
        );
    }
    // 512 characters is still fine, and odd input is just text.
    assert_eq!(search(&[("q", &"a".repeat(512))]).status, 200);
    for q in ["'; DROP TABLE listings; --", "cat & | ! ( ) :*", "日本の猫", "\u{1F408}"] {
        assert_eq!(search(&[("q", q)]).status, 200, "{q}");
    }
    let post = send("POST", &format!("{}/v1/search?q=cat", base()), None, None);
    assert_eq!((post.status, post.body["error"]["code"].as_str()), (405, Some("method_not_allowed")));
}

#[test]
fn healthz_reports_the_embedder() {
    let reply = get(&format!("{}/healthz", base()));
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let checks = reply.body["checks"].as_array().expect("checks");
    let embedder = checks.iter().find(|c| c["name"] == "embedder").expect("an embedder check");
    assert_eq!(embedder["ok"], true, "{embedder}");
    assert_eq!(embedder["model"], "all-minilm-l6-v2");
}
