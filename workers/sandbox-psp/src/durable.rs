//! The `Ledger` Durable Object: the sandbox's single source of truth.
//!
//! One instance (`idFromName("ledger")`) holds every object, idempotency
//! record, event and webhook delivery in SQLite. An API request runs in one
//! synchronous stretch (no `await` between reading the idempotency record
//! and committing), inside `transactionSync`, so two requests with the same
//! key can never both execute and a failed execution leaves no trace.
//! Webhooks go out from the alarm, never from the API request.

use std::cell::Cell;

use serde::Deserialize;
use serde_json::{json, Value};
use worker::{durable_object, Date, Env, Headers, Method, Request, Response, ScheduledTime, SqlStorage, State};
use worker_common::log::{self, Level};
use worker_common::{body, health, route, ApiError};

use crate::api::{self, Ctx, Failure, NewEvent, Route};
use crate::chaos::{self, Chaos, ChaosPatch};
use crate::errors::StripeError;
use crate::form;
use crate::idempotency::{self, Decision, Fingerprint};
use crate::ledger;
use crate::objects::{event_json, API_VERSION};
use crate::sql::{self, int, opt_text, text, SqlStore};
use crate::store::StoreError;
use crate::webhooks::{self, AttemptResult, Next};
use crate::{ids, SERVICE};

/// Largest API request body accepted.
const BODY_LIMIT: usize = 256 * 1024;
/// Most deliveries attempted by one alarm run (the rest wait for the next run).
const DELIVERIES_PER_ALARM: usize = 50;

#[durable_object(alarm)]
pub struct Ledger {
    state: State,
    env: Env,
    migrated: Cell<bool>,
}

impl worker::DurableObject for Ledger {
    fn new(state: State, env: Env) -> Self {
        Self { state, env, migrated: Cell::new(false) }
    }

    async fn fetch(&self, req: Request) -> worker::Result<Response> {
        Ok(self.handle(req).await)
    }

    async fn alarm(&self) -> worker::Result<Response> {
        if let Err(e) = self.ensure_schema() {
            log::event(Level::Error, SERVICE, "schema migration failed", json!({ "error": e.0 }));
        } else {
            self.deliver_due().await;
        }
        self.schedule_deliveries().await;
        Response::ok("")
    }
}

fn now_ms() -> i64 {
    Date::now().as_millis() as i64
}

/// A response carrying Stripe's headers.
fn stripe_response(status: u16, body: &str, request_id: &str, extra: &[(&str, &str)]) -> Response {
    let headers = Headers::new();
    let mut pairs = vec![
        ("content-type", "application/json"),
        ("cache-control", "no-cache, no-store"),
        ("request-id", request_id),
        ("stripe-version", API_VERSION),
    ];
    pairs.extend_from_slice(extra);
    for (name, value) in pairs {
        // Header values here are ids and keys we validated or generated.
        let _ = headers.set(name, value);
    }
    Response::builder().with_status(status).with_headers(headers).fixed(body.as_bytes().to_vec())
}

fn stripe_error(err: &StripeError, request_id: &str) -> Response {
    stripe_response(err.status, &err.body().to_string(), request_id, &[])
}

#[derive(Deserialize)]
struct StoredAnswer {
    method: String,
    path: String,
    params: String,
    status: i64,
    body: String,
    request_id: String,
}

#[derive(Deserialize)]
struct DueDelivery {
    id: i64,
    event_seq: i64,
    event_id: String,
    event_type: String,
    attempts: i64,
    drop_first: i64,
    body: String,
}

#[derive(Deserialize)]
struct NextTime {
    next: Option<i64>,
}

#[derive(Deserialize)]
struct Setting {
    value: String,
}

#[derive(Deserialize)]
struct Count {
    name: Option<String>,
    n: i64,
}

impl Ledger {
    fn sql(&self) -> SqlStorage {
        self.state.storage().sql()
    }

    fn ensure_schema(&self) -> Result<(), StoreError> {
        if !self.migrated.get() {
            sql::migrate(&self.sql())?;
            self.migrated.set(true);
        }
        Ok(())
    }

