//! `PurchaseObject`: one SQLite-backed Durable Object per purchase, a thin
//! shell around the pure saga in `steps`.
//!
//! For every input it (1) applies it to the saga in memory, and before any
//! effect that leaves the object it (2) persists the record, whose saga state
//! is also the outbox (the effects in flight, each with its idempotency key),
//! in one synchronous statement, and (3) sets the alarm as a safety net; only
//! then (4) does it perform the effect and feed the result back the same way.
//! Between two `await`s nothing else runs, so requests that interleave while
//! this object awaits a `fetch` never see half a transition, and transitions
//! that need no I/O (a webhook, an inline effect) share one write.
//! After an isolate restart the first touch feeds `Resume`, which hands back
//! every effect that may have been in flight; it is performed again under the
//! same idempotency key, so the provider executes it once.

use std::cell::{Cell, RefCell};
use std::collections::{HashSet, VecDeque};

use orchestrator::{Millis, Outcome, Timestamp};
use serde::Deserialize;
use serde_json::{json, Value};
use steps::{
    BuyerCommand, DisputeOutcome, OrderRequest, PurchaseError, PurchaseInput, PurchaseOperatorCommand, PurchaseSaga,
    PurchaseState, StripeEvent, StripeEventKind,
};
use worker::{durable_object, DurableObject, Env, Request, Response, State};
use worker_common::log::{self, Level};
use worker_common::{body, json as json_response, respond, ApiError};

use crate::checkout::CheckoutRequest;
use crate::effects::{self, ListingLookup, Performer};
use crate::record::{self, Record};
use crate::stripe::CallError;
use crate::{mirror, SERVICE};

/// While effects are being performed, or the mirror lags, come back this
/// soon even if the saga itself has nothing due: a crash mid-call must not
/// leave the object asleep until a far deadline.
const SAFETY_NET: Millis = Millis::seconds(5);

/// Messages from the Worker to one object (internal, JSON over `fetch`).
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    Create {
        purchase_id: String,
        request: CheckoutRequest,
    },
    View,
    Buyer {
        command: String,
        request_id: String,
    },
    Operator {
        command: String,
        #[serde(default)]
        outcome: Option<DisputeOutcome>,
    },
    Stripe {
        event: webhooks::stripe::StripeEvent,
    },
}

#[durable_object]
pub struct PurchaseObject {
    state: State,
    env: Env,
    saga: Result<PurchaseSaga, String>,
    /// The record as last persisted; `None` until loaded (or if none exists).
    cache: RefCell<Option<Record>>,
    loaded: Cell<bool>,
    /// The cached record has transitions not yet written to storage.
    dirty: Cell<bool>,
    /// Idempotency keys being performed by this isolate right now.
    performing: RefCell<HashSet<String>>,
    mirrored: Cell<u64>,
    /// The alarm this isolate last set (`Some(None)`: deleted; `None`: not
    /// known), so an unchanged wake-up costs no storage write.
    alarm: Cell<Option<Option<u64>>>,
}

impl DurableObject for PurchaseObject {
    fn new(state: State, env: Env) -> Self {
        let saga = crate::saga(&env);
        let object = PurchaseObject {
            state,
            env,
            saga,
            cache: RefCell::new(None),
            loaded: Cell::new(false),
            dirty: Cell::new(false),
            performing: RefCell::new(HashSet::new()),
            mirrored: Cell::new(0),
            alarm: Cell::new(None),
        };
        if let Err(e) = object.create_tables() {
            log::event(
                Level::Error,
                SERVICE,
                "could not create the purchase tables",
                json!({ "error": e.to_string() }),
            );
        }
        object
    }

