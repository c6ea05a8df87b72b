//! The Stripe endpoints: pure functions of the stored objects, the decoded
//! parameters, the time and an id source. They perform no I/O themselves;
//! the Durable Object runs them inside one SQLite transaction and stores the
//! events they return next to the objects they wrote.
//!
//! Two kinds of failure, as Stripe distinguishes them for idempotency:
//! - [`Failure::Rejected`]: the request never began executing (unknown or
//!   malformed parameters, unknown ids). Nothing is written or remembered, so
//!   a corrected retry under the same idempotency key is a fresh request.
//! - an [`Outcome`] with an error status: execution began and this is its
//!   result (a declined card, a capture in the wrong state, an over-refund,
//!   insufficient balance). It is stored and replayed like a success.

use serde_json::{json, Value};

use crate::errors::{ErrorType, StripeError};
use crate::form::Params;
use crate::objects::{Charge, Object, PaymentIntent, PiStatus, Refund, Transfer, CURRENCIES};
use crate::store::{Store, StoreError};

/// What an executed request produced.
#[derive(Debug)]
pub struct Outcome {
    pub status: u16,
    pub body: Value,
    pub events: Vec<NewEvent>,
    /// The purchase the request concerned (for the ledger).
    pub purchase_id: Option<String>,
}

/// An event to record and deliver (`type`, snapshot of `data.object`).
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub kind: &'static str,
    pub object: Value,
    pub purchase_id: Option<String>,
}

#[derive(Debug)]
pub enum Failure {
    /// Refused before execution: answered, never stored.
    Rejected(StripeError),
    Storage(StoreError),
}

impl From<StripeError> for Failure {
    fn from(err: StripeError) -> Self {
        Failure::Rejected(err)
    }
}

impl From<StoreError> for Failure {
    fn from(err: StoreError) -> Self {
        Failure::Storage(err)
    }
}

type Result<T> = std::result::Result<T, Failure>;

/// The time and a source of fresh ids (`ids("pi")` → `pi_...`).
pub struct Ctx<'a> {
    pub now: i64,
    pub ids: &'a mut dyn FnMut(&str) -> String,
}

/// The `/v1` routes the sandbox serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    CreatePaymentIntent,
    RetrievePaymentIntent(String),
    ConfirmPaymentIntent(String),
    CapturePaymentIntent(String),
    CancelPaymentIntent(String),
    RetrieveCharge(String),
    CreateRefund,
    RetrieveRefund(String),
    CreateTransfer,
    RetrieveTransfer(String),
}

impl Route {
    /// `segments` are the path segments after `/v1`.
    pub fn parse(method: &str, segments: &[&str]) -> Option<Route> {
        let id = |s: &str| s.to_string();
        Some(match (method, segments) {
            ("POST", ["payment_intents"]) => Route::CreatePaymentIntent,
            ("GET", ["payment_intents", pi]) => Route::RetrievePaymentIntent(id(pi)),
            ("POST", ["payment_intents", pi, "confirm"]) => Route::ConfirmPaymentIntent(id(pi)),
            ("POST", ["payment_intents", pi, "capture"]) => Route::CapturePaymentIntent(id(pi)),
            ("POST", ["payment_intents", pi, "cancel"]) => Route::CancelPaymentIntent(id(pi)),
            ("GET", ["charges", ch]) => Route::RetrieveCharge(id(ch)),
            ("POST", ["refunds"]) => Route::CreateRefund,
            ("GET", ["refunds", re]) => Route::RetrieveRefund(id(re)),
            ("POST", ["transfers"]) => Route::CreateTransfer,
            ("GET", ["transfers", tr]) => Route::RetrieveTransfer(id(tr)),
            _ => return None,
        })
    }
}

/// Runs one request.
pub fn execute(store: &mut dyn Store, ctx: &mut Ctx<'_>, route: &Route, params: Params) -> Result<Outcome> {
    match route {
        Route::CreatePaymentIntent => create_payment_intent(store, ctx, params),
        Route::RetrievePaymentIntent(id) => {
            params.finish()?;
            let pi = load_payment_intent(store, id, 404)?;
            Ok(ok(pi.to_json(), pi.purchase_id()))
        }
        Route::ConfirmPaymentIntent(id) => confirm_payment_intent(store, ctx, id, params),
        Route::CapturePaymentIntent(id) => capture(store, ctx, id, params),
        Route::CancelPaymentIntent(id) => cancel(store, ctx, id, params),
        Route::RetrieveCharge(id) => retrieve(store, id, "charge", params),
        Route::CreateRefund => refund(store, ctx, params),
        Route::RetrieveRefund(id) => retrieve(store, id, "refund", params),
        Route::CreateTransfer => transfer(store, ctx, params),
        Route::RetrieveTransfer(id) => retrieve(store, id, "transfer", params),
    }
}