    async fn handle(&self, req: Request) -> Response {
        let segments = match route::segments(&req) {
            Ok(s) => s,
            Err(e) => return e.into_response(),
        };
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        if let Err(e) = self.ensure_schema() {
            log::event(Level::Error, SERVICE, "schema migration failed", json!({ "error": e.0 }));
            return match segments.first() {
                Some(&"v1") => stripe_error(
                    &StripeError::api_error("The sandbox could not open its storage."),
                    &ids::new_id("req"),
                ),
                _ => ApiError::internal(e.0).into_response(),
            };
        }
        let method = req.method();
        match (method.clone(), segments.as_slice()) {
            (Method::Get, ["healthz"]) => self.healthz(),
            (_, ["healthz"]) => ApiError::method_not_allowed(method.as_ref(), "/healthz").into_response(),
            (_, ["v1", ..]) => self.api(req, &segments).await,
            (Method::Get, ["_sandbox", "chaos"]) => self.chaos_response(),
            (Method::Post, ["_sandbox", "chaos"]) => self.set_chaos(req).await.unwrap_or_else(ApiError::into_response),
            (Method::Delete, ["_sandbox", "chaos"]) => match self.save_chaos(&Chaos::default()) {
                Ok(()) => {
                    log::event(Level::Info, SERVICE, "chaos reset", Value::Null);
                    self.chaos_response()
                }
                Err(e) => ApiError::internal(e.0).into_response(),
            },
            (_, ["_sandbox", "chaos"]) => {
                ApiError::method_not_allowed(method.as_ref(), "/_sandbox/chaos").into_response()
            }
            (Method::Get, ["_sandbox", "ledger"]) => {
                self.ledger(&req).unwrap_or_else(|e| ApiError::internal(e.0).into_response())
            }
            (_, ["_sandbox", "ledger"]) => {
                ApiError::method_not_allowed(method.as_ref(), "/_sandbox/ledger").into_response()
            }
            _ => ApiError::not_found(format!("no route for {} {}", method, req.path())).into_response(),
        }
    }

    // ---- /healthz ------------------------------------------------------

    /// Writes a nonce to SQLite and reads it back.
    fn healthz(&self) -> Response {
        let started = now_ms();
        let nonce = ids::new_id("hz");
        let sql = self.sql();
        let probe = (|| -> Result<Value, StoreError> {
            sql::run(
                &sql,
                "INSERT INTO settings (name, value) VALUES ('healthz', ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                vec![text(nonce.clone())],
            )?;
            let read: Vec<Setting> = sql::rows(&sql, "SELECT value FROM settings WHERE name = 'healthz'", vec![])?;
            let objects: Vec<Count> = sql::rows(&sql, "SELECT NULL AS name, COUNT(*) AS n FROM objects", vec![])?;
            match read.first() {
                Some(row) if row.value == nonce => Ok(json!({
                    "round_trip": true,
                    "nonce": nonce,
                    "objects": objects.first().map(|c| c.n).unwrap_or(0),
                    "database_bytes": sql.database_size(),
                })),
                other => Err(StoreError(format!(
                    "read back {:?} instead of the nonce just written",
                    other.map(|r| r.value.clone())
                ))),
            }
        })();
        let latency_ms = (now_ms() - started).max(0) as u64;
        let check = match probe {
            Ok(detail) => health::Check { name: "durable_object_sqlite", ok: true, latency_ms, detail },
            Err(e) => {
                health::Check { name: "durable_object_sqlite", ok: false, latency_ms, detail: json!({ "error": e.0 }) }
            }
        };
        health::report(SERVICE, vec![check])
    }

    // ---- /v1 -------------------------------------------------------------

