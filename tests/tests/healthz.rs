//! Every Worker is up, and the ones with a backing store really reached it.

use e2e::{get, service_url};

#[test]
fn every_worker_answers_healthz() {
    for worker in ["payments", "marketplace", "ads", "sandbox-psp"] {
        let reply = get(&format!("{}/healthz", service_url(worker)));
        assert_eq!(reply.status, 200, "{worker}: {:?}", reply.body);
        assert_eq!(reply.body["status"], "ok", "{worker}: {:?}", reply.body);
        assert_eq!(reply.body["service"], worker);
    }
}

#[test]
fn payments_and_marketplace_reach_postgres() {
    for worker in ["payments", "marketplace"] {
        let reply = get(&format!("{}/healthz", service_url(worker)));
        let check = &reply.body["checks"][0];
        assert_eq!(check["name"], "postgres", "{worker}: {:?}", reply.body);
        assert_eq!(check["ok"], true, "{worker}: {:?}", reply.body);
        // Only a real server answers with its version and our migration count.
        let version = check["server_version"].as_str().unwrap_or_default();
        assert!(version.starts_with("18."), "{worker}: server_version {version:?}");
        assert_eq!(check["database"], "petnet");
        assert!(check["migrations_applied"].as_i64().unwrap_or(0) >= 1, "{worker}: {:?}", reply.body);
    }
}

#[test]
fn ads_round_trips_through_kv() {
    let first = get(&format!("{}/healthz", service_url("ads")));
    let second = get(&format!("{}/healthz", service_url("ads")));
    for reply in [&first, &second] {
        let check = &reply.body["checks"][0];
        assert_eq!(check["name"], "kv", "{:?}", reply.body);
        assert_eq!(check["ok"], true, "{:?}", reply.body);
        assert_eq!(check["round_trip"], true);
    }
    // Each probe writes a fresh nonce and reads it back: not a constant.
    assert_ne!(first.body["checks"][0]["nonce"], second.body["checks"][0]["nonce"]);
}

#[test]
fn unknown_routes_get_the_standard_error_shape() {
    let reply = get(&format!("{}/no/such/route", service_url("payments")));
    assert_eq!(reply.status, 404);
    assert_eq!(reply.body["error"]["code"], "not_found");
    assert!(reply.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
}