fn ok(body: Value, purchase_id: Option<String>) -> Outcome {
    Outcome { status: 200, body, events: Vec::new(), purchase_id }
}

/// An executed request that ended in an error (stored and replayed).
fn failed(err: StripeError, purchase_id: Option<String>) -> Outcome {
    Outcome { status: err.status, body: err.body(), events: Vec::new(), purchase_id }
}

fn event(kind: &'static str, object: Value, purchase_id: &Option<String>) -> NewEvent {
    NewEvent { kind, object, purchase_id: purchase_id.clone() }
}

fn retrieve(store: &mut dyn Store, id: &str, kind: &str, params: Params) -> Result<Outcome> {
    params.finish()?;
    match store.get(id)? {
        Some(object) if object.kind() == kind => Ok(ok(object.to_json(), object.purchase_id())),
        _ => Err(StripeError::no_such(404, kind, id, "id").into()),
    }
}

/// `status` is 404 when the id came in the path, 400 when it was a body parameter.
fn load_payment_intent(store: &dyn Store, id: &str, status: u16) -> Result<PaymentIntent> {
    match store.get(id)? {
        Some(Object::PaymentIntent(pi)) => Ok(pi),
        _ => Err(StripeError::no_such(
            status,
            "payment_intent",
            id,
            if status == 404 { "intent" } else { "payment_intent" },
        )
        .into()),
    }
}

fn load_charge(store: &dyn Store, id: &str) -> Result<Charge> {
    match store.get(id)? {
        Some(Object::Charge(charge)) => Ok(charge),
        _ => Err(StripeError::no_such(400, "charge", id, "charge").into()),
    }
}

fn currency(params: &mut Params) -> Result<String> {
    let currency = params.require_str("currency")?.to_ascii_lowercase();
    if CURRENCIES.contains(&currency.as_str()) {
        Ok(currency)
    } else {
        Err(StripeError::invalid_request(format!(
            "Invalid currency: {currency}. The sandbox supports these currencies: {}.",
            CURRENCIES.join(", ")
        ))
        .param("currency")
        .into())
    }
}

/// What a test payment method does when confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Card {
    Approve,
    Decline { code: &'static str, decline_code: &'static str, message: &'static str },
}

/// Stripe's test PaymentMethods that the sandbox knows.
pub fn test_card(payment_method: &str) -> Option<Card> {
    let decline = |code, decline_code, message| Some(Card::Decline { code, decline_code, message });
    match payment_method {
        "pm_card_visa" | "pm_card_visa_debit" | "pm_card_mastercard" | "pm_card_amex" => Some(Card::Approve),
        "pm_card_chargeDeclined" => decline("card_declined", "generic_decline", "Your card was declined."),
        "pm_card_chargeDeclinedInsufficientFunds" => {
            decline("card_declined", "insufficient_funds", "Your card has insufficient funds.")
        }
        "pm_card_chargeDeclinedExpiredCard" => decline("expired_card", "expired_card", "Your card has expired."),
        _ => None,
    }
}

fn known_card(payment_method: &str) -> Result<Card> {
    test_card(payment_method)
        .ok_or_else(|| StripeError::no_such(400, "PaymentMethod", payment_method, "payment_method").into())
}

