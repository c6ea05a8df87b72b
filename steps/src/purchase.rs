//! The purchase saga: definition, typed inputs and effects, and the HTTP-facing view.

use crate::money::{Currency, Money, MoneyError};
use orchestrator::{
    ActionDef, ActionKind, Definition, DefinitionError, EffectId, Event, EventRule, Ignored, Input, InputLabel, Millis,
    OperatorCommand, Outcome, Position, Reaction, Rejection, Resolution, RetryPolicy, SagaState, StateError, Status,
    StepDef, StepPhase, Timestamp, WaitDef,
};
use serde::{Deserialize, Serialize};

/// Step names, in order. Indices are stable for this schema version.
pub mod step {
    pub const RESERVE_LISTING: &str = "reserve_listing";
    pub const HOLD_FUNDS: &str = "hold_funds";
    pub const CONFIRM_DELIVERY: &str = "confirm_delivery";
    pub const CAPTURE_FUNDS: &str = "capture_funds";
    pub const RELEASE_FUNDS: &str = "release_funds";
    pub const MARK_SOLD: &str = "mark_sold";
    pub(crate) const RESERVE: u16 = 0;
    pub(crate) const HOLD: u16 = 1;
    pub(crate) const CONFIRM: u16 = 2;
    pub(crate) const CAPTURE: u16 = 3;
    pub(crate) const RELEASE: u16 = 4;
}

/// Event kinds as the engine routes them (Stripe's names verbatim, plus
/// buyer commands).
pub mod event {
    pub const HOLD_SUCCEEDED: &str = "payment_intent.amount_capturable_updated";
    pub const PAYMENT_FAILED: &str = "payment_intent.payment_failed";
    pub const CAPTURED: &str = "payment_intent.succeeded";
    pub const CANCELED: &str = "payment_intent.canceled";
    pub const REFUNDED: &str = "charge.refunded";
    pub const TRANSFER_CREATED: &str = "transfer.created";
    pub const BUYER_CONFIRMED: &str = "buyer.delivery_confirmed";
    pub const BUYER_DISPUTED: &str = "buyer.dispute_opened";
}

/// Every deadline and policy of the purchase saga. `Default` is production;
/// the shell loads overrides from wrangler vars, tests use seconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PurchaseConfig {
    /// Buyer's inspection window after delivery starts; then funds auto-release.
    pub inspection_window: Millis,
    /// How long the provider keeps an authorization (Stripe: about 7 days).
    pub hold_lifetime: Millis,
    /// Capture this long before the hold would lapse.
    pub hold_safety_margin: Millis,
    /// Platform fee in basis points (1000 = 10 %).
    pub fee_bps: u32,
    /// Timeout of one HTTP call to the marketplace or Stripe.
    pub call_timeout: Millis,
    pub marketplace_retry: RetryPolicy,
    pub payment_retry: RetryPolicy,
    pub compensation_retry: RetryPolicy,
}

impl Default for PurchaseConfig {
    fn default() -> Self {
        PurchaseConfig {
            inspection_window: Millis::days(3),
            hold_lifetime: Millis::days(7),
            hold_safety_margin: Millis::days(1),
            fee_bps: 1_000,
            call_timeout: Millis::seconds(30),
            marketplace_retry: RetryPolicy {
                max_attempts: 8,
                initial_delay: Millis::seconds(1),
                multiplier: 2.0,
                max_delay: Millis::minutes(5),
                jitter: 0.2,
            },
            payment_retry: RetryPolicy {
                max_attempts: 6,
                initial_delay: Millis::seconds(2),
                multiplier: 2.0,
                max_delay: Millis::minutes(10),
                jitter: 0.2,
            },
            compensation_retry: RetryPolicy {
                max_attempts: 10,
                initial_delay: Millis::seconds(5),
                multiplier: 2.0,
                max_delay: Millis::hours(1),
                jitter: 0.2,
            },
        }
    }
}

/// The states the HTTP API shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PurchaseState {
    Reserving,
    HoldingFunds,
    AwaitingDelivery,
    Disputed,
    Releasing,
    Completed,
    Compensating,
    /// Money was held and went back to the buyer.
    Refunded,
    /// Ended before any money was taken.
    Cancelled,
    NeedsAttention,
}

