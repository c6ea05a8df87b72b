//! The purchase saga of the pet marketplace, on top of the [`orchestrator`] engine.
//!
//! Steps, in order (idempotency keys are `{purchase}:{step}:{action}`):
//!
//! | step | forward | compensation |
//! | --- | --- | --- |
//! | `reserve_listing` | `reserve` ([`Call::ReserveListing`]) | `release` ([`Call::ReleaseListing`]) |
//! | `hold_funds` | `authorize` ([`Call::CreatePaymentIntent`], manual capture) | `void` ([`Call::CancelPaymentIntent`]), skipped once captured |
//! | `confirm_delivery` | wait: buyer confirmation, or the inspection window's deadline; a dispute freezes it until an operator resolves it | — |
//! | `capture_funds` | `capture` ([`Call::CapturePaymentIntent`]) — also started early, `hold_lifetime - hold_safety_margin` after the hold, if the saga is still waiting | `refund` ([`Call::RefundPaymentIntent`], full amount) |
//! | `release_funds` (pivot) | `transfer` ([`Call::TransferToSeller`], the payout) | — |
//! | `mark_sold` | `mark_sold` ([`Call::MarkListingSold`]) | — |
//!
//! A hold never lapses silently: if the inspection window or a dispute would
//! outlast the authorization, the saga captures into the platform balance
//! before it lapses and, if the buyer wins, refunds instead of voiding.
//!
//! Use [`PurchaseSaga::start`], [`PurchaseSaga::handle`],
//! [`PurchaseSaga::poll_timeout`] and [`PurchaseSaga::pending_effects`]; show
//! [`PurchaseSaga::state`] and [`PurchaseSaga::step_views`]. Money is
//! [`Money`]; the fee is computed once, half-up ([`Money::split_fee`]).
//!
//! [`simulation`] runs many purchases against a simulated marketplace and
//! payment provider with injected faults and checks the invariants.

pub mod money;
pub mod purchase;
pub mod simulation;

pub use money::{Currency, Money, MoneyError, Split};
pub use purchase::{
    event, step, BuyerCommand, Call, DisputeOutcome, HistoryView, Order, OrderRequest, Purchase, PurchaseConfig,
    PurchaseEffect, PurchaseError, PurchaseInput, PurchaseOperatorCommand, PurchaseSaga, PurchaseState,
    PurchaseTransition, Sabotage, StepView, StripeEvent, StripeEventKind,
};