fn create_payment_intent(store: &mut dyn Store, ctx: &mut Ctx<'_>, mut p: Params) -> Result<Outcome> {
    let amount = p.require_amount("amount")?;
    let currency = currency(&mut p)?;
    let payment_method = p.take_nonempty("payment_method")?;
    let capture_method = p
        .take_enum("capture_method", &["automatic", "automatic_async", "manual"])?
        .unwrap_or_else(|| "automatic_async".into());
    let confirm = p.take_bool("confirm")?.unwrap_or(false);
    let transfer_group = p.take_nonempty("transfer_group")?;
    let metadata = p.take_metadata()?;
    let description = p.take_nonempty("description")?;
    let customer = p.take_nonempty("customer")?;
    p.finish()?;
    let card = payment_method.as_deref().map(known_card).transpose()?;
    if confirm && card.is_none() {
        return Err(StripeError::invalid_request(
            "You cannot confirm this PaymentIntent because it's missing a payment method. Pass `payment_method` when confirming.",
        )
        .code("parameter_missing")
        .param("payment_method")
        .into());
    }
    let id = (ctx.ids)("pi");
    let secret = (ctx.ids)("secret");
    let pi = PaymentIntent {
        client_secret: format!("{id}_{secret}"),
        id,
        created: ctx.now,
        amount,
        currency,
        capture_method,
        status: if payment_method.is_some() { PiStatus::RequiresConfirmation } else { PiStatus::RequiresPaymentMethod },
        amount_capturable: 0,
        amount_received: 0,
        payment_method,
        metadata,
        transfer_group,
        description,
        customer,
        latest_charge: None,
        canceled_at: None,
        cancellation_reason: None,
        last_payment_error: None,
        authorized: 0,
        voided: 0,
    };
    match card {
        Some(card) if confirm => run_confirmation(store, ctx, pi, card),
        _ => {
            store.put(&Object::PaymentIntent(pi.clone()))?;
            Ok(ok(pi.to_json(), pi.purchase_id()))
        }
    }
}

fn confirm_payment_intent(store: &mut dyn Store, ctx: &mut Ctx<'_>, id: &str, mut p: Params) -> Result<Outcome> {
    let payment_method = p.take_nonempty("payment_method")?;
    p.finish()?;
    let mut pi = load_payment_intent(store, id, 404)?;
    let purchase = pi.purchase_id();
    if !matches!(pi.status, PiStatus::RequiresPaymentMethod | PiStatus::RequiresConfirmation) {
        let message = format!(
            "You cannot confirm this PaymentIntent because it has a status of {}. Only a PaymentIntent with one of the following statuses may be confirmed: requires_confirmation, requires_payment_method.",
            pi.status.as_str()
        );
        return Ok(failed(StripeError::unexpected_state(message, pi.to_json()), purchase));
    }
    if let Some(pm) = payment_method {
        pi.payment_method = Some(pm);
    }
    let Some(pm) = pi.payment_method.clone() else {
        return Err(StripeError::invalid_request(
            "You cannot confirm this PaymentIntent because it's missing a payment method.",
        )
        .code("parameter_missing")
        .param("payment_method")
        .into());
    };
    let card = known_card(&pm)?;
    run_confirmation(store, ctx, pi, card)
}

/// Authorizes (manual capture) or charges (automatic capture) `pi`, or
/// records the decline.
fn run_confirmation(store: &mut dyn Store, ctx: &mut Ctx<'_>, mut pi: PaymentIntent, card: Card) -> Result<Outcome> {
    let purchase = pi.purchase_id();
    let charge_id = (ctx.ids)("ch");
    let automatic = pi.capture_method != "manual";
    let mut charge = Charge {
        id: charge_id.clone(),
        created: ctx.now,
        amount: pi.amount,
        currency: pi.currency.clone(),
        payment_intent: pi.id.clone(),
        payment_method: pi.payment_method.clone(),
        status: "succeeded".into(),
        captured: false,
        amount_captured: 0,
        amount_refunded: 0,
        failure_code: None,
        failure_message: None,
        decline_code: None,
        metadata: pi.metadata.clone(),
        transfer_group: pi.transfer_group.clone(),
        purchase_id: purchase.clone(),
    };
    pi.latest_charge = Some(charge_id.clone());
    match card {
        Card::Approve => {
            pi.authorized = pi.amount;
            pi.last_payment_error = None;
            let kind = if automatic {
                charge.captured = true;
                charge.amount_captured = pi.amount;
                pi.amount_received = pi.amount;
                pi.status = PiStatus::Succeeded;
                "payment_intent.succeeded"
            } else {
                pi.amount_capturable = pi.amount;
                pi.status = PiStatus::RequiresCapture;
                "payment_intent.amount_capturable_updated"
            };
            store.put(&Object::Charge(charge))?;
            store.put(&Object::PaymentIntent(pi.clone()))?;
            let body = pi.to_json();
            let mut outcome = ok(body.clone(), purchase.clone());
            outcome.events.push(event(kind, body, &purchase));
            Ok(outcome)
        }
        Card::Decline { code, decline_code, message } => {
            charge.status = "failed".into();
            charge.failure_code = Some(code.into());
            charge.failure_message = Some(message.into());
            charge.decline_code = Some(decline_code.into());
            let payment_method = pi.payment_method.take();
            pi.status = PiStatus::RequiresPaymentMethod;
            pi.last_payment_error = Some(json!({
                "charge": charge_id,
                "code": code,
                "decline_code": decline_code,
                "doc_url": format!("https://stripe.com/docs/error-codes/{}", code.replace('_', "-")),
                "message": message,
                "payment_method": {"id": payment_method, "object": "payment_method", "type": "card"},
                "type": "card_error",
            }));
            store.put(&Object::Charge(charge))?;
            store.put(&Object::PaymentIntent(pi.clone()))?;
            let body = pi.to_json();
            let mut err =
                StripeError::new(402, ErrorType::CardError, message).code(code).with_payment_intent(body.clone());
            err.decline_code = Some(decline_code);
            err.charge = Some(charge_id);
            let mut outcome = failed(err, purchase.clone());
            outcome.events.push(event("payment_intent.payment_failed", body, &purchase));
            Ok(outcome)
        }
    }
}

