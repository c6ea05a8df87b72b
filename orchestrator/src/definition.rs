//! Saga definitions: the ordered steps, their actions, policies and event routing.

use crate::time::Millis;
use serde::{Deserialize, Serialize};

/// How an action is retried after a retryable failure or a timeout.
///
/// The delay before attempt `n + 1` is `initial_delay * multiplier^(n - 1)`,
/// capped at `max_delay`, then reduced by up to `jitter` (a fraction in
/// `0.0..=1.0`) using the saga's caller-supplied jitter seed.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts in total, the first one included (at least 1).
    pub max_attempts: u32,
    pub initial_delay: Millis,
    pub multiplier: f64,
    pub max_delay: Millis,
    /// Fraction of the delay that may be shaved off at random (`0.0` = none).
    pub jitter: f64,
}

impl RetryPolicy {
    /// A policy that never retries.
    pub const fn once() -> Self {
        RetryPolicy { max_attempts: 1, initial_delay: Millis(0), multiplier: 1.0, max_delay: Millis(0), jitter: 0.0 }
    }

    /// Delay to wait after `failed_attempt` (1-based) failed. `entropy` is any
    /// u64; the engine derives it from the saga's jitter seed, step and attempt.
    pub fn delay(&self, failed_attempt: u32, entropy: u64) -> Millis {
        let exp = failed_attempt.saturating_sub(1).min(64) as i32;
        let base = self.initial_delay.0 as f64 * self.multiplier.max(1.0).powi(exp);
        let capped = base.min(self.max_delay.0 as f64).max(0.0);
        let jitter = if self.jitter.is_nan() { 0.0 } else { self.jitter.clamp(0.0, 1.0) };
        // 53 random bits -> [0, 1)
        let r = (entropy >> 11) as f64 / (1u64 << 53) as f64;
        Millis((capped * (1.0 - jitter * r)) as u64)
    }
}

/// One action the shell performs: a forward action or a compensation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ActionDef {
    /// Name used in the idempotency key `{saga}:{step}:{action}`.
    pub name: &'static str,
    pub retry: RetryPolicy,
    /// An attempt with no result after this long counts as a retryable failure
    /// whose outcome is unknown.
    pub timeout: Millis,
}

/// How a wait step ends on its own.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WaitDef {
    /// Time after the step starts at which it resolves by itself (`None`: never).
    pub deadline: Option<Millis>,
    /// What the deadline means.
    pub on_deadline: Resolution,
}

/// What a step does.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StepKind {
    /// Performs an effect and waits for its result (or a routed event).
    Action(ActionDef),
    /// Performs nothing; completes on an external event or on its deadline.
    Wait(WaitDef),
}

/// Outcome an operator (or a deadline) gives to a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    Succeeded,
    Failed,
}

/// "Start this step no later than `after` past the moment `anchor` started,
/// even if the saga has not reached it yet" — for perishable resources (a
/// payment hold that lapses) that must be acted on while an earlier step waits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StartBy {
    pub anchor: &'static str,
    pub after: Millis,
}

/// One step of a saga.
#[derive(Clone, Debug, PartialEq)]
pub struct StepDef {
    pub name: &'static str,
    pub kind: StepKind,
    pub compensation: Option<ActionDef>,
    /// Once this step succeeds the saga can only go forward.
    pub pivot: bool,
    pub start_by: Option<StartBy>,
    /// Skip this step's compensation when the named later step succeeded (its
    /// own compensation undoes both, e.g. a refund replaces voiding a hold).
    pub superseded_by: Option<&'static str>,
}

impl StepDef {
    pub fn action(name: &'static str, action: ActionDef) -> Self {
        Self::new(name, StepKind::Action(action))
    }
    pub fn wait(name: &'static str, wait: WaitDef) -> Self {
        Self::new(name, StepKind::Wait(wait))
    }
    fn new(name: &'static str, kind: StepKind) -> Self {
        StepDef { name, kind, compensation: None, pivot: false, start_by: None, superseded_by: None }
    }
    pub fn compensate(mut self, action: ActionDef) -> Self {
        self.compensation = Some(action);
        self
    }
    pub fn pivot(mut self) -> Self {
        self.pivot = true;
        self
    }
    pub fn start_by(mut self, anchor: &'static str, after: Millis) -> Self {
        self.start_by = Some(StartBy { anchor, after });
        self
    }
    pub fn superseded_by(mut self, step: &'static str) -> Self {
        self.superseded_by = Some(step);
        self
    }
}

/// What a routed external event does to its step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reaction {
    /// The step's forward action took effect (e.g. a webhook confirming it).
    ForwardSucceeded,
    /// The step's forward action definitively failed (e.g. a card declined).
    ForwardFailed,
    /// The step's compensation took effect.
    CompensationSucceeded,
    /// The wait step completes successfully.
    WaitSucceeded,
    /// The wait step fails: the saga compensates.
    WaitFailed,
    /// The wait step's deadline is suspended until an operator resolves it.
    Freeze,
}

/// Routes events of one kind to one step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EventRule {
    pub kind: &'static str,
    pub step: &'static str,
    pub reaction: Reaction,
}

