//! The persisted saga state. Everything here is serde-serializable; the
//! engine mutates it only through [`crate::Definition::handle`].

use crate::time::{Millis, Timestamp};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::VecDeque;

/// Version of the serialized layout. Bump it (and add a migration in
/// [`SagaState::from_json`]) whenever a field changes meaning; purely additive
/// fields use `#[serde(default)]` instead.
pub const SCHEMA_VERSION: u32 = 1;
/// History entries kept per saga (oldest dropped first).
pub const HISTORY_LIMIT: usize = 32;
/// Event ids remembered for de-duplication. Forgetting an old id is safe: a
/// stale event never moves a saga backwards, so a re-delivery is a no-op anyway.
pub const SEEN_EVENTS_LIMIT: usize = 128;
/// Early events kept per saga for steps that have not started yet.
pub const BUFFER_LIMIT: usize = 16;

/// Where the saga as a whole is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    NotStarted,
    /// Going forward.
    Running,
    /// Undoing completed steps in reverse order.
    Compensating,
    /// Stuck: an operator command ([`crate::OperatorCommand`]) resumes it.
    NeedsAttention,
    /// Every step succeeded.
    Completed,
    /// Every completed step was compensated.
    Compensated,
}

impl Status {
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Completed | Status::Compensated)
    }
}

/// Forward action or compensation of a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    Forward,
    Compensation,
}

/// Where one step is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepPhase {
    Pending,
    /// Action in flight or backing off; or a wait step waiting.
    Running,
    /// A wait step whose deadline is suspended.
    Frozen,
    Succeeded,
    /// Definitively did not take effect: nothing to compensate.
    Failed,
    Compensating,
    Compensated,
    /// A wait step abandoned because the saga compensates.
    Cancelled,
}

/// Retry bookkeeping of one action.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionRun {
    /// Attempts issued in the current budget (an operator retry resets it).
    pub attempts: u32,
    pub in_flight: bool,
    /// When the in-flight attempt times out.
    pub timeout_at: Option<Timestamp>,
    /// When the next attempt is due (backing off).
    pub next_attempt_at: Option<Timestamp>,
    pub last_error: Option<String>,
    /// Some attempt timed out, so the action may have taken effect; cleared
    /// only by a definitive answer (success or non-retryable failure).
    pub outcome_unknown: bool,
}

/// One step's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepState {
    pub name: Cow<'static, str>,
    pub phase: StepPhase,
    pub forward: ActionRun,
    pub compensation: ActionRun,
    pub started_at: Option<Timestamp>,
    pub succeeded_at: Option<Timestamp>,
    /// Wait steps: when the deadline resolves the step.
    pub deadline: Option<Timestamp>,
    /// Wait steps: deadline time left when frozen.
    pub frozen_remaining: Option<Millis>,
    /// Output of the forward action (e.g. the provider's object id).
    pub output: Option<String>,
}

/// Why a saga needs an operator, with what they need to act.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attention {
    pub step: u16,
    pub step_name: Cow<'static, str>,
    pub action: ActionKind,
    pub error: String,
    pub since: Timestamp,
    /// The status the saga returns to once resolved.
    pub resume: Status,
}

/// An early event kept until its step starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BufferedEvent {
    pub rule: u16,
    pub id: String,
    pub output: Option<String>,
}

/// A compact position for history and transitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub status: Status,
    pub step: u16,
}

/// What input caused a history entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "input", rename_all = "snake_case")]
pub enum InputLabel {
    Start,
    Succeeded { step: u16, action: ActionKind, attempt: u32 },
    Failed { step: u16, action: ActionKind, attempt: u32, retryable: bool },
    Event { kind: Cow<'static, str>, outcome: Cow<'static, str> },
    Timer,
    Resume,
    Operator { command: crate::OperatorCommand },
}

/// One recorded transition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub at: Timestamp,
    #[serde(flatten)]
    pub input: InputLabel,
    pub from: Position,
    pub to: Position,
}

/// Errors loading a persisted state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state schema version {found} is newer than this release understands ({supported})")]
    TooNew { found: u32, supported: u32 },
    #[error("state does not parse: {0}")]
    Json(#[from] serde_json::Error),
}

/// The whole persisted state of one saga.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SagaState {
    pub(crate) schema_version: u32,
    pub(crate) saga_id: String,
    pub(crate) definition: Cow<'static, str>,
    pub(crate) status: Status,
    pub(crate) cursor: u16,
    pub(crate) jitter_seed: u64,
    pub(crate) started_at: Option<Timestamp>,
    pub(crate) updated_at: Option<Timestamp>,
    pub(crate) steps: Vec<StepState>,
    pub(crate) attention: Option<Attention>,
    #[serde(default)]
    pub(crate) seen_events: VecDeque<String>,
    #[serde(default)]
    pub(crate) buffered: Vec<BufferedEvent>,
    #[serde(default)]
    pub(crate) history: VecDeque<HistoryEntry>,
    #[serde(default)]
    pub(crate) transitions: u64,
}

impl SagaState {
    pub fn saga_id(&self) -> &str {
        &self.saga_id
    }
    pub fn status(&self) -> Status {
        self.status
    }
    /// Forward: the current step. Compensating: the step being undone.
    pub fn cursor(&self) -> u16 {
        self.cursor
    }
    pub fn position(&self) -> Position {
        Position { status: self.status, step: self.cursor }
    }
    pub fn steps(&self) -> &[StepState] {
        &self.steps
    }
    pub fn step(&self, name: &str) -> Option<&StepState> {
        self.steps.iter().find(|s| s.name == name)
    }
    pub fn attention(&self) -> Option<&Attention> {
        self.attention.as_ref()
    }
    pub fn history(&self) -> impl Iterator<Item = &HistoryEntry> {
        self.history.iter()
    }
    pub fn started_at(&self) -> Option<Timestamp> {
        self.started_at
    }
    pub fn updated_at(&self) -> Option<Timestamp> {
        self.updated_at
    }
    /// Transitions recorded over the saga's life (not bounded like history).
    pub fn transitions(&self) -> u64 {
        self.transitions
    }
    /// Whether an event (or command) id was already applied or recorded.
    pub fn has_seen_event(&self, id: &str) -> bool {
        self.seen_events.iter().any(|e| e == id)
    }
    pub fn schema_version(&self) -> u32 {
        self.schema_version
    }

    pub fn to_json(&self) -> Result<String, StateError> {
        Ok(serde_json::to_string(self)?)
    }

    /// Loads a persisted state, refusing one written by a newer release.
    /// Older versions are migrated here (none exist yet).
    pub fn from_json(json: &str) -> Result<SagaState, StateError> {
        let state: SagaState = serde_json::from_str(json)?;
        if state.schema_version > SCHEMA_VERSION {
            return Err(StateError::TooNew { found: state.schema_version, supported: SCHEMA_VERSION });
        }
        Ok(SagaState { schema_version: SCHEMA_VERSION, ..state })
    }

    pub(crate) fn push_history(&mut self, entry: HistoryEntry) {
        if self.history.len() >= HISTORY_LIMIT {
            self.history.pop_front();
        }
        self.history.push_back(entry);
    }
}