    async fn api(&self, mut req: Request, segments: &[&str]) -> Response {
        let request_id = ids::new_id("req");
        let method = req.method().to_string();
        let path = req.path();
        let rest = segments.get(1..).unwrap_or_default();
        if let (Method::Get, ["events", id]) = (req.method(), rest) {
            return self.retrieve_event(id, &request_id);
        }
        let Some(route) = Route::parse(&method, rest) else {
            return stripe_error(&StripeError::unrecognized_url(&method, &path), &request_id);
        };
        let is_post = req.method() == Method::Post;
        let idempotency_key = if is_post { req.headers().get("idempotency-key").ok().flatten() } else { None };
        let raw = if is_post {
            let content_type =
                req.headers().get("content-type").ok().flatten().unwrap_or_default().to_ascii_lowercase();
            if content_type.starts_with("application/json") || content_type.starts_with("multipart/") {
                let err = StripeError::invalid_request(format!(
                    "Invalid request: unsupported Content-Type {content_type}. Send application/x-www-form-urlencoded parameters."
                ));
                return stripe_error(&err, &request_id);
            }
            match body::bytes(&mut req, BODY_LIMIT).await {
                Ok(bytes) => bytes,
                Err(e) => return stripe_error(&StripeError::invalid_request(e.message), &request_id),
            }
        } else {
            req.url().ok().and_then(|u| u.query().map(|q| q.as_bytes().to_vec())).unwrap_or_default()
        };

        // From here to the commit nothing awaits: this request is alone.
        let chaos = self.chaos();
        if chaos::hit(chaos.api_error_rate, ids::draw()) {
            log::event(
                Level::Warn,
                SERVICE,
                "chaos: api error before execution",
                json!({ "request_id": request_id, "method": method, "path": path }),
            );
            return stripe_error(&StripeError::api_error("An unknown error occurred"), &request_id);
        }
        let params = match form::decode(&raw) {
            Ok(p) => p,
            Err(e) => return stripe_error(&e, &request_id),
        };
        let fingerprint = Fingerprint { method: method.clone(), path: path.clone(), params: params.canonical() };
        if let Some(key) = &idempotency_key {
            if let Err(e) = idempotency::validate_key(key) {
                return stripe_error(&e, &request_id);
            }
            match self.replay(key, &fingerprint, &request_id) {
                Ok(Some(response)) => return response,
                Ok(None) => {}
                Err(e) => return stripe_error(&e, &request_id),
            }
        }

        let sql = self.sql();
        let storage = self.state.storage();
        let at_ms = now_ms();
        let executed = sql::atomically(
            &storage,
            || -> Result<(u16, String, usize, Option<String>), Failure> {
                let mut store = SqlStore { sql: &sql };
                let mut new_id = ids::new_id;
                let mut ctx = Ctx { now: at_ms / 1000, ids: &mut new_id };
                let outcome = api::execute(&mut store, &mut ctx, &route, params)?;
                let body = outcome.body.to_string();
                for event in &outcome.events {
                    record_event(&sql, event, at_ms, &chaos, &request_id, idempotency_key.as_deref())?;
                }
                if let Some(key) = &idempotency_key {
                    sql::run(
                        &sql,
                        "INSERT INTO idempotency (key, method, path, params, status, body, request_id, purchase_id, created_ms, executions, replays)
                         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1, 0)",
                        vec![
                            text(key.clone()),
                            text(fingerprint.method.clone()),
                            text(fingerprint.path.clone()),
                            text(fingerprint.params.clone()),
                            int(outcome.status as i64),
                            text(body.clone()),
                            text(request_id.clone()),
                            opt_text(outcome.purchase_id.clone()),
                            int(at_ms),
                        ],
                    )?;
                }
                Ok((outcome.status, body, outcome.events.len(), outcome.purchase_id))
            },
            |e| Failure::Storage(StoreError(e)),
        );