fn capture(store: &mut dyn Store, _ctx: &mut Ctx<'_>, id: &str, mut p: Params) -> Result<Outcome> {
    let amount_to_capture = p.take_amount("amount_to_capture")?;
    let metadata = p.take_metadata()?;
    p.finish()?;
    let mut pi = load_payment_intent(store, id, 404)?;
    let purchase = pi.purchase_id();
    if pi.status != PiStatus::RequiresCapture {
        let message = format!(
            "This PaymentIntent could not be captured because it has a status of {}. Only a PaymentIntent with one of the following statuses may be captured: requires_capture.",
            pi.status.as_str()
        );
        return Ok(failed(StripeError::unexpected_state(message, pi.to_json()), purchase));
    }
    let capturable = pi.amount_capturable;
    let amount = amount_to_capture.unwrap_or(capturable);
    if amount > capturable {
        let err = StripeError::invalid_request(format!(
            "The amount to capture ({amount}) must be less than or equal to the PaymentIntent's amount_capturable ({capturable})."
        ))
        .code("amount_too_large")
        .param("amount_to_capture");
        return Ok(failed(err, purchase));
    }
    let charge_id = pi.latest_charge.clone().unwrap_or_default();
    let mut charge = load_charge(store, &charge_id)
        .map_err(|_| Failure::Storage(StoreError(format!("charge {charge_id} of {id} is missing"))))?;
    charge.captured = true;
    charge.amount_captured = amount;
    pi.metadata.extend(metadata);
    charge.metadata = pi.metadata.clone();
    pi.amount_received = amount;
    pi.voided += capturable - amount;
    pi.amount_capturable = 0;
    pi.status = PiStatus::Succeeded;
    store.put(&Object::Charge(charge))?;
    store.put(&Object::PaymentIntent(pi.clone()))?;
    let body = pi.to_json();
    let mut outcome = ok(body.clone(), purchase.clone());
    outcome.events.push(event("payment_intent.succeeded", body, &purchase));
    Ok(outcome)
}

fn cancel(store: &mut dyn Store, ctx: &mut Ctx<'_>, id: &str, mut p: Params) -> Result<Outcome> {
    let reason =
        p.take_enum("cancellation_reason", &["duplicate", "fraudulent", "requested_by_customer", "abandoned"])?;
    p.finish()?;
    let mut pi = load_payment_intent(store, id, 404)?;
    let purchase = pi.purchase_id();
    if !matches!(
        pi.status,
        PiStatus::RequiresPaymentMethod | PiStatus::RequiresConfirmation | PiStatus::RequiresCapture
    ) {
        let message = format!(
            "You cannot cancel this PaymentIntent because it has a status of {}. Only a PaymentIntent with one of the following statuses may be canceled: requires_payment_method, requires_capture, requires_confirmation, requires_action, processing.",
            pi.status.as_str()
        );
        return Ok(failed(StripeError::unexpected_state(message, pi.to_json()), purchase));
    }
    pi.voided += pi.amount_capturable;
    pi.amount_capturable = 0;
    pi.status = PiStatus::Canceled;
    pi.canceled_at = Some(ctx.now);
    pi.cancellation_reason = reason;
    store.put(&Object::PaymentIntent(pi.clone()))?;
    let body = pi.to_json();
    let mut outcome = ok(body.clone(), purchase.clone());
    outcome.events.push(event("payment_intent.canceled", body, &purchase));
    Ok(outcome)
}