    async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        let result = async {
            let bytes = body::bytes(&mut req, body::JSON_LIMIT).await?;
            let command: Command = body::parse_json(&bytes)?;
            self.command(command).await
        }
        .await;
        respond(result)
    }

    async fn alarm(&self) -> worker::Result<Response> {
        // If this handler dies half-way, the runtime retries it; the early
        // re-arm below covers the case where it never gets the chance.
        let safety = now().plus(Millis(SAFETY_NET.0 * 6));
        self.alarm.set(None);
        if self.state.storage().set_alarm(std::time::Duration::from_millis(SAFETY_NET.0 * 6)).await.is_ok() {
            self.alarm.set(Some(Some(safety.0)));
        }
        let saga = match &self.saga {
            Ok(saga) => saga,
            Err(e) => {
                log::event(Level::Error, SERVICE, "alarm with an invalid saga configuration", json!({ "error": e }));
                return Response::ok("config error");
            }
        };
        let mut effects = match self.load(saga) {
            Ok(Some(effects)) => effects,
            Ok(None) => {
                let _ = self.state.storage().delete_alarm().await;
                return Response::ok("no purchase");
            }
            Err(e) => {
                self.log(Level::Error, "could not load the purchase in the alarm", json!({ "error": e.to_string() }));
                return Response::ok("load failed");
            }
        };
        match self.apply(saga, PurchaseInput::Timer) {
            Ok(tr) => effects.extend(tr.effects),
            Err(e) => self.log(Level::Warn, "timer input refused", json!({ "error": e.to_string() })),
        }
        self.run(saga, effects).await;
        Response::ok("ok")
    }
}

