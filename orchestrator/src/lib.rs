//! A generic saga engine as a sans-IO state machine.
//!
//! The engine owns no clock, socket or random source. A [`Definition`] (an
//! ordered list of [`StepDef`]s plus [`EventRule`]s routing external events)
//! drives a serializable [`SagaState`] through one function:
//!
//! ```text
//! Definition::handle(&mut state, now, input) -> Result<Transition, Rejection>
//!   Transition { outcome, effects: Vec<Effect>, wake_at: Option<Timestamp>, from, to }
//! ```
//!
//! The caller (a Durable Object shell) persists `state` **before** performing
//! `effects`, then performs each one under its [`Effect::key`] (an idempotency
//! key `{saga}:{step}:{action}`, identical for every attempt), reports results
//! as [`Input::Succeeded`] / [`Input::Failed`] naming the [`EffectId`], and
//! sets its single alarm to `wake_at` ([`Definition::poll_timeout`]), feeding
//! [`Input::Timer`] when it fires. After a crash it reloads the state, feeds
//! [`Input::Resume`] and re-performs the effects it returns (same keys).
//!
//! Rules the engine enforces:
//! - failures are retried by each action's [`RetryPolicy`] (exponential
//!   backoff with caller-seeded jitter); an attempt without a result after its
//!   timeout is a retry whose outcome is unknown;
//! - a definitive failure, or retries running out on definitive errors, makes
//!   the saga compensate its completed steps in reverse order; a step still
//!   settling (in flight, or timed out) is waited for, never undone blind;
//! - retries running out with an unknown outcome, at or after the pivot, or a
//!   compensation running out, put the saga in [`Status::NeedsAttention`] with
//!   an [`Attention`] record; [`OperatorCommand`]s resume it;
//! - once the pivot may have taken effect the saga only goes forward;
//! - duplicate events (same id) change nothing, late events are recorded
//!   no-ops, early events are buffered until their step starts, stale results
//!   are ignored;
//! - every recorded transition lands in a bounded history.
//!
//! No input path panics: anything that does not fit is an [`Outcome::Ignored`]
//! or a typed [`Rejection`] (state untouched).

mod definition;
mod engine;
mod state;
mod time;

pub use definition::{
    ActionDef, Definition, DefinitionError, EventRule, Reaction, Resolution, RetryPolicy, StartBy, StepDef, StepKind,
    WaitDef,
};
pub use engine::{Effect, EffectId, Event, Ignored, Input, OperatorCommand, Outcome, Rejection, Transition};
pub use state::{
    ActionKind, ActionRun, Attention, BufferedEvent, HistoryEntry, InputLabel, Position, SagaState, StateError, Status,
    StepPhase, StepState, BUFFER_LIMIT, HISTORY_LIMIT, SCHEMA_VERSION, SEEN_EVENTS_LIMIT,
};
pub use time::{Millis, Timestamp};