fn refund(store: &mut dyn Store, ctx: &mut Ctx<'_>, mut p: Params) -> Result<Outcome> {
    let payment_intent = p.take_nonempty("payment_intent")?;
    let charge_param = p.take_nonempty("charge")?;
    let amount = p.take_amount("amount")?;
    let metadata = p.take_metadata()?;
    let reason = p.take_enum("reason", &["duplicate", "fraudulent", "requested_by_customer"])?;
    p.finish()?;
    let pi = match (payment_intent, charge_param) {
        (Some(pi), None) => load_payment_intent(store, &pi, 400)?,
        (None, Some(charge)) => {
            let charge = load_charge(store, &charge)?;
            load_payment_intent(store, &charge.payment_intent, 400)?
        }
        (Some(_), Some(_)) => {
            return Err(StripeError::invalid_request(
                "You may only specify one of these parameters: charge, payment_intent.",
            )
            .code("parameters_exclusive")
            .param("charge")
            .into())
        }
        (None, None) => {
            return Err(StripeError::invalid_request(
                "One of the following params should be provided for this request: payment_intent or charge.",
            )
            .code("parameter_missing")
            .param("payment_intent")
            .into())
        }
    };
    let purchase = metadata.get("purchase_id").cloned().or_else(|| pi.purchase_id());
    let charge = match (&pi.status, &pi.latest_charge) {
        (PiStatus::Succeeded, Some(charge_id)) => load_charge(store, charge_id)?,
        _ => {
            let message = format!(
                "This PaymentIntent ({}) does not have a successful charge to refund (its status is {}).",
                pi.id,
                pi.status.as_str()
            );
            return Ok(failed(StripeError::unexpected_state(message, pi.to_json()).param("payment_intent"), purchase));
        }
    };
    let remaining = charge.amount_captured - charge.amount_refunded;
    if remaining <= 0 {
        let err = StripeError::invalid_request(format!("Charge {} has already been refunded.", charge.id))
            .code("charge_already_refunded")
            .param("charge");
        return Ok(failed(err, purchase));
    }
    let amount = amount.unwrap_or(remaining);
    if amount > remaining {
        let err = StripeError::invalid_request(format!(
            "Refund amount ({amount} {}) is greater than unrefunded amount on charge ({remaining} {}).",
            charge.currency, charge.currency
        ))
        .code("amount_too_large")
        .param("amount");
        return Ok(failed(err, purchase));
    }
    let refund = Refund {
        id: (ctx.ids)("re"),
        created: ctx.now,
        amount,
        currency: charge.currency.clone(),
        charge: charge.id.clone(),
        payment_intent: pi.id.clone(),
        metadata,
        reason,
        purchase_id: purchase.clone(),
    };
    let mut charge = charge;
    charge.amount_refunded += amount;
    store.put(&Object::Refund(refund.clone()))?;
    store.put(&Object::Charge(charge.clone()))?;
    let mut outcome = ok(refund.to_json(), purchase.clone());
    outcome.events.push(event("charge.refunded", charge.to_json(), &purchase));
    Ok(outcome)
}

/// `acct_` followed by letters, digits or underscores.
fn valid_account(destination: &str) -> bool {
    destination.strip_prefix("acct_").is_some_and(|rest| {
        !rest.is_empty() && rest.len() <= 64 && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    })
}

/// What may still be transferred: captured minus refunded minus already
/// transferred, over `objects`, in `currency`.
pub fn available_balance(objects: &[Object], currency: &str) -> i64 {
    objects
        .iter()
        .map(|o| match o {
            Object::Charge(c) if c.currency == currency => c.amount_captured - c.amount_refunded,
            Object::Transfer(t) if t.currency == currency => -t.amount,
            _ => 0,
        })
        .sum()
}