impl PurchaseObject {
    fn create_tables(&self) -> worker::Result<()> {
        // The record's saga state is also the outbox: `pending_effects` and
        // `Resume` derive the effects in flight from it, so one row is one
        // atomic write. (Objects created before this kept an `outbox` table
        // that nothing reads.)
        self.state.storage().sql().exec(
            "CREATE TABLE IF NOT EXISTS record (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                body TEXT NOT NULL,
                revision INTEGER NOT NULL,
                mirrored_revision INTEGER NOT NULL DEFAULT 0
            )",
            None,
        )?;
        Ok(())
    }

    fn purchase_id(&self) -> String {
        self.cache.borrow().as_ref().map(|r| r.id().to_string()).unwrap_or_default()
    }

    fn log(&self, level: Level, message: &str, fields: Value) {
        let mut fields = fields;
        if let Value::Object(map) = &mut fields {
            map.insert("saga_id".into(), Value::from(self.purchase_id()));
        }
        log::event(level, SERVICE, message, fields);
    }

    async fn command(&self, command: Command) -> Result<Response, ApiError> {
        let saga = self.saga.as_ref().map_err(|e| ApiError::internal(format!("invalid saga configuration: {e}")))?;
        let mut effects = self.load(saga).map_err(|e| ApiError::internal(e.to_string()))?.unwrap_or_default();
        let (status, tr) = match command {
            Command::Create { purchase_id, request } => match self.create(saga, purchase_id, request).await? {
                Created::New(tr) => (201, Some(tr)),
                Created::Existing => (200, None),
            },
            Command::View => {
                if self.cache.borrow().is_none() {
                    return Err(ApiError::not_found("no such purchase"));
                }
                (200, None)
            }
            Command::Buyer { command, request_id } => {
                let request_id = format!("req_{command}_{request_id}");
                let cmd = match command.as_str() {
                    "confirm_delivery" => BuyerCommand::ConfirmDelivery { request_id },
                    "dispute" => BuyerCommand::Dispute { request_id },
                    "cancel" => BuyerCommand::Cancel { request_id },
                    other => return Err(ApiError::not_found(format!("no buyer command {other}"))),
                };
                (200, Some(self.apply_existing(saga, PurchaseInput::Buyer(cmd))?))
            }
            Command::Operator { command, outcome } => {
                let cmd = match (command.as_str(), outcome) {
                    ("retry", _) => PurchaseOperatorCommand::RetryNow,
                    ("refund", _) => PurchaseOperatorCommand::Refund,
                    ("resolve", Some(outcome)) => PurchaseOperatorCommand::ResolveDispute { outcome },
                    ("resolve", None) => {
                        return Err(ApiError::invalid("invalid_field", "outcome must be \"release\" or \"refund\""))
                    }
                    (other, _) => return Err(ApiError::not_found(format!("no operator command {other}"))),
                };
                (200, Some(self.apply_existing(saga, PurchaseInput::Operator(cmd))?))
            }
            Command::Stripe { event } => {
                let outcome = self.stripe_event(saga, &event, &mut effects)?;
                self.run(saga, effects).await;
                return Ok(json_response(200, &json!({ "received": true, "outcome": outcome })));
            }
        };
        if let Some(tr) = tr {
            effects.extend(tr.effects);
        }
        self.run(saga, effects).await;
        let view = self.cache.borrow().as_ref().map(|r| record::view(saga, r));
        match view {
            Some(view) => Ok(json_response(status, &view)),
            // `flush` failed and forgot the unwritten state.
            None if !self.loaded.get() => {
                Err(ApiError::internal("the purchase could not be stored; retry the request"))
            }
            None => Err(ApiError::not_found("no such purchase")),
        }
    }

    /// Loads the record into the cache on first touch in this isolate. A
    /// purchase loaded from storage may have had effects in flight when the
    /// previous isolate died: `Resume` returns them to perform again.
    fn load(&self, saga: &PurchaseSaga) -> Result<Option<Vec<steps::PurchaseEffect>>, PurchaseError> {
        if self.loaded.get() {
            return Ok(self.cache.borrow().as_ref().map(|_| Vec::new()));
        }
        #[derive(Deserialize)]
        struct Row {
            body: String,
            mirrored_revision: f64,
        }
        let rows: Vec<Row> = self
            .state
            .storage()
            .sql()
            .exec("SELECT body, mirrored_revision FROM record WHERE id = 1", None)
            .and_then(|cursor| cursor.to_array())
            .map_err(|e| PurchaseError::Stored(format!("reading the record: {e}")))?;
        self.loaded.set(true);
        let Some(row) = rows.into_iter().next() else {
            return Ok(None);
        };
        let record = decode_record(saga, &row.body)?;
        self.mirrored.set(row.mirrored_revision as u64);
        let finished = saga.state(&record.purchase).is_finished();
        *self.cache.borrow_mut() = Some(record);
        if finished {
            return Ok(Some(Vec::new()));
        }
        let tr = self.apply(saga, PurchaseInput::Resume)?;
        if !tr.effects.is_empty() {
            self.log(Level::Info, "resumed after a restart", json!({ "effects": tr.effects.len() }));
        }
        Ok(Some(tr.effects))
    }

    async fn create(
        &self,
        saga: &PurchaseSaga,
        purchase_id: String,
        request: CheckoutRequest,
    ) -> Result<Created, ApiError> {
        if let Some(existing) = self.same_request(&request)? {
            return Ok(existing);
        }
        let listing = match effects::listing(&self.env, &request.listing_id).await {
            Ok(ListingLookup::Found(listing)) => listing,
            Ok(ListingLookup::Missing) => {
                return Err(ApiError::invalid(
                    "unknown_listing",
                    format!("listing {} does not exist", request.listing_id),
                ))
            }
            Err(CallError::Retryable(m) | CallError::Permanent(m) | CallError::Unknown(m)) => {
                return Err(ApiError::unavailable(
                    "marketplace_unavailable",
                    format!("could not read the listing: {m}"),
                ))
            }
        };
        // Another request with this key may have created it while we waited.
        if let Some(existing) = self.same_request(&request)? {
            return Ok(existing);
        }
        if !listing.active {
            return Err(ApiError::invalid_state(format!("listing {} is not for sale", request.listing_id))
                .with_code("listing_unavailable"));
        }
        let currency = listing.price.currency();
        let total = listing
            .price
            .to_minor()
            .ok()
            .and_then(|minor| minor.checked_mul(request.quantity))
            .and_then(|minor| steps::Money::from_minor(minor, currency).ok())
            .ok_or_else(|| ApiError::invalid("amount_too_large", "price times quantity is out of range"))?;
        let order = OrderRequest {
            purchase_id,
            listing_id: request.listing_id.clone(),
            units: request.quantity as u32,
            buyer_id: request.buyer_id.clone(),
            seller_account: listing.seller_account,
            total,
        };
        let now = now();
        let seed = u64::from_le_bytes(uuid::Uuid::new_v4().as_bytes()[..8].try_into().unwrap_or([7; 8]));
        let (purchase, tr) = saga.start(order, now, seed).map_err(purchase_error)?;
        let record = Record {
            purchase,
            seller_id: listing.seller_id,
            payment_method: request.payment_method.clone(),
            fingerprint: request.fingerprint(),
            created_at: now,
        };
        *self.cache.borrow_mut() = Some(record);
        self.dirty.set(true);
        self.log(Level::Info, "purchase created", json!({ "amount": total, "listing_id": request.listing_id }));
        Ok(Created::New(tr))
    }

    /// `Some(Existing)` for a repeat of the creating request, 422 for the
    /// same key with another body, `None` when nothing exists yet.
    fn same_request(&self, request: &CheckoutRequest) -> Result<Option<Created>, ApiError> {
        match self.cache.borrow().as_ref() {
            None => Ok(None),
            Some(r) if r.fingerprint == request.fingerprint() => Ok(Some(Created::Existing)),
            Some(_) => Err(ApiError::invalid(
                "idempotency_key_reused",
                "this Idempotency-Key was already used with a different request body",
            )),
        }
    }

    fn apply_existing(&self, saga: &PurchaseSaga, input: PurchaseInput) -> Result<steps::PurchaseTransition, ApiError> {
        if self.cache.borrow().is_none() {
            return Err(ApiError::not_found("no such purchase"));
        }
        self.apply(saga, input).map_err(purchase_error)
    }

    fn stripe_event(
        &self,
        saga: &PurchaseSaga,
        event: &webhooks::stripe::StripeEvent,
        effects: &mut Vec<steps::PurchaseEffect>,
    ) -> Result<&'static str, ApiError> {
        if self.cache.borrow().is_none() {
            // Not ours (another environment, a deleted test purchase): ack so
            // the provider stops retrying.
            return Ok("unknown_purchase");
        }
        let kind = match event.event_type.as_str() {
            steps::event::HOLD_SUCCEEDED => StripeEventKind::AmountCapturableUpdated,
            steps::event::PAYMENT_FAILED => StripeEventKind::PaymentFailed,
            steps::event::CAPTURED => StripeEventKind::Succeeded,
            steps::event::CANCELED => StripeEventKind::Canceled,
            steps::event::REFUNDED => StripeEventKind::ChargeRefunded,
            steps::event::TRANSFER_CREATED => StripeEventKind::TransferCreated,
            _ => return Ok("ignored_type"),
        };
        let object_id = match kind {
            StripeEventKind::ChargeRefunded => event.payment_intent.clone().or(event.object_id.clone()),
            _ => event.object_id.clone(),
        };
        let input = PurchaseInput::Stripe(StripeEvent { id: event.id.clone(), kind, object_id });
        let tr = self.apply(saga, input).map_err(purchase_error)?;
        let outcome = match tr.outcome {
            Outcome::Applied => "applied",
            Outcome::Buffered => "buffered",
            Outcome::Ignored(orchestrator::Ignored::Duplicate) => "duplicate",
            Outcome::Ignored(_) => "ignored",
        };
        self.log(
            Level::Info,
            "stripe event",
            json!({ "event_id": event.id, "type": event.event_type, "outcome": outcome }),
        );
        effects.extend(tr.effects);
        Ok(outcome)
    }

    /// Feeds one input to the saga. The new state is written by the next
    /// [`PurchaseObject::flush`], which comes before anything leaves the object.
    fn apply(&self, saga: &PurchaseSaga, input: PurchaseInput) -> Result<steps::PurchaseTransition, PurchaseError> {
        let mut cache = self.cache.borrow_mut();
        let record = cache.as_mut().ok_or_else(|| PurchaseError::Stored("no purchase loaded".into()))?;
        let before = record.revision();
        let tr = saga.handle(&mut record.purchase, now(), input)?;
        if record.revision() != before {
            self.dirty.set(true);
        }
        Ok(tr)
    }

    /// Writes the record if it changed since the last write: one statement,
    /// so a transition is stored whole or not at all. On failure memory has
    /// run ahead of storage: forget it, so the next touch reloads.
    fn flush(&self) -> Result<(), PurchaseError> {
        if !self.dirty.get() {
            return Ok(());
        }
        let mut cache = self.cache.borrow_mut();
        let Some(record) = cache.as_ref() else {
            self.dirty.set(false);
            return Ok(());
        };
        let stored = |e: worker::Error| PurchaseError::Stored(format!("writing the record: {e}"));
        let result = serde_json::to_string(record).map_err(|e| PurchaseError::Stored(e.to_string())).and_then(|body| {
            self.state
                .storage()
                .sql()
                .exec(
                    "INSERT INTO record (id, body, revision) VALUES (1, ?, ?)
                     ON CONFLICT (id) DO UPDATE SET body = excluded.body, revision = excluded.revision",
                    vec![body.into(), (record.revision() as i64).into()],
                )
                .map(|_| ())
                .map_err(stored)
        });
        match result {
            Ok(()) => self.dirty.set(false),
            Err(_) => {
                *cache = None;
                self.loaded.set(false);
                self.dirty.set(false);
            }
        }
        result
    }

    /// Performs effects until none is left, feeding each result back, then
    /// writes the record, brings the operators' mirror up to date and sets
    /// the alarm. Before an effect that does I/O the record is written and
    /// the safety-net alarm set; effects answered inline (the engine
    /// benchmark) need neither, since nothing can interleave or crash
    /// between their transitions.
    async fn run(&self, saga: &PurchaseSaga, effects: Vec<steps::PurchaseEffect>) {
        let inline = effects::engine_bench_mode(&self.env);
        let mut queue: VecDeque<_> = effects.into();
        let mut safety_net_set = false;
        while let Some(effect) = queue.pop_front() {
            if !inline {
                if let Err(e) = self.flush() {
                    self.log(
                        Level::Error,
                        "could not write the record; the alarm retries",
                        json!({ "error": e.to_string() }),
                    );
                    return;
                }
                if !safety_net_set {
                    self.schedule(saga, true).await;
                    safety_net_set = true;
                }
            }
            if !self.performing.borrow_mut().insert(effect.idempotency_key.clone()) {
                continue; // another request of this isolate is performing it
            }
            let (purchase_id, payment_method) = match self.cache.borrow().as_ref() {
                Some(r) => (r.id().to_string(), r.payment_method.clone()),
                None => (String::new(), String::new()),
            };
            let performer = Performer { env: &self.env, purchase_id: &purchase_id, payment_method: &payment_method };
            let result = performer.perform(&effect).await;
            self.performing.borrow_mut().remove(&effect.idempotency_key);
            let input = match &result {
                Ok(output) => PurchaseInput::EffectSucceeded { effect: effect.id, output: output.clone() },
                Err(CallError::Retryable(error)) => {
                    PurchaseInput::EffectFailed { effect: effect.id, retryable: true, error: error.clone() }
                }
                Err(CallError::Permanent(error)) => {
                    PurchaseInput::EffectFailed { effect: effect.id, retryable: false, error: error.clone() }
                }
                Err(CallError::Unknown(error)) => {
                    PurchaseInput::EffectOutcomeUnknown { effect: effect.id, error: error.clone() }
                }
            };
            if let Err(e) = &result {
                self.log(
                    Level::Warn,
                    "effect failed",
                    json!({ "key": effect.idempotency_key, "error": format!("{e:?}") }),
                );
            }
            match self.apply(saga, input) {
                Ok(tr) => queue.extend(tr.effects),
                Err(e) => self.log(
                    Level::Error,
                    "could not record an effect's result",
                    json!({ "key": effect.idempotency_key, "error": e.to_string() }),
                ),
            }
        }
        if let Err(e) = self.flush() {
            self.log(Level::Error, "could not write the record; the alarm retries", json!({ "error": e.to_string() }));
            return;
        }
        self.sync_mirror(saga).await;
        self.schedule(saga, false).await;
    }

    /// One alarm multiplexes the saga's next deadline and two safety nets:
    /// effects being performed right now, and a mirror that lags.
    async fn schedule(&self, saga: &PurchaseSaga, performing: bool) {
        let (due, revision) = match self.cache.borrow().as_ref() {
            Some(r) => (saga.poll_timeout(&r.purchase), r.revision()),
            None => return,
        };
        let safety = (performing || revision > self.mirrored.get()).then(|| now().plus(SAFETY_NET));
        let wake = match (due, safety) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let wake = wake.map(|t| t.0);
        if self.alarm.get() == Some(wake) {
            return;
        }
        let storage = self.state.storage();
        let result = match wake {
            Some(at) => storage.set_alarm(std::time::Duration::from_millis(at.saturating_sub(now().0))).await,
            None => storage.delete_alarm().await,
        };
        match result {
            Ok(()) => self.alarm.set(Some(wake)),
            Err(e) => {
                self.alarm.set(None);
                self.log(Level::Error, "could not set the alarm", json!({ "error": e.to_string() }));
            }
        }
    }

    async fn sync_mirror(&self, saga: &PurchaseSaga) {
        let row = match self.cache.borrow().as_ref() {
            Some(r) if r.revision() > self.mirrored.get() => mirror::Row::of(saga, r),
            _ => return,
        };
        let Some(url) = crate::config_var(&self.env, "DATABASE_URL") else {
            return;
        };
        if effects::engine_bench_mode(&self.env) {
            // The engine benchmark measures the saga alone, without the mirror.
            self.mirrored.set(row.revision);
            return;
        }
        match mirror::upsert(&url, &row).await {
            Ok(()) => {
                self.mirrored.set(row.revision);
                let _ = self.state.storage().sql().exec(
                    "UPDATE record SET mirrored_revision = MAX(mirrored_revision, ?) WHERE id = 1",
                    vec![(row.revision as i64).into()],
                );
            }
            Err(e) => self.log(Level::Warn, "mirror update failed; the alarm retries it", json!({ "error": e })),
        }
    }
}