        let (status, body, events, purchase_id) = match executed {
            Ok(done) => done,
            Err(Failure::Rejected(e)) => {
                log::event(
                    Level::Info,
                    SERVICE,
                    "api request rejected",
                    json!({
                        "request_id": request_id, "method": method, "path": path, "status": e.status,
                        "code": e.code, "idempotency_key": idempotency_key,
                    }),
                );
                return stripe_error(&e, &request_id);
            }
            Err(Failure::Storage(e)) => {
                log::event(
                    Level::Error,
                    SERVICE,
                    "api request failed in storage",
                    json!({ "request_id": request_id, "path": path, "error": e.0 }),
                );
                return stripe_error(&StripeError::api_error("An unknown error occurred"), &request_id);
            }
        };
        if events > 0 {
            self.schedule_deliveries().await;
        }
        let lost = chaos::hit(chaos.api_lost_response_rate, ids::draw());
        log::event(
            Level::Info,
            SERVICE,
            "api request executed",
            json!({
                "request_id": request_id, "method": method, "path": path, "status": status, "purchase_id": purchase_id,
                "idempotency_key": idempotency_key, "events": events, "response_lost": lost,
            }),
        );
        if lost {
            return stripe_error(&StripeError::api_error("An unknown error occurred"), &request_id);
        }
        let mut extra = Vec::new();
        if let Some(key) = &idempotency_key {
            extra.push(("idempotency-key", key.as_str()));
        }
        stripe_response(status, &body, &request_id, &extra)
    }

    /// The stored answer for `key` if this is a repeat of its first request.
    fn replay(&self, key: &str, incoming: &Fingerprint, request_id: &str) -> Result<Option<Response>, StripeError> {
        let sql = self.sql();
        let storage_failed = |e: StoreError| {
            log::event(Level::Error, SERVICE, "idempotency lookup failed", json!({ "error": e.0 }));
            StripeError::api_error("An unknown error occurred")
        };
        let stored: Vec<StoredAnswer> = sql::rows(
            &sql,
            "SELECT method, path, params, status, body, request_id FROM idempotency WHERE key = ?",
            vec![text(key)],
        )
        .map_err(storage_failed)?;
        let Some(stored) = stored.into_iter().next() else { return Ok(None) };
        let first =
            Fingerprint { method: stored.method.clone(), path: stored.path.clone(), params: stored.params.clone() };
        match idempotency::decide(key, Some(&first), incoming) {
            Decision::Execute => Ok(None),
            Decision::Conflict(err) => {
                log::event(
                    Level::Warn,
                    SERVICE,
                    "idempotency key reused with other parameters",
                    json!({ "idempotency_key": key, "path": incoming.path }),
                );
                Err(err)
            }
            Decision::Replay => {
                sql::run(&sql, "UPDATE idempotency SET replays = replays + 1 WHERE key = ?", vec![text(key)])
                    .map_err(storage_failed)?;
                log::event(
                    Level::Info,
                    SERVICE,
                    "api request replayed",
                    json!({
                        "request_id": request_id, "original_request": stored.request_id, "idempotency_key": key,
                        "path": incoming.path, "status": stored.status,
                    }),
                );
                let status = u16::try_from(stored.status).unwrap_or(500);
                let extra = [
                    ("idempotency-key", key),
                    ("idempotent-replayed", "true"),
                    ("original-request", stored.request_id.as_str()),
                ];
                Ok(Some(stripe_response(status, &stored.body, request_id, &extra)))
            }
        }
    }

    fn retrieve_event(&self, id: &str, request_id: &str) -> Response {
        #[derive(Deserialize)]
        struct Body {
            body: String,
        }
        match sql::rows::<Body>(&self.sql(), "SELECT body FROM events WHERE id = ?", vec![text(id)]) {
            Ok(rows) => match rows.into_iter().next() {
                Some(row) => stripe_response(200, &row.body, request_id, &[]),
                None => stripe_error(&StripeError::no_such(404, "event", id, "id"), request_id),
            },
            Err(e) => {
                log::event(Level::Error, SERVICE, "event lookup failed", json!({ "error": e.0 }));
                stripe_error(&StripeError::api_error("An unknown error occurred"), request_id)
            }
        }
    }

    // ---- chaos -------------------------------------------------------------

    fn chaos(&self) -> Chaos {
        sql::rows::<Setting>(&self.sql(), "SELECT value FROM settings WHERE name = 'chaos'", vec![])
            .ok()
            .and_then(|rows| rows.into_iter().next())
            .and_then(|row| serde_json::from_str(&row.value).ok())
            .unwrap_or_default()
    }

    fn save_chaos(&self, chaos: &Chaos) -> Result<(), StoreError> {
        let value = serde_json::to_string(chaos).map_err(|e| StoreError(e.to_string()))?;
        sql::run(
            &self.sql(),
            "INSERT INTO settings (name, value) VALUES ('chaos', ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            vec![text(value)],
        )
    }

    fn chaos_response(&self) -> Response {
        worker_common::json(200, &self.chaos())
    }

    async fn set_chaos(&self, mut req: Request) -> Result<Response, ApiError> {
        let patch: ChaosPatch = body::json(&mut req).await?;
        let next = self.chaos().apply(&patch)?;
        self.save_chaos(&next).map_err(|e| ApiError::internal(e.0))?;
        log::event(Level::Warn, SERVICE, "chaos settings changed", json!(next));
        Ok(worker_common::json(200, &next))
    }

    // ---- ledger ------------------------------------------------------------

    fn ledger(&self, req: &Request) -> Result<Response, StoreError> {
        let purchase_id = req
            .url()
            .ok()
            .and_then(|url| url.query_pairs().find(|(k, _)| k == "purchase_id").map(|(_, v)| v.into_owned()))
            .filter(|p| !p.is_empty());
        let sql = self.sql();
        let store = SqlStore { sql: &sql };
        let body = match purchase_id {
            Some(purchase_id) => {
                let objects = store.of_purchase(&purchase_id)?;
                let operations: Vec<ledger::Operation> = sql::rows(
                    &sql,
                    "SELECT key, method, path, status, executions, replays FROM idempotency WHERE purchase_id = ? ORDER BY created_ms, key",
                    vec![text(purchase_id.clone())],
                )?;
                let deliveries: Vec<ledger::Delivery> = sql::rows(
                    &sql,
                    "SELECT d.event_id AS event_id, e.type AS event_type, d.state AS state, d.attempts AS attempts,
                            d.last_status AS last_status, d.last_error AS last_error, d.last_attempt_ms AS last_attempt_ms
                     FROM deliveries d JOIN events e ON e.seq = d.event_seq
                     WHERE e.purchase_id = ? ORDER BY e.seq, d.id",
                    vec![text(purchase_id.clone())],
                )?;
                ledger::purchase(&purchase_id, &objects, &operations, &deliveries)
            }
            None => {
                use crate::store::Store;
                let objects = store.all()?;
                let by_kind: Vec<Count> =
                    sql::rows(&sql, "SELECT kind AS name, COUNT(*) AS n FROM objects GROUP BY kind", vec![])?;
                let by_state: Vec<Count> =
                    sql::rows(&sql, "SELECT state AS name, COUNT(*) AS n FROM deliveries GROUP BY state", vec![])?;
                let keys: Vec<Count> = sql::rows(&sql, "SELECT NULL AS name, COUNT(*) AS n FROM idempotency", vec![])?;
                let replays: Vec<Count> =
                    sql::rows(&sql, "SELECT NULL AS name, COALESCE(SUM(replays), 0) AS n FROM idempotency", vec![])?;
                let events: Vec<Count> = sql::rows(&sql, "SELECT NULL AS name, COUNT(*) AS n FROM events", vec![])?;
                let map = |rows: &[Count]| -> Value {
                    rows.iter()
                        .map(|c| (c.name.clone().unwrap_or_default(), json!(c.n)))
                        .collect::<serde_json::Map<_, _>>()
                        .into()
                };
                let first = |rows: &[Count]| rows.first().map(|c| c.n).unwrap_or(0);
                ledger::overall(
                    &objects,
                    json!({
                        "objects": map(&by_kind),
                        "idempotency_keys": first(&keys),
                        "replays": first(&replays),
                        "events": first(&events),
                        "webhook_deliveries": map(&by_state),
                    }),
                )
            }
        };
        Ok(worker_common::json(200, &body))
    }

    // ---- webhooks ----------------------------------------------------------

    /// Sets the alarm to the earliest pending delivery (or held deadline).
    async fn schedule_deliveries(&self) {
        let next: Result<Vec<NextTime>, StoreError> = sql::rows(
            &self.sql(),
            "SELECT MIN(t) AS next FROM (
                 SELECT MIN(due_ms) AS t FROM deliveries WHERE state = 'pending'
                 UNION ALL SELECT MIN(hold_until_ms) FROM deliveries WHERE state = 'held')",
            vec![],
        );
        let next = match next {
            Ok(rows) => rows.into_iter().next().and_then(|r| r.next),
            Err(e) => {
                log::event(Level::Error, SERVICE, "could not read the delivery schedule", json!({ "error": e.0 }));
                return;
            }
        };
        if let Some(at) = next {
            let at = at.max(now_ms());
            let when = ScheduledTime::new(js_sys::Date::new(&wasm_bindgen::JsValue::from_f64(at as f64)));
            if let Err(e) = self.state.storage().set_alarm(when).await {
                log::event(
                    Level::Error,
                    SERVICE,
                    "could not set the delivery alarm",
                    json!({ "error": e.to_string() }),
                );
            }
        }
    }

    /// Attempts every due delivery, oldest event first.
    async fn deliver_due(&self) {
        let url = route::config(&self.env, "STRIPE_WEBHOOK_URL");
        let secret = route::config(&self.env, "STRIPE_WEBHOOK_SECRET");
        let base_ms = webhooks::retry_base_ms(route::config(&self.env, "WEBHOOK_RETRY_BASE_MS").as_deref());
        let sql = self.sql();
        for _ in 0..DELIVERIES_PER_ALARM {
            let now = now_ms();
            // Held-back (reordered) deliveries whose deadline passed go out now.
            if let Err(e) = sql::run(
                &sql,
                "UPDATE deliveries SET state = 'pending', due_ms = ? WHERE state = 'held' AND hold_until_ms <= ?",
                vec![int(now), int(now)],
            ) {
                log::event(Level::Error, SERVICE, "could not release held deliveries", json!({ "error": e.0 }));
                return;
            }
            let due: Result<Vec<DueDelivery>, StoreError> = sql::rows(
                &sql,
                "SELECT d.id AS id, d.event_seq AS event_seq, d.event_id AS event_id, e.type AS event_type,
                        d.attempts AS attempts, d.drop_first AS drop_first, e.body AS body
                 FROM deliveries d JOIN events e ON e.seq = d.event_seq
                 WHERE d.state = 'pending' AND d.due_ms <= ? ORDER BY d.event_seq, d.id LIMIT 1",
                vec![int(now)],
            );
            let delivery = match due {
                Ok(rows) => match rows.into_iter().next() {
                    Some(d) => d,
                    None => return,
                },
                Err(e) => {
                    log::event(Level::Error, SERVICE, "could not read due deliveries", json!({ "error": e.0 }));
                    return;
                }
            };
            let attempt = delivery.attempts as u32 + 1;
            let result = if delivery.drop_first != 0 && delivery.attempts == 0 {
                AttemptResult::Dropped
            } else {
                match &url {
                    None => AttemptResult::Network("STRIPE_WEBHOOK_URL is not configured".into()),
                    Some(url) => {
                        let signature = secret
                            .as_deref()
                            .and_then(webhooks::first_secret)
                            .map(|s| webhooks::sign_header(s, now_ms() / 1000, delivery.body.as_bytes()));
                        send(url, signature.as_deref(), &delivery.body).await
                    }
                }
            };
            let finished = now_ms();
            let next = webhooks::after_attempt(attempt, &result, finished, base_ms);
            let (status, error) = match &result {
                AttemptResult::Status(s) => (Some(*s as i64), None),
                AttemptResult::Dropped => (None, Some("dropped by chaos (not sent)".to_string())),
                AttemptResult::Network(e) => (None, Some(e.clone())),
            };
            let (state, due_ms) = match next {
                Next::Delivered => ("delivered", finished),
                Next::RetryAt(at) => ("pending", at),
                Next::GiveUp => ("failed", finished),
            };
            let mut update = vec![(
                "UPDATE deliveries SET state = ?, due_ms = ?, attempts = ?, last_status = ?, last_error = ?, last_attempt_ms = ? WHERE id = ?",
                vec![text(state), int(due_ms), int(attempt as i64), status.map(int).unwrap_or(worker::SqlStorageValue::Null), opt_text(error.clone()), int(finished), int(delivery.id)],
            )];
            if result != AttemptResult::Dropped {
                // A later event went out: anything held back behind it follows now.
                update.push((
                    "UPDATE deliveries SET state = 'pending', due_ms = ? WHERE state = 'held' AND event_seq < ?",
                    vec![int(finished), int(delivery.event_seq)],
                ));
            }
            for (query, bindings) in update {
                if let Err(e) = sql::run(&sql, query, bindings) {
                    log::event(Level::Error, SERVICE, "could not record a delivery attempt", json!({ "error": e.0 }));
                    return;
                }
            }
            let fields = json!({
                "event_id": delivery.event_id, "type": delivery.event_type, "attempt": attempt,
                "status": status, "error": error, "next": state, "retry_at_ms": matches!(next, Next::RetryAt(_)).then_some(due_ms),
            });
            match next {
                Next::Delivered => log::event(Level::Info, SERVICE, "webhook delivered", fields),
                Next::RetryAt(_) => log::event(Level::Warn, SERVICE, "webhook attempt failed; will retry", fields),
                Next::GiveUp => log::event(Level::Error, SERVICE, "webhook given up after the last attempt", fields),
            }
        }
    }
}