impl PurchaseState {
    pub fn is_finished(self) -> bool {
        matches!(self, PurchaseState::Completed | PurchaseState::Refunded | PurchaseState::Cancelled)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            PurchaseState::Reserving => "reserving",
            PurchaseState::HoldingFunds => "holding_funds",
            PurchaseState::AwaitingDelivery => "awaiting_delivery",
            PurchaseState::Disputed => "disputed",
            PurchaseState::Releasing => "releasing",
            PurchaseState::Completed => "completed",
            PurchaseState::Compensating => "compensating",
            PurchaseState::Refunded => "refunded",
            PurchaseState::Cancelled => "cancelled",
            PurchaseState::NeedsAttention => "needs_attention",
        }
    }
}

/// What the buyer asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRequest {
    pub purchase_id: String,
    pub listing_id: String,
    pub units: u32,
    pub buyer_id: String,
    /// The seller's Connect account (`acct_...`).
    pub seller_account: String,
    pub total: Money,
}

/// The order as persisted next to the saga state; the split is computed once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub purchase_id: String,
    pub listing_id: String,
    pub units: u32,
    pub buyer_id: String,
    pub seller_account: String,
    pub total: Money,
    pub fee: Money,
    pub payout: Money,
}

/// One purchase: what the Durable Object persists.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Purchase {
    pub order: Order,
    pub saga: SagaState,
    /// Request ids of buyer cancellations already applied (a cancel becomes
    /// an engine command, which carries no id of its own), so a client that
    /// retries a cancel whose answer it lost gets the first answer again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cancel_requests: Vec<String>,
}

/// How many cancel request ids a purchase remembers.
const CANCEL_REQUESTS_LIMIT: usize = 16;

/// Stripe webhook types the saga understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StripeEventKind {
    #[serde(rename = "payment_intent.amount_capturable_updated")]
    AmountCapturableUpdated,
    #[serde(rename = "payment_intent.payment_failed")]
    PaymentFailed,
    #[serde(rename = "payment_intent.succeeded")]
    Succeeded,
    #[serde(rename = "payment_intent.canceled")]
    Canceled,
    #[serde(rename = "charge.refunded")]
    ChargeRefunded,
    #[serde(rename = "transfer.created")]
    TransferCreated,
}

impl StripeEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StripeEventKind::AmountCapturableUpdated => event::HOLD_SUCCEEDED,
            StripeEventKind::PaymentFailed => event::PAYMENT_FAILED,
            StripeEventKind::Succeeded => event::CAPTURED,
            StripeEventKind::Canceled => event::CANCELED,
            StripeEventKind::ChargeRefunded => event::REFUNDED,
            StripeEventKind::TransferCreated => event::TRANSFER_CREATED,
        }
    }
}