enum Created {
    New(steps::PurchaseTransition),
    Existing,
}

fn decode_record(saga: &PurchaseSaga, body: &str) -> Result<Record, PurchaseError> {
    let value: Value = serde_json::from_str(body).map_err(|e| PurchaseError::Stored(e.to_string()))?;
    // The saga part goes through `load`, which understands older schema versions.
    let purchase = saga.load(&value["purchase"].to_string())?;
    let text = |k: &str| value[k].as_str().unwrap_or_default().to_string();
    Ok(Record {
        purchase,
        seller_id: text("seller_id"),
        payment_method: text("payment_method"),
        fingerprint: text("fingerprint"),
        created_at: Timestamp(value["created_at"].as_u64().unwrap_or(0)),
    })
}

pub fn now() -> Timestamp {
    Timestamp(worker::Date::now().as_millis())
}

pub fn purchase_error(e: PurchaseError) -> ApiError {
    match e.http_status() {
        409 => ApiError::invalid_state(e.to_string()),
        422 => ApiError::invalid("invalid_request", e.to_string()),
        _ => ApiError::internal(e.to_string()),
    }
}

/// The state a purchase must be in for `PurchaseState` filters (ops listing).
pub fn parse_state(text: &str) -> Option<PurchaseState> {
    serde_json::from_value(Value::from(text)).ok()
}