#[cfg(target_arch = "wasm32")]
async fn send(url: &str, signature: Option<&str>, body: &str) -> AttemptResult {
    webhooks::post(url, signature, body).await
}

#[cfg(not(target_arch = "wasm32"))]
async fn send(_url: &str, _signature: Option<&str>, _body: &str) -> AttemptResult {
    AttemptResult::Network("webhooks are only sent from a Worker".into())
}

/// Stores an event and plans its delivery (chaos decides when and how).
fn record_event(
    sql: &SqlStorage,
    event: &NewEvent,
    at_ms: i64,
    chaos: &Chaos,
    request_id: &str,
    idempotency_key: Option<&str>,
) -> Result<(), StoreError> {
    let id = ids::new_id("evt");
    let body = event_json(&id, event.kind, at_ms / 1000, &event.object, Some(request_id), idempotency_key).to_string();
    sql::run(
        sql,
        "INSERT INTO events (id, type, created, purchase_id, body) VALUES (?, ?, ?, ?, ?)",
        vec![text(id.clone()), text(event.kind), int(at_ms / 1000), opt_text(event.purchase_id.clone()), text(body)],
    )?;
    #[derive(Deserialize)]
    struct Seq {
        seq: i64,
    }
    let seq = sql::rows::<Seq>(sql, "SELECT seq FROM events WHERE id = ?", vec![text(id.clone())])?
        .into_iter()
        .next()
        .map(|s| s.seq)
        .ok_or_else(|| StoreError(format!("event {id} vanished after insert")))?;
    let plan = chaos.plan_delivery(at_ms, [ids::draw(), ids::draw(), ids::draw(), ids::draw(), ids::draw()]);
    let insert = "INSERT INTO deliveries (event_seq, event_id, state, due_ms, hold_until_ms, drop_first, attempts, created_ms) VALUES (?, ?, ?, ?, ?, ?, 0, ?)";
    let state = if plan.held_until_ms.is_some() { "held" } else { "pending" };
    sql::run(
        sql,
        insert,
        vec![
            int(seq),
            text(id.clone()),
            text(state),
            int(plan.due_ms),
            plan.held_until_ms.map(int).unwrap_or(worker::SqlStorageValue::Null),
            int(plan.drop_first as i64),
            int(at_ms),
        ],
    )?;
    if let Some(due) = plan.duplicate_due_ms {
        sql::run(
            sql,
            insert,
            vec![
                int(seq),
                text(id.clone()),
                text("pending"),
                int(due),
                worker::SqlStorageValue::Null,
                int(0),
                int(at_ms),
            ],
        )?;
    }
    if plan != (chaos::DeliveryPlan { due_ms: at_ms, held_until_ms: None, drop_first: false, duplicate_due_ms: None }) {
        log::event(
            Level::Warn,
            SERVICE,
            "chaos: webhook delivery altered",
            json!({
                "event_id": id, "type": event.kind, "delay_ms": plan.due_ms - at_ms, "held_until_ms": plan.held_until_ms,
                "drop_first": plan.drop_first, "duplicate": plan.duplicate_due_ms.is_some(),
            }),
        );
    }
    Ok(())
}