/// A verified Stripe webhook.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StripeEvent {
    /// `evt_...`: the de-duplication key.
    pub id: String,
    pub kind: StripeEventKind,
    /// The object's id (`pi_...`, `tr_...`).
    pub object_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum BuyerCommand {
    ConfirmDelivery { request_id: String },
    Dispute { request_id: String },
    Cancel { request_id: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisputeOutcome {
    Release,
    Refund,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum PurchaseOperatorCommand {
    RetryNow,
    /// Force compensation; refused after the pivot.
    Refund,
    ResolveDispute {
        outcome: DisputeOutcome,
    },
}

/// Everything the shell feeds in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PurchaseInput {
    EffectSucceeded {
        effect: EffectId,
        output: Option<String>,
    },
    EffectFailed {
        effect: EffectId,
        retryable: bool,
        error: String,
    },
    /// The call may or may not have taken effect (a 5xx, a dropped
    /// connection): retried under the same key, never assumed undone.
    EffectOutcomeUnknown {
        effect: EffectId,
        error: String,
    },
    Stripe(StripeEvent),
    Buyer(BuyerCommand),
    Operator(PurchaseOperatorCommand),
    Timer,
    /// After a restart from persisted state: re-perform the returned effects.
    Resume,
}

/// The concrete call behind an effect.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case")]
pub enum Call {
    /// Marketplace: reserve units, idempotent by purchase id.
    ReserveListing {
        listing_id: String,
        units: u32,
        purchase_id: String,
    },
    ReleaseListing {
        listing_id: String,
        units: u32,
        purchase_id: String,
    },
    MarkListingSold {
        listing_id: String,
        units: u32,
        purchase_id: String,
    },
    /// Stripe: PaymentIntent with `capture_method=manual` (the hold).
    CreatePaymentIntent {
        amount_minor: i64,
        currency: Currency,
        customer: String,
    },
    CapturePaymentIntent {
        payment_intent: String,
        amount_minor: i64,
    },
    /// Void the hold.
    CancelPaymentIntent {
        payment_intent: String,
    },
    /// Full refund of a captured PaymentIntent.
    RefundPaymentIntent {
        payment_intent: String,
        amount_minor: i64,
    },
    /// Connect transfer of the payout to the seller.
    TransferToSeller {
        destination: String,
        amount_minor: i64,
        currency: Currency,
    },
}

/// An effect to perform under `idempotency_key`; report it back quoting `id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurchaseEffect {
    pub id: EffectId,
    pub idempotency_key: String,
    pub call: Call,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PurchaseTransition {
    pub outcome: Outcome,
    pub state: PurchaseState,
    pub effects: Vec<PurchaseEffect>,
    /// Set the Durable Object alarm here; `None` clears it.
    pub wake_at: Option<Timestamp>,
}

/// Per-step view for operators.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepView {
    pub name: String,
    pub status: StepPhase,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub next_attempt_at: Option<Timestamp>,
    pub compensation_attempts: u32,
    pub compensation_last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PurchaseError {
    /// Map to HTTP 409 `invalid_state`.
    #[error("`{command}` is not allowed while the purchase is {}", state.as_str())]
    InvalidState { state: PurchaseState, command: &'static str },
    /// Map to HTTP 409 `invalid_state`: money may already be with the seller.
    #[error("funds were released to the seller; the purchase can only go forward")]
    PastPivot,
    #[error(transparent)]
    Engine(Rejection),
    #[error(transparent)]
    Money(#[from] MoneyError),
    #[error("invalid order: {0}")]
    InvalidOrder(&'static str),
    #[error("invalid config: {0}")]
    Config(&'static str),
    #[error(transparent)]
    Definition(#[from] DefinitionError),
    #[error("stored purchase: {0}")]
    Stored(String),
}

impl PurchaseError {
    /// The HTTP status the edge should answer with.
    pub fn http_status(&self) -> u16 {
        match self {
            PurchaseError::InvalidState { .. } | PurchaseError::PastPivot => 409,
            PurchaseError::Engine(Rejection::InvalidState { .. } | Rejection::NothingToRetry) => 409,
            PurchaseError::Engine(Rejection::PastPivot { .. }) => 409,
            PurchaseError::Money(_) | PurchaseError::InvalidOrder(_) => 422,
            _ => 500,
        }
    }
    /// The machine-readable error code.
    pub fn code(&self) -> &'static str {
        match self.http_status() {
            409 => "invalid_state",
            422 => "invalid_request",
            _ => "internal",
        }
    }
}

impl From<Rejection> for PurchaseError {
    fn from(r: Rejection) -> Self {
        match r {
            Rejection::PastPivot { .. } => PurchaseError::PastPivot,
            r => PurchaseError::Engine(r),
        }
    }
}

impl From<StateError> for PurchaseError {
    fn from(e: StateError) -> Self {
        PurchaseError::Stored(e.to_string())
    }
}

/// Deliberate defects for showing that the simulator's invariants catch bugs.
/// Never use outside tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sabotage {
    /// Reserving the listing has no compensation: units leak on failure.
    SkipReleaseListing,
}

/// The purchase saga, built once per config and shared.
#[derive(Clone, Debug)]
pub struct PurchaseSaga {
    def: Definition,
    config: PurchaseConfig,
}

impl PurchaseSaga {
    pub fn new(config: PurchaseConfig) -> Result<Self, PurchaseError> {
        Self::build(config, None)
    }

    /// A saga with a deliberate defect (see [`Sabotage`]).
    pub fn sabotaged(config: PurchaseConfig, sabotage: Sabotage) -> Result<Self, PurchaseError> {
        Self::build(config, Some(sabotage))
    }

    fn build(config: PurchaseConfig, sabotage: Option<Sabotage>) -> Result<Self, PurchaseError> {
        if config.hold_safety_margin >= config.hold_lifetime {
            return Err(PurchaseError::Config("hold_safety_margin must be shorter than hold_lifetime"));
        }
        if config.fee_bps > 10_000 {
            return Err(PurchaseError::Config("fee_bps above 10000"));
        }
        let t = config.call_timeout;
        let market = |name| ActionDef { name, retry: config.marketplace_retry, timeout: t };
        let pay = |name| ActionDef { name, retry: config.payment_retry, timeout: t };
        let undo = |name| ActionDef { name, retry: config.compensation_retry, timeout: t };
        let mut reserve = StepDef::action(step::RESERVE_LISTING, market("reserve"));
        if sabotage != Some(Sabotage::SkipReleaseListing) {
            reserve = reserve.compensate(undo("release"));
        }
        let capture_by = Millis(config.hold_lifetime.0 - config.hold_safety_margin.0);
        let steps = vec![
            reserve,
            // Voiding is superseded once captured: the capture's refund undoes it.
            StepDef::action(step::HOLD_FUNDS, pay("authorize"))
                .compensate(undo("void"))
                .superseded_by(step::CAPTURE_FUNDS),
            StepDef::wait(
                step::CONFIRM_DELIVERY,
                WaitDef { deadline: Some(config.inspection_window), on_deadline: Resolution::Succeeded },
            ),
            // Captured at release time, or earlier if the hold would lapse first.
            StepDef::action(step::CAPTURE_FUNDS, pay("capture"))
                .compensate(undo("refund"))
                .start_by(step::HOLD_FUNDS, capture_by),
            StepDef::action(step::RELEASE_FUNDS, pay("transfer")).pivot(),
            StepDef::action(step::MARK_SOLD, market("mark_sold")),
        ];
        let rule = |kind, step, reaction| EventRule { kind, step, reaction };
        let rules = vec![
            rule(event::HOLD_SUCCEEDED, step::HOLD_FUNDS, Reaction::ForwardSucceeded),
            rule(event::PAYMENT_FAILED, step::HOLD_FUNDS, Reaction::ForwardFailed),
            rule(event::CANCELED, step::HOLD_FUNDS, Reaction::CompensationSucceeded),
            rule(event::CAPTURED, step::CAPTURE_FUNDS, Reaction::ForwardSucceeded),
            rule(event::REFUNDED, step::CAPTURE_FUNDS, Reaction::CompensationSucceeded),
            rule(event::TRANSFER_CREATED, step::RELEASE_FUNDS, Reaction::ForwardSucceeded),
            rule(event::BUYER_CONFIRMED, step::CONFIRM_DELIVERY, Reaction::WaitSucceeded),
            rule(event::BUYER_DISPUTED, step::CONFIRM_DELIVERY, Reaction::Freeze),
        ];
        let def = Definition::new("purchase", steps, rules)?;
        Ok(PurchaseSaga { def, config })
    }

    pub fn definition(&self) -> &Definition {
        &self.def
    }
    pub fn config(&self) -> &PurchaseConfig {
        &self.config
    }

    /// Validates the order, computes the fee split once, and starts the saga.
    pub fn start(
        &self,
        req: OrderRequest,
        now: Timestamp,
        jitter_seed: u64,
    ) -> Result<(Purchase, PurchaseTransition), PurchaseError> {
        if req.units == 0 {
            return Err(PurchaseError::InvalidOrder("units must be positive"));
        }
        if req.total.value().is_zero() {
            return Err(PurchaseError::InvalidOrder("total must be positive"));
        }
        if req.purchase_id.is_empty() || req.purchase_id.contains(':') {
            return Err(PurchaseError::InvalidOrder("purchase_id must be non-empty, without ':'"));
        }
        req.total.to_minor()?;
        let split = req.total.split_fee(self.config.fee_bps)?;
        let order = Order {
            purchase_id: req.purchase_id,
            listing_id: req.listing_id,
            units: req.units,
            buyer_id: req.buyer_id,
            seller_account: req.seller_account,
            total: split.total,
            fee: split.fee,
            payout: split.payout,
        };
        let mut p = Purchase { saga: self.def.new_saga(order.purchase_id.clone()), order, cancel_requests: Vec::new() };
        let tr = self.engine(&mut p, now, Input::Start { jitter_seed })?;
        Ok((p, tr))
    }

    /// Loads a persisted purchase (any older schema version) and checks it
    /// belongs to this definition.
    pub fn load(&self, json: &str) -> Result<Purchase, PurchaseError> {
        let v: serde_json::Value = serde_json::from_str(json).map_err(|e| PurchaseError::Stored(e.to_string()))?;
        let order: Order = serde_json::from_value(v.get("order").cloned().unwrap_or_default())
            .map_err(|e| PurchaseError::Stored(e.to_string()))?;
        let saga_json = v.get("saga").map(|s| s.to_string()).unwrap_or_default();
        let saga = SagaState::from_json(&saga_json)?;
        self.def.check(&saga)?;
        let cancel_requests =
            serde_json::from_value(v.get("cancel_requests").cloned().unwrap_or_default()).unwrap_or_default();
        Ok(Purchase { order, saga, cancel_requests })
    }

    pub fn handle(
        &self,
        p: &mut Purchase,
        now: Timestamp,
        input: PurchaseInput,
    ) -> Result<PurchaseTransition, PurchaseError> {
        let engine_input = match input {
            PurchaseInput::EffectSucceeded { effect, output } => Input::Succeeded { effect, output },
            PurchaseInput::EffectFailed { effect, retryable, error } => Input::Failed { effect, retryable, error },
            PurchaseInput::EffectOutcomeUnknown { effect, error } => Input::OutcomeUnknown { effect, error },
            PurchaseInput::Stripe(e) => {
                Input::Event(Event { id: e.id, kind: e.kind.as_str().to_string(), output: e.object_id })
            }
            PurchaseInput::Timer => Input::Timer,
            PurchaseInput::Resume => Input::Resume,
            PurchaseInput::Buyer(BuyerCommand::Cancel { request_id }) if p.cancel_requests.contains(&request_id) => {
                return Ok(PurchaseTransition {
                    outcome: Outcome::Ignored(Ignored::Duplicate),
                    state: self.state(p),
                    effects: Vec::new(),
                    wake_at: self.poll_timeout(p),
                });
            }
            PurchaseInput::Buyer(BuyerCommand::Cancel { request_id }) => {
                let input = self.buyer_input(p, BuyerCommand::Cancel { request_id: request_id.clone() })?;
                let tr = self.engine(p, now, input)?;
                if p.cancel_requests.len() >= CANCEL_REQUESTS_LIMIT {
                    p.cancel_requests.remove(0);
                }
                p.cancel_requests.push(request_id);
                return Ok(tr);
            }
            PurchaseInput::Buyer(cmd) => self.buyer_input(p, cmd)?,
            PurchaseInput::Operator(cmd) => {
                let state = self.state(p);
                match cmd {
                    PurchaseOperatorCommand::RetryNow => Input::Operator(OperatorCommand::RetryNow),
                    PurchaseOperatorCommand::Refund => {
                        if state == PurchaseState::Releasing && self.pivot_started(p) {
                            return Err(PurchaseError::PastPivot);
                        }
                        Input::Operator(OperatorCommand::Compensate)
                    }
                    PurchaseOperatorCommand::ResolveDispute { outcome } => {
                        if state != PurchaseState::Disputed {
                            return Err(PurchaseError::InvalidState { state, command: "resolve_dispute" });
                        }
                        let r = match outcome {
                            DisputeOutcome::Release => Resolution::Succeeded,
                            DisputeOutcome::Refund => Resolution::Failed,
                        };
                        Input::Operator(OperatorCommand::Resolve(r))
                    }
                }
            }
        };
        self.engine(p, now, engine_input)
    }

    fn pivot_started(&self, p: &Purchase) -> bool {
        p.saga.steps().get(step::RELEASE as usize).is_some_and(|s| s.forward.attempts > 0 || s.succeeded_at.is_some())
    }

    fn buyer_input(&self, p: &Purchase, cmd: BuyerCommand) -> Result<Input, PurchaseError> {
        let state = self.state(p);
        let (id, kind, allowed, name) = match &cmd {
            BuyerCommand::ConfirmDelivery { request_id } => {
                (request_id, event::BUYER_CONFIRMED, state == PurchaseState::AwaitingDelivery, "confirm_delivery")
            }
            BuyerCommand::Dispute { request_id } => {
                (request_id, event::BUYER_DISPUTED, state == PurchaseState::AwaitingDelivery, "dispute")
            }
            BuyerCommand::Cancel { request_id } => {
                // Until delivery is confirmed or disputed the buyer may walk
                // away: the hold is voided (or an early capture refunded).
                // Cancelling twice while it compensates is the same request.
                let ok = matches!(
                    state,
                    PurchaseState::Reserving
                        | PurchaseState::HoldingFunds
                        | PurchaseState::AwaitingDelivery
                        | PurchaseState::Compensating
                );
                (request_id, "buyer.cancel", ok, "cancel")
            }
        };
        // A retried request (same id) answers like the first one did.
        let repeat = p.saga.has_seen_event(id);
        if !allowed && !repeat {
            return Err(PurchaseError::InvalidState { state, command: name });
        }
        Ok(match cmd {
            BuyerCommand::Cancel { .. } if !repeat => Input::Operator(OperatorCommand::Compensate),
            _ => Input::Event(Event { id: id.clone(), kind: kind.to_string(), output: None }),
        })
    }

    fn engine(&self, p: &mut Purchase, now: Timestamp, input: Input) -> Result<PurchaseTransition, PurchaseError> {
        let tr = self.def.handle(&mut p.saga, now, input)?;
        let effects = tr.effects.iter().map(|e| self.effect(p, e.id, &e.key)).collect();
        Ok(PurchaseTransition { outcome: tr.outcome, state: self.state(p), effects, wake_at: tr.wake_at })
    }

    fn effect(&self, p: &Purchase, id: EffectId, key: &str) -> PurchaseEffect {
        let o = &p.order;
        let minor = |m: Money| m.to_minor().unwrap_or(0);
        let listing = || (o.listing_id.clone(), o.units, o.purchase_id.clone());
        // The PaymentIntent id comes from the hold's result or webhook; a shell
        // that lost it can look the PaymentIntent up by the hold's key.
        let pi = || {
            p.saga.steps()[step::HOLD as usize]
                .output
                .clone()
                .or_else(|| self.def.idempotency_key(&o.purchase_id, step::HOLD, ActionKind::Forward))
                .unwrap_or_default()
        };
        let call = match (id.step, id.action) {
            (step::RESERVE, ActionKind::Forward) => {
                let (listing_id, units, purchase_id) = listing();
                Call::ReserveListing { listing_id, units, purchase_id }
            }
            (step::RESERVE, ActionKind::Compensation) => {
                let (listing_id, units, purchase_id) = listing();
                Call::ReleaseListing { listing_id, units, purchase_id }
            }
            (step::HOLD, ActionKind::Forward) => Call::CreatePaymentIntent {
                amount_minor: minor(o.total),
                currency: o.total.currency(),
                customer: o.buyer_id.clone(),
            },
            (step::HOLD, ActionKind::Compensation) => Call::CancelPaymentIntent { payment_intent: pi() },
            (step::CAPTURE, ActionKind::Forward) => {
                Call::CapturePaymentIntent { payment_intent: pi(), amount_minor: minor(o.total) }
            }
            (step::CAPTURE, ActionKind::Compensation) => {
                Call::RefundPaymentIntent { payment_intent: pi(), amount_minor: minor(o.total) }
            }
            (step::RELEASE, _) => Call::TransferToSeller {
                destination: o.seller_account.clone(),
                amount_minor: minor(o.payout),
                currency: o.payout.currency(),
            },
            _ => {
                let (listing_id, units, purchase_id) = listing();
                Call::MarkListingSold { listing_id, units, purchase_id }
            }
        };
        PurchaseEffect { id, idempotency_key: key.to_string(), call }
    }

    pub fn poll_timeout(&self, p: &Purchase) -> Option<Timestamp> {
        self.def.poll_timeout(&p.saga)
    }

    /// Effects in flight (read-only view; after a restart use [`PurchaseInput::Resume`]).
    pub fn pending_effects(&self, p: &Purchase) -> Vec<PurchaseEffect> {
        self.def.pending_effects(&p.saga).iter().map(|e| self.effect(p, e.id, &e.key)).collect()
    }

    /// When the hold lapses at the latest (counted from when it was requested).
    pub fn hold_expires_at(&self, p: &Purchase) -> Option<Timestamp> {
        let hold = &p.saga.steps()[step::HOLD as usize];
        hold.started_at.map(|t| t.plus(self.config.hold_lifetime))
    }

    pub fn state(&self, p: &Purchase) -> PurchaseState {
        let s = &p.saga;
        match s.status() {
            Status::NotStarted | Status::Running => match s.cursor() {
                step::RESERVE => PurchaseState::Reserving,
                step::HOLD => PurchaseState::HoldingFunds,
                step::CONFIRM => {
                    if s.steps()[step::CONFIRM as usize].phase == StepPhase::Frozen {
                        PurchaseState::Disputed
                    } else {
                        PurchaseState::AwaitingDelivery
                    }
                }
                _ => PurchaseState::Releasing,
            },
            Status::Compensating => PurchaseState::Compensating,
            Status::NeedsAttention => PurchaseState::NeedsAttention,
            Status::Completed => PurchaseState::Completed,
            Status::Compensated => {
                if s.steps()[step::HOLD as usize].succeeded_at.is_some() {
                    PurchaseState::Refunded
                } else {
                    PurchaseState::Cancelled
                }
            }
        }
    }

    /// The bounded transition history in operators' words: what happened and
    /// which state the purchase moved between.
    pub fn history_views(&self, p: &Purchase) -> Vec<HistoryView> {
        let steps = p.saga.steps();
        let step_name =
            |i: u16| steps.get(i as usize).map(|s| s.name.to_string()).unwrap_or_else(|| format!("step {i}"));
        let hold_succeeded = steps[step::HOLD as usize].succeeded_at.is_some();
        let mut disputed = false;
        let mut out = Vec::new();
        for h in p.saga.history() {
            let from = position_state(h.from, disputed, hold_succeeded);
            let input = match &h.input {
                InputLabel::Start => "start".to_string(),
                InputLabel::Succeeded { step, action, attempt } => {
                    format!("{} {} succeeded (attempt {attempt})", step_name(*step), action_word(*action))
                }
                InputLabel::Failed { step, action, attempt, retryable } => format!(
                    "{} {} failed{} (attempt {attempt})",
                    step_name(*step),
                    action_word(*action),
                    if *retryable { ", retryable" } else { "" }
                ),
                // A webhook that confirms what the HTTP answer already told
                // the saga is normal, not a problem: say so.
                InputLabel::Event { kind, outcome } if outcome == "late" => {
                    format!("event {kind}: already known, nothing to do")
                }
                InputLabel::Event { kind, outcome } => format!("event {kind}: {outcome}"),
                InputLabel::Timer => "timer".to_string(),
                InputLabel::Resume => "resumed after a restart".to_string(),
                InputLabel::Operator { command } => format!("operator {}", operator_word(command)),
            };
            if let InputLabel::Event { kind, .. } = &h.input {
                if kind == event::BUYER_DISPUTED && h.to.step == step::CONFIRM && h.to.status == Status::Running {
                    disputed = true;
                }
            }
            if h.to.step != step::CONFIRM || h.to.status != Status::Running {
                disputed = false;
            }
            let to = position_state(h.to, disputed, hold_succeeded);
            out.push(HistoryView { at: h.at, input, from, to });
        }
        out
    }

    pub fn step_views(&self, p: &Purchase) -> Vec<StepView> {
        p.saga
            .steps()
            .iter()
            .map(|s| StepView {
                name: s.name.to_string(),
                status: s.phase,
                attempts: s.forward.attempts,
                last_error: s.forward.last_error.clone(),
                next_attempt_at: s.forward.next_attempt_at.or(s.compensation.next_attempt_at),
                compensation_attempts: s.compensation.attempts,
                compensation_last_error: s.compensation.last_error.clone(),
            })
            .collect()
    }
}

/// One history entry for operators.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HistoryView {
    pub at: Timestamp,
    pub input: String,
    pub from: PurchaseState,
    pub to: PurchaseState,
}

fn position_state(pos: Position, disputed: bool, hold_succeeded: bool) -> PurchaseState {
    match pos.status {
        Status::NotStarted | Status::Running => match pos.step {
            step::RESERVE => PurchaseState::Reserving,
            step::HOLD => PurchaseState::HoldingFunds,
            step::CONFIRM if disputed => PurchaseState::Disputed,
            step::CONFIRM => PurchaseState::AwaitingDelivery,
            _ => PurchaseState::Releasing,
        },
        Status::Compensating => PurchaseState::Compensating,
        Status::NeedsAttention => PurchaseState::NeedsAttention,
        Status::Completed => PurchaseState::Completed,
        Status::Compensated if hold_succeeded => PurchaseState::Refunded,
        Status::Compensated => PurchaseState::Cancelled,
    }
}

fn action_word(action: ActionKind) -> &'static str {
    match action {
        ActionKind::Forward => "forward action",
        ActionKind::Compensation => "compensation",
    }
}

fn operator_word(command: &OperatorCommand) -> &'static str {
    match command {
        OperatorCommand::RetryNow => "retry_now",
        OperatorCommand::Compensate => "compensate",
        OperatorCommand::Resolve(Resolution::Succeeded) => "resolve (succeeded)",
        OperatorCommand::Resolve(Resolution::Failed) => "resolve (failed)",
    }
}