/// A definition that failed validation.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DefinitionError {
    #[error("a saga needs at least one step")]
    NoSteps,
    #[error("too many steps")]
    TooManySteps,
    #[error("step name `{0}` is used twice")]
    DuplicateStep(&'static str),
    #[error("unknown step `{0}`")]
    UnknownStep(&'static str),
    #[error("only one step may be the pivot")]
    TwoPivots,
    #[error("the pivot `{0}` must be an action step")]
    PivotNotAction(&'static str),
    #[error("step `{0}`: {1}")]
    Invalid(&'static str, &'static str),
    #[error("event rule `{kind}` does not fit step `{step}`")]
    RuleMismatch { kind: &'static str, step: &'static str },
}

/// A validated saga definition. Build it once (per config) and share it; the
/// engine's entry points are methods on it (see [`crate::engine`]).
#[derive(Clone, Debug)]
pub struct Definition {
    pub(crate) name: &'static str,
    pub(crate) steps: Vec<StepDef>,
    pub(crate) rules: Vec<EventRule>,
    pub(crate) rule_step: Vec<u16>,
    pub(crate) anchor: Vec<Option<u16>>,
    pub(crate) supersede: Vec<Option<u16>>,
    pub(crate) pivot: Option<u16>,
}

impl Definition {
    /// Validates and indexes a definition.
    pub fn new(name: &'static str, steps: Vec<StepDef>, rules: Vec<EventRule>) -> Result<Self, DefinitionError> {
        if steps.is_empty() {
            return Err(DefinitionError::NoSteps);
        }
        if steps.len() >= u16::MAX as usize {
            return Err(DefinitionError::TooManySteps);
        }
        let index = |n: &'static str| {
            steps.iter().position(|s| s.name == n).map(|i| i as u16).ok_or(DefinitionError::UnknownStep(n))
        };
        let mut pivot = None;
        let mut anchor = Vec::with_capacity(steps.len());
        let mut supersede = Vec::with_capacity(steps.len());
        for (i, s) in steps.iter().enumerate() {
            if steps[..i].iter().any(|o| o.name == s.name) {
                return Err(DefinitionError::DuplicateStep(s.name));
            }
            let actions = match s.kind {
                StepKind::Action(a) => vec![Some(a), s.compensation],
                StepKind::Wait(_) => vec![s.compensation],
            };
            for a in actions.into_iter().flatten() {
                if a.retry.max_attempts == 0 {
                    return Err(DefinitionError::Invalid(s.name, "max_attempts must be at least 1"));
                }
                if a.name.is_empty() || a.name.contains(':') {
                    return Err(DefinitionError::Invalid(s.name, "action names must be non-empty, without ':'"));
                }
            }
            if s.name.contains(':') {
                return Err(DefinitionError::Invalid(s.name, "step names must not contain ':'"));
            }
            if s.pivot {
                if pivot.is_some() {
                    return Err(DefinitionError::TwoPivots);
                }
                if !matches!(s.kind, StepKind::Action(_)) {
                    return Err(DefinitionError::PivotNotAction(s.name));
                }
                pivot = Some(i as u16);
            }
            anchor.push(match s.start_by {
                Some(sb) => {
                    let a = index(sb.anchor)?;
                    if a as usize >= i || !matches!(s.kind, StepKind::Action(_)) {
                        return Err(DefinitionError::Invalid(
                            s.name,
                            "start_by needs an action step and an earlier anchor",
                        ));
                    }
                    Some(a)
                }
                None => None,
            });
            supersede.push(match s.superseded_by {
                Some(n) => {
                    let j = index(n)?;
                    if j as usize <= i {
                        return Err(DefinitionError::Invalid(s.name, "superseded_by must name a later step"));
                    }
                    Some(j)
                }
                None => None,
            });
        }
        if let Some(p) = pivot {
            if steps.iter().enumerate().any(|(i, s)| s.start_by.is_some() && i > p as usize) {
                return Err(DefinitionError::Invalid("start_by", "steps after the pivot cannot start early"));
            }
        }
        let mut rule_step = Vec::with_capacity(rules.len());
        for r in &rules {
            let i = index(r.step)?;
            let s = &steps[i as usize];
            let fits = match r.reaction {
                Reaction::ForwardSucceeded | Reaction::ForwardFailed => matches!(s.kind, StepKind::Action(_)),
                Reaction::CompensationSucceeded => s.compensation.is_some(),
                Reaction::WaitSucceeded | Reaction::WaitFailed | Reaction::Freeze => {
                    matches!(s.kind, StepKind::Wait(_))
                }
            };
            if !fits {
                return Err(DefinitionError::RuleMismatch { kind: r.kind, step: r.step });
            }
            rule_step.push(i);
        }
        Ok(Definition { name, steps, rules, rule_step, anchor, supersede, pivot })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }
    pub fn steps(&self) -> &[StepDef] {
        &self.steps
    }
    pub fn step_index(&self, name: &str) -> Option<u16> {
        self.steps.iter().position(|s| s.name == name).map(|i| i as u16)
    }
    /// Index of the pivot step, if any.
    pub fn pivot(&self) -> Option<u16> {
        self.pivot
    }
}