fn transfer(store: &mut dyn Store, ctx: &mut Ctx<'_>, mut p: Params) -> Result<Outcome> {
    let amount = p.require_amount("amount")?;
    let currency = currency(&mut p)?;
    let destination = p.require_str("destination")?;
    let transfer_group = p.take_nonempty("transfer_group")?;
    let metadata = p.take_metadata()?;
    let description = p.take_nonempty("description")?;
    p.finish()?;
    if !valid_account(&destination) {
        return Err(StripeError::no_such(400, "destination", &destination, "destination").into());
    }
    let purchase = metadata.get("purchase_id").cloned().or_else(|| transfer_group.clone());
    let (scope, available) = match &transfer_group {
        Some(group) => {
            (format!("transfer group {group}"), available_balance(&store.in_transfer_group(group)?, &currency))
        }
        None => ("the account balance".to_string(), available_balance(&store.all()?, &currency)),
    };
    if amount > available {
        let err = StripeError::invalid_request(format!(
            "Insufficient funds in {scope}: {available} {currency} available (captured minus refunded minus already transferred), {amount} requested."
        ))
        .code("balance_insufficient")
        .param("amount");
        return Ok(failed(err, purchase));
    }
    let transfer = Transfer {
        id: (ctx.ids)("tr"),
        created: ctx.now,
        amount,
        currency,
        destination,
        destination_payment: (ctx.ids)("py"),
        transfer_group,
        description,
        metadata,
        purchase_id: purchase.clone(),
    };
    store.put(&Object::Transfer(transfer.clone()))?;
    let body = transfer.to_json();
    let mut outcome = ok(body.clone(), purchase.clone());
    outcome.events.push(event("transfer.created", body, &purchase));
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::form::decode;
    use crate::store::MemStore;

    struct World {
        store: MemStore,
        next: u32,
    }

    impl World {
        fn new() -> Self {
            World { store: MemStore::default(), next: 0 }
        }

        fn call(&mut self, method: &str, path: &str, body: &str) -> std::result::Result<Outcome, StripeError> {
            let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).skip(1).collect();
            let route = Route::parse(method, &segments).expect("route");
            let mut counter = self.next;
            let mut ids = |prefix: &str| {
                counter += 1;
                format!("{prefix}_{counter}")
            };
            let mut ctx = Ctx { now: 1_700_000_000, ids: &mut ids };
            let result = execute(&mut self.store, &mut ctx, &route, decode(body.as_bytes()).expect("form"));
            self.next = counter;
            result.map_err(|f| match f {
                Failure::Rejected(e) => e,
                Failure::Storage(e) => panic!("storage: {e:?}"),
            })
        }

        fn hold(&mut self, amount: i64, purchase: &str) -> String {
            let body = format!("amount={amount}&currency=eur&payment_method=pm_card_visa&capture_method=manual&confirm=true&transfer_group={purchase}&metadata[purchase_id]={purchase}");
            let out = self.call("POST", "/v1/payment_intents", &body).unwrap();
            assert_eq!(out.status, 200, "{}", out.body);
            out.body["id"].as_str().unwrap().to_string()
        }
    }

    #[test]
    fn a_visa_hold_requires_capture_then_captures() {
        let mut w = World::new();
        let body = "amount=12000&currency=eur&payment_method=pm_card_visa&capture_method=manual&confirm=true&transfer_group=pur_1&metadata[purchase_id]=pur_1";
        let out = w.call("POST", "/v1/payment_intents", body).unwrap();
        assert_eq!(out.status, 200);
        assert_eq!(out.body["status"], "requires_capture");
        assert_eq!(out.body["amount_capturable"], 12000);
        assert!(out.body["latest_charge"].as_str().unwrap().starts_with("ch_"));
        assert_eq!(out.events.len(), 1);
        assert_eq!(out.events[0].kind, "payment_intent.amount_capturable_updated");
        assert_eq!(out.purchase_id.as_deref(), Some("pur_1"));
        let id = out.body["id"].as_str().unwrap().to_string();
        let out = w.call("POST", &format!("/v1/payment_intents/{id}/capture"), "amount_to_capture=10000").unwrap();
        assert_eq!(
            (out.status, &out.body["status"], &out.body["amount_received"]),
            (200, &json!("succeeded"), &json!(10000))
        );
        assert_eq!(out.events[0].kind, "payment_intent.succeeded");
        let Some(Object::PaymentIntent(pi)) = w.store.get(&id).unwrap() else { panic!() };
        assert_eq!((pi.authorized, pi.voided, pi.amount_capturable), (12000, 2000, 0));
        // A second capture is in the wrong state, with the PI inside the error.
        let out = w.call("POST", &format!("/v1/payment_intents/{id}/capture"), "").unwrap();
        assert_eq!(out.status, 400);
        assert_eq!(out.body["error"]["code"], "payment_intent_unexpected_state");
        assert_eq!(out.body["error"]["payment_intent"]["id"], json!(id));
    }

    #[test]
    fn a_declined_card_is_a_stored_402_with_the_payment_intent() {
        let mut w = World::new();
        let out = w
            .call(
                "POST",
                "/v1/payment_intents",
                "amount=500&currency=usd&payment_method=pm_card_chargeDeclined&capture_method=manual&confirm=true",
            )
            .unwrap();
        assert_eq!(out.status, 402);
        let err = &out.body["error"];
        assert_eq!(
            (err["type"].as_str(), err["code"].as_str(), err["decline_code"].as_str()),
            (Some("card_error"), Some("card_declined"), Some("generic_decline"))
        );
        assert_eq!(err["message"], "Your card was declined.");
        assert_eq!(err["payment_intent"]["status"], "requires_payment_method");
        assert_eq!(out.events[0].kind, "payment_intent.payment_failed");
    }

    #[test]
    fn validation_errors_are_rejected_before_execution() {
        let mut w = World::new();
        let cases = [
            ("currency=eur", "parameter_missing", "amount"),
            ("amount=abc&currency=eur", "parameter_invalid_integer", "amount"),
            ("amount=0&currency=eur", "parameter_invalid_integer", "amount"),
            ("amount=100&currency=xyz", "", "currency"),
            ("amount=100&currency=eur&payment_method=pm_card_unknown", "resource_missing", "payment_method"),
            ("amount=100&currency=eur&colour=red", "parameter_unknown", "colour"),
            ("amount=100&currency=eur&capture_method=later", "", "capture_method"),
        ];
        for (body, code, param) in cases {
            let err = w.call("POST", "/v1/payment_intents", body).unwrap_err();
            assert_eq!(err.status, 400, "{body}");
            assert_eq!(err.code.unwrap_or(""), code, "{body}");
            assert_eq!(err.param.as_deref(), Some(param), "{body}");
        }
        assert!(w.store.objects.is_empty());
    }

    #[test]
    fn cancel_voids_the_hold_once() {
        let mut w = World::new();
        let id = w.hold(3000, "pur_c");
        let out = w
            .call("POST", &format!("/v1/payment_intents/{id}/cancel"), "cancellation_reason=requested_by_customer")
            .unwrap();
        assert_eq!((out.status, out.body["status"].as_str()), (200, Some("canceled")));
        assert_eq!(out.events[0].kind, "payment_intent.canceled");
        let again = w.call("POST", &format!("/v1/payment_intents/{id}/cancel"), "").unwrap();
        assert_eq!(again.status, 400);
        assert_eq!(again.body["error"]["code"], "payment_intent_unexpected_state");
        assert_eq!(again.body["error"]["payment_intent"]["status"], "canceled");
        let Some(Object::PaymentIntent(pi)) = w.store.get(&id).unwrap() else { panic!() };
        assert_eq!(pi.voided, 3000);
    }

    #[test]
    fn refunds_never_exceed_what_was_captured() {
        let mut w = World::new();
        let id = w.hold(5000, "pur_r");
        let uncaptured = w.call("POST", "/v1/refunds", &format!("payment_intent={id}")).unwrap();
        assert_eq!(uncaptured.status, 400);
        w.call("POST", &format!("/v1/payment_intents/{id}/capture"), "").unwrap();
        let first = w
            .call("POST", "/v1/refunds", &format!("payment_intent={id}&amount=2000&metadata[purchase_id]=pur_r"))
            .unwrap();
        assert_eq!(
            (first.status, first.body["object"].as_str(), first.body["amount"].as_i64()),
            (200, Some("refund"), Some(2000))
        );
        let charge = &first.events[0];
        assert_eq!(charge.kind, "charge.refunded");
        assert_eq!(charge.object["object"], "charge");
        assert_eq!(charge.object["amount_refunded"], 2000);
        assert_eq!(charge.object["refunded"], false);
        assert_eq!(charge.object["metadata"]["purchase_id"], "pur_r");
        let too_much = w.call("POST", "/v1/refunds", &format!("payment_intent={id}&amount=3001")).unwrap();
        assert_eq!(too_much.body["error"]["code"], "amount_too_large");
        let rest = w.call("POST", "/v1/refunds", &format!("payment_intent={id}")).unwrap();
        assert_eq!(rest.body["amount"], 3000);
        assert_eq!(rest.events[0].object["refunded"], true);
        let done = w.call("POST", "/v1/refunds", &format!("payment_intent={id}&amount=1")).unwrap();
        assert_eq!(done.body["error"]["code"], "charge_already_refunded");
    }

    #[test]
    fn transfers_are_bounded_by_the_groups_net_capture() {
        let mut w = World::new();
        let id = w.hold(10000, "pur_t");
        let early =
            w.call("POST", "/v1/transfers", "amount=1&currency=eur&destination=acct_1&transfer_group=pur_t").unwrap();
        assert_eq!(early.body["error"]["code"], "balance_insufficient");
        w.call("POST", &format!("/v1/payment_intents/{id}/capture"), "").unwrap();
        w.call("POST", "/v1/refunds", &format!("payment_intent={id}&amount=1000")).unwrap();
        let t1 = w
            .call("POST", "/v1/transfers", "amount=8000&currency=eur&destination=acct_seller&transfer_group=pur_t")
            .unwrap();
        assert_eq!((t1.status, t1.body["object"].as_str()), (200, Some("transfer")));
        assert_eq!(t1.events[0].kind, "transfer.created");
        let t2 = w
            .call("POST", "/v1/transfers", "amount=1001&currency=eur&destination=acct_seller&transfer_group=pur_t")
            .unwrap();
        assert_eq!(t2.body["error"]["code"], "balance_insufficient");
        let other_currency = w
            .call("POST", "/v1/transfers", "amount=1&currency=usd&destination=acct_seller&transfer_group=pur_t")
            .unwrap();
        assert_eq!(other_currency.body["error"]["code"], "balance_insufficient");
        let t3 = w
            .call("POST", "/v1/transfers", "amount=1000&currency=eur&destination=acct_seller&transfer_group=pur_t")
            .unwrap();
        assert_eq!(t3.status, 200);
        let bad = w.call("POST", "/v1/transfers", "amount=1&currency=eur&destination=bank_1").unwrap_err();
        assert_eq!(bad.code, Some("resource_missing"));
    }

    #[test]
    fn unknown_ids_are_404_in_the_path_and_400_in_the_body() {
        let mut w = World::new();
        let err = w.call("GET", "/v1/payment_intents/pi_nope", "").unwrap_err();
        assert_eq!((err.status, err.code), (404, Some("resource_missing")));
        let err = w.call("POST", "/v1/refunds", "payment_intent=pi_nope").unwrap_err();
        assert_eq!((err.status, err.code), (400, Some("resource_missing")));
        let id = w.hold(100, "pur_x");
        assert!(w.call("GET", &format!("/v1/refunds/{id}"), "").is_err(), "a PI is not a refund");
    }

    #[test]
    fn automatic_capture_succeeds_at_once_and_confirm_later_works() {
        let mut w = World::new();
        let out = w
            .call("POST", "/v1/payment_intents", "amount=700&currency=gbp&payment_method=pm_card_visa&confirm=true")
            .unwrap();
        assert_eq!((out.body["status"].as_str(), out.body["amount_received"].as_i64()), (Some("succeeded"), Some(700)));
        let out = w.call("POST", "/v1/payment_intents", "amount=700&currency=gbp&capture_method=manual").unwrap();
        assert_eq!(out.body["status"], "requires_payment_method");
        let id = out.body["id"].as_str().unwrap().to_string();
        let out =
            w.call("POST", &format!("/v1/payment_intents/{id}/confirm"), "payment_method=pm_card_mastercard").unwrap();
        assert_eq!(out.body["status"], "requires_capture");
    }
}
