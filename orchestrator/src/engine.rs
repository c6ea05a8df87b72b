//! The transition function: `handle(state, now, input) -> effects + next wake-up`.

use crate::definition::{ActionDef, Definition, Reaction, Resolution, StepKind};
use crate::state::*;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// Names one issued effect: results must quote it back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EffectId {
    pub step: u16,
    pub action: ActionKind,
    /// 1-based attempt within the current retry budget.
    pub attempt: u32,
}

/// Something the shell must perform, then report with [`Input::Succeeded`] or
/// [`Input::Failed`] quoting `id`. `key` is the idempotency key to send to the
/// provider: `{saga}:{step}:{action}`, identical for every attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Effect {
    pub id: EffectId,
    pub key: String,
    pub step: &'static str,
    pub action: &'static str,
}

/// An external event: a verified webhook, a buyer's command turned event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The provider's event id: a second delivery with the same id is a no-op.
    pub id: String,
    /// Routed by the definition's [`crate::EventRule`]s.
    pub kind: String,
    /// Becomes the step's output when the event completes a forward action.
    pub output: Option<String>,
}

/// Commands from an operator console.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", content = "outcome", rename_all = "snake_case")]
pub enum OperatorCommand {
    /// Skip the backoff; out of `needs_attention`, re-issue the stuck action
    /// with a fresh retry budget.
    RetryNow,
    /// Stop going forward and compensate. Refused once the pivot may have
    /// taken effect.
    Compensate,
    /// Settle the current wait step, or the stuck action of a saga that
    /// needs attention (done by hand: `Succeeded`; did not happen: `Failed`).
    Resolve(Resolution),
}

/// Every input the engine accepts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Input {
    /// `jitter_seed` is the only randomness the saga will use.
    Start {
        jitter_seed: u64,
    },
    Succeeded {
        effect: EffectId,
        output: Option<String>,
    },
    /// `retryable: false` means the action definitively did not and will not
    /// take effect under this key (the provider replays that answer for the
    /// key). `retryable: true` says only that this attempt did nothing; an
    /// earlier attempt that timed out may still have taken effect. A lost
    /// answer is not reported: the engine times the attempt out.
    Failed {
        effect: EffectId,
        retryable: bool,
        error: String,
    },
    /// The attempt ended without telling whether it took effect: a 5xx from
    /// the provider, a connection dropped after the request was sent. Retried
    /// under the same key like a retryable failure, but, like a timeout, it
    /// marks the action as possibly done, so running out of retries leads to
    /// `needs_attention` instead of a guess.
    OutcomeUnknown {
        effect: EffectId,
        error: String,
    },
    Event(Event),
    /// The alarm fired (at or after [`Definition::poll_timeout`]).
    Timer,
    /// The shell restarted from persisted state. Every effect that was in
    /// flight is returned again (same key, same attempt) to re-perform, and
    /// marked as possibly done: the crashed run may have performed it.
    Resume,
    Operator(OperatorCommand),
}

/// Why an input changed nothing (on purpose).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ignored {
    /// Same event id, or `Start` again.
    Duplicate,
    /// A result for an effect that is no longer in flight.
    Stale,
    /// An event for a step that is already past it (recorded in history).
    Late,
    /// An event kind no rule routes (recorded in history).
    Unrouted,
    /// The timer fired but nothing was due.
    NothingDue,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Applied,
    /// An early event, kept for when its step starts.
    Buffered,
    Ignored(Ignored),
}

/// The result of one [`Definition::handle`] call.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    pub outcome: Outcome,
    /// New effects to perform (persist the state first).
    pub effects: Vec<Effect>,
    /// Set the alarm here (`None`: clear it).
    pub wake_at: Option<Timestamp>,
    pub from: Position,
    pub to: Position,
}

/// An input refused by the state; the state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the saga has not started")]
    NotStarted,
    #[error("`{input}` is not allowed while the saga is {status:?}")]
    InvalidState { status: Status, input: &'static str },
    #[error("the pivot `{step}` may have taken effect; the saga can only go forward")]
    PastPivot { step: &'static str },
    #[error("no such effect: step {0}")]
    UnknownEffect(u16),
    #[error("nothing is waiting for a retry")]
    NothingToRetry,
    #[error("state does not match definition `{0}`")]
    Incompatible(&'static str),
}

struct Cx {
    now: Timestamp,
    effects: Vec<Effect>,
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Definition {
    /// A fresh, not yet started saga. Feed it [`Input::Start`].
    pub fn new_saga(&self, saga_id: impl Into<String>) -> SagaState {
        SagaState {
            schema_version: SCHEMA_VERSION,
            saga_id: saga_id.into(),
            definition: Cow::Borrowed(self.name),
            status: Status::NotStarted,
            cursor: 0,
            jitter_seed: 0,
            started_at: None,
            updated_at: None,
            steps: self
                .steps
                .iter()
                .map(|s| StepState {
                    name: Cow::Borrowed(s.name),
                    phase: StepPhase::Pending,
                    forward: ActionRun::default(),
                    compensation: ActionRun::default(),
                    started_at: None,
                    succeeded_at: None,
                    deadline: None,
                    frozen_remaining: None,
                    output: None,
                })
                .collect(),
            attention: None,
            seen_events: Default::default(),
            buffered: Vec::new(),
            history: Default::default(),
            transitions: 0,
        }
    }

    /// Checks that a loaded state belongs to this definition (same steps).
    pub fn check(&self, s: &SagaState) -> Result<(), Rejection> {
        let same = s.definition == self.name
            && s.steps.len() == self.steps.len()
            && s.steps.iter().zip(&self.steps).all(|(a, b)| a.name == b.name)
            && (s.cursor as usize) <= self.steps.len()
            && s.buffered.iter().all(|b| (b.rule as usize) < self.rules.len());
        if same {
            Ok(())
        } else {
            Err(Rejection::Incompatible(self.name))
        }
    }

    /// The one transition function. On `Err` the state is untouched.
    pub fn handle(&self, s: &mut SagaState, now: Timestamp, input: Input) -> Result<Transition, Rejection> {
        if s.steps.len() != self.steps.len() || s.cursor as usize > self.steps.len() {
            return Err(Rejection::Incompatible(self.name));
        }
        let from = s.position();
        let mut cx = Cx { now, effects: Vec::new() };
        let (outcome, label) = match input {
            Input::Start { jitter_seed } => {
                if s.status != Status::NotStarted {
                    (Outcome::Ignored(Ignored::Duplicate), None)
                } else {
                    s.status = Status::Running;
                    s.jitter_seed = jitter_seed;
                    s.started_at = Some(now);
                    (Outcome::Applied, Some(InputLabel::Start))
                }
            }
            Input::Succeeded { effect, output } => {
                let o = self.on_succeeded(s, &mut cx, effect, output)?;
                (o, Some(InputLabel::Succeeded { step: effect.step, action: effect.action, attempt: effect.attempt }))
            }
            Input::Failed { effect, retryable, error } => {
                let o = self.on_failed(s, &mut cx, effect, retryable, error, false)?;
                let l =
                    InputLabel::Failed { step: effect.step, action: effect.action, attempt: effect.attempt, retryable };
                (o, Some(l))
            }
            Input::OutcomeUnknown { effect, error } => {
                let o = self.on_failed(s, &mut cx, effect, true, error, true)?;
                let l = InputLabel::Failed {
                    step: effect.step,
                    action: effect.action,
                    attempt: effect.attempt,
                    retryable: true,
                };
                (o, Some(l))
            }
            Input::Event(ev) => self.on_event(s, &mut cx, ev)?,
            Input::Timer => {
                let fired = self.on_timer(s, &mut cx);
                if fired {
                    (Outcome::Applied, Some(InputLabel::Timer))
                } else {
                    (Outcome::Ignored(Ignored::NothingDue), None)
                }
            }
            Input::Resume => {
                if self.on_resume(s, &mut cx) {
                    (Outcome::Applied, Some(InputLabel::Resume))
                } else {
                    (Outcome::Ignored(Ignored::NothingDue), None)
                }
            }
            Input::Operator(cmd) => {
                let o = self.on_operator(s, &mut cx, cmd)?;
                (o, Some(InputLabel::Operator { command: cmd }))
            }
        };
        let recorded = match outcome {
            Outcome::Applied | Outcome::Buffered | Outcome::Ignored(Ignored::Late | Ignored::Unrouted) => label,
            Outcome::Ignored(_) => None,
        };
        if let Some(input) = recorded {
            self.advance(s, &mut cx);
            s.transitions += 1;
            s.updated_at = Some(now);
            s.push_history(HistoryEntry { at: now, input, from, to: s.position() });
        }
        Ok(Transition { outcome, effects: cx.effects, wake_at: self.poll_timeout(s), from, to: s.position() })
    }

    /// The single instant at which the shell must feed [`Input::Timer`]:
    /// the earliest of every attempt timeout, backoff, wait deadline and
    /// early-start guard. `None` when nothing is scheduled.
    pub fn poll_timeout(&self, s: &SagaState) -> Option<Timestamp> {
        if !matches!(s.status, Status::Running | Status::Compensating) || s.steps.len() != self.steps.len() {
            return None;
        }
        let mut best: Option<Timestamp> = None;
        let mut consider = |t: Option<Timestamp>| {
            if let Some(t) = t {
                best = Some(best.map_or(t, |b| b.min(t)));
            }
        };
        let run_due = |r: &ActionRun| if r.in_flight { r.timeout_at } else { r.next_attempt_at };
        for (i, st) in s.steps.iter().enumerate() {
            match st.phase {
                StepPhase::Running => match self.steps[i].kind {
                    StepKind::Action(_) => consider(run_due(&st.forward)),
                    StepKind::Wait(_) if s.status == Status::Running => consider(st.deadline),
                    StepKind::Wait(_) => {}
                },
                StepPhase::Compensating => consider(run_due(&st.compensation)),
                StepPhase::Pending => consider(self.start_by_due(s, i)),
                _ => {}
            }
        }
        best
    }

    /// Every effect in flight (read-only). After a restart feed
    /// [`Input::Resume`] instead, which also records that they may be done.
    pub fn pending_effects(&self, s: &SagaState) -> Vec<Effect> {
        let mut out = Vec::new();
        if s.steps.len() != self.steps.len() {
            return out;
        }
        for (i, st) in s.steps.iter().enumerate() {
            if st.phase == StepPhase::Running && st.forward.in_flight {
                if let Some(a) = self.forward_def(i) {
                    out.push(self.effect(s, i, ActionKind::Forward, a, st.forward.attempts));
                }
            }
            if st.phase == StepPhase::Compensating && st.compensation.in_flight {
                if let Some(a) = self.steps[i].compensation {
                    out.push(self.effect(s, i, ActionKind::Compensation, a, st.compensation.attempts));
                }
            }
        }
        out
    }

    /// The idempotency key of a step's action: `{saga}:{step}:{action}`.
    pub fn idempotency_key(&self, saga_id: &str, step: u16, action: ActionKind) -> Option<String> {
        let def = self.steps.get(step as usize)?;
        let a = match action {
            ActionKind::Forward => self.forward_def(step as usize)?,
            ActionKind::Compensation => def.compensation?,
        };
        Some(format!("{saga_id}:{}:{}", def.name, a.name))
    }

    // ---- internals ----

    fn forward_def(&self, i: usize) -> Option<ActionDef> {
        match self.steps[i].kind {
            StepKind::Action(a) => Some(a),
            StepKind::Wait(_) => None,
        }
    }

    fn effect(&self, s: &SagaState, i: usize, kind: ActionKind, a: ActionDef, attempt: u32) -> Effect {
        let step = self.steps[i].name;
        Effect {
            id: EffectId { step: i as u16, action: kind, attempt },
            key: format!("{}:{}:{}", s.saga_id, step, a.name),
            step,
            action: a.name,
        }
    }

    fn start_by_due(&self, s: &SagaState, i: usize) -> Option<Timestamp> {
        if s.status != Status::Running || i <= s.cursor as usize {
            return None;
        }
        let anchor = self.anchor[i]? as usize;
        let after = self.steps[i].start_by?.after;
        Some(s.steps[anchor].started_at?.plus(after))
    }

    fn issue(&self, s: &mut SagaState, cx: &mut Cx, i: usize, kind: ActionKind) {
        let def = match kind {
            ActionKind::Forward => self.forward_def(i),
            ActionKind::Compensation => self.steps[i].compensation,
        };
        let Some(a) = def else { return };
        let run = match kind {
            ActionKind::Forward => &mut s.steps[i].forward,
            ActionKind::Compensation => &mut s.steps[i].compensation,
        };
        run.attempts += 1;
        run.in_flight = true;
        run.timeout_at = Some(cx.now.plus(a.timeout));
        run.next_attempt_at = None;
        let attempt = run.attempts;
        let e = self.effect(s, i, kind, a, attempt);
        cx.effects.push(e);
    }

    fn take_buffered(&self, s: &mut SagaState, i: usize, want: &[Reaction]) -> Option<(Reaction, BufferedEvent)> {
        let pos = s.buffered.iter().position(|b| {
            let r = b.rule as usize;
            r < self.rules.len() && self.rule_step[r] as usize == i && want.contains(&self.rules[r].reaction)
        })?;
        let b = s.buffered.remove(pos);
        Some((self.rules[b.rule as usize].reaction, b))
    }

    fn start_step(&self, s: &mut SagaState, cx: &mut Cx, i: usize) {
        s.steps[i].started_at = Some(cx.now);
        s.steps[i].phase = StepPhase::Running;
        match self.steps[i].kind {
            StepKind::Action(_) => {
                match self.take_buffered(s, i, &[Reaction::ForwardSucceeded, Reaction::ForwardFailed]) {
                    Some((Reaction::ForwardSucceeded, b)) => self.forward_succeeded(s, cx, i, b.output),
                    Some(_) => self.forward_definitive_failure(s, cx, i, "failed before it started".into()),
                    None => self.issue(s, cx, i, ActionKind::Forward),
                }
            }
            StepKind::Wait(w) => {
                s.steps[i].deadline = w.deadline.map(|d| cx.now.plus(d));
                let wanted = [Reaction::WaitSucceeded, Reaction::WaitFailed, Reaction::Freeze];
                while matches!(s.steps[i].phase, StepPhase::Running | StepPhase::Frozen) {
                    let Some((r, _)) = self.take_buffered(s, i, &wanted) else { break };
                    self.apply_wait(s, cx, i, r);
                }
            }
        }
    }

    fn apply_wait(&self, s: &mut SagaState, cx: &mut Cx, i: usize, r: Reaction) -> bool {
        let st = &mut s.steps[i];
        match (st.phase, r) {
            (StepPhase::Running, Reaction::Freeze) => {
                st.frozen_remaining = st.deadline.map(|d| d.since(cx.now));
                st.deadline = None;
                st.phase = StepPhase::Frozen;
                true
            }
            (StepPhase::Running, Reaction::WaitSucceeded) => {
                self.wait_resolved(s, cx, i, Resolution::Succeeded);
                true
            }
            (StepPhase::Running, Reaction::WaitFailed) => {
                self.wait_resolved(s, cx, i, Resolution::Failed);
                true
            }
            _ => false,
        }
    }

    fn wait_resolved(&self, s: &mut SagaState, cx: &mut Cx, i: usize, r: Resolution) {
        let st = &mut s.steps[i];
        st.deadline = None;
        st.frozen_remaining = None;
        match r {
            Resolution::Succeeded => {
                st.phase = StepPhase::Succeeded;
                st.succeeded_at = Some(cx.now);
            }
            Resolution::Failed => {
                st.phase = StepPhase::Failed;
                self.begin_compensation(s);
            }
        }
    }

    fn forward_succeeded(&self, s: &mut SagaState, cx: &mut Cx, i: usize, output: Option<String>) {
        let st = &mut s.steps[i];
        st.phase = StepPhase::Succeeded;
        st.succeeded_at = Some(cx.now);
        st.forward.in_flight = false;
        st.forward.timeout_at = None;
        st.forward.next_attempt_at = None;
        st.forward.outcome_unknown = false;
        if output.is_some() {
            st.output = output;
        }
        self.clear_attention(s, i, ActionKind::Forward);
    }

    fn compensated(&self, s: &mut SagaState, i: usize) {
        let st = &mut s.steps[i];
        st.phase = StepPhase::Compensated;
        st.compensation.in_flight = false;
        st.compensation.timeout_at = None;
        st.compensation.next_attempt_at = None;
        st.compensation.outcome_unknown = false;
        self.clear_attention(s, i, ActionKind::Compensation);
    }

    fn clear_attention(&self, s: &mut SagaState, i: usize, kind: ActionKind) {
        if let Some(a) = &s.attention {
            if a.step as usize == i && a.action == kind {
                s.status = a.resume;
                s.attention = None;
            }
        }
    }

    fn needs_attention(&self, s: &mut SagaState, cx: &Cx, i: usize, kind: ActionKind, error: String) {
        let resume = match (&s.attention, s.status) {
            (Some(a), _) => a.resume,
            (None, st) => st,
        };
        s.attention = Some(Attention {
            step: i as u16,
            step_name: Cow::Borrowed(self.steps[i].name),
            action: kind,
            error,
            since: cx.now,
            resume,
        });
        s.status = Status::NeedsAttention;
    }

    fn pivot_passed(&self, s: &SagaState) -> Option<&'static str> {
        let p = self.pivot? as usize;
        let st = &s.steps[p];
        // Once the pivot's action was issued it may have taken effect.
        let maybe = st.phase == StepPhase::Succeeded || (st.forward.attempts > 0 && st.phase != StepPhase::Failed);
        maybe.then_some(self.steps[p].name)
    }

    fn begin_compensation(&self, s: &mut SagaState) {
        match s.status {
            Status::Running => {
                s.status = Status::Compensating;
                s.cursor = (self.steps.len() - 1) as u16;
            }
            Status::NeedsAttention => {
                if let Some(a) = &mut s.attention {
                    a.resume = Status::Compensating;
                }
                s.cursor = (self.steps.len() - 1) as u16;
            }
            _ => {}
        }
    }

    /// A definitive failure: the action did not take effect.
    fn forward_definitive_failure(&self, s: &mut SagaState, cx: &mut Cx, i: usize, error: String) {
        let after_pivot = self.pivot.is_some_and(|p| i > p as usize);
        let st = &mut s.steps[i];
        st.forward.in_flight = false;
        st.forward.timeout_at = None;
        st.forward.next_attempt_at = None;
        st.forward.outcome_unknown = false;
        st.forward.last_error = Some(error.clone());
        if after_pivot {
            // Past the pivot nothing can be undone: a human finishes it.
            self.needs_attention(s, cx, i, ActionKind::Forward, error);
        } else {
            st.phase = StepPhase::Failed;
            self.clear_attention(s, i, ActionKind::Forward);
            self.begin_compensation(s);
        }
    }

    fn forward_failed(
        &self,
        s: &mut SagaState,
        cx: &mut Cx,
        i: usize,
        retryable: bool,
        error: String,
        may_have_happened: bool,
    ) {
        let Some(a) = self.forward_def(i) else { return };
        if !retryable {
            return self.forward_definitive_failure(s, cx, i, error);
        }
        let seed = s.jitter_seed;
        let compensating = s.status == Status::Compensating;
        let at_or_after_pivot = self.pivot.is_some_and(|p| i >= p as usize);
        let run = &mut s.steps[i].forward;
        run.in_flight = false;
        run.timeout_at = None;
        // Sticky: a later attempt's transient error says nothing about whether
        // an earlier, timed-out attempt took effect under the same key.
        run.outcome_unknown |= may_have_happened;
        run.last_error = Some(error.clone());
        let maybe_done = run.outcome_unknown;
        if compensating && !maybe_done && !at_or_after_pivot {
            // It did not take effect and we no longer want it.
            s.steps[i].phase = StepPhase::Failed;
            return;
        }
        if run.attempts < a.retry.max_attempts {
            let entropy = mix(seed ^ ((i as u64) << 40) ^ (run.attempts as u64));
            run.next_attempt_at = Some(cx.now.plus(a.retry.delay(run.attempts, entropy)));
        } else if maybe_done || at_or_after_pivot {
            // Outcome unknown (or money may have moved): never guess.
            self.needs_attention(s, cx, i, ActionKind::Forward, error);
        } else {
            self.forward_definitive_failure(s, cx, i, error);
        }
    }

    fn compensation_failed(
        &self,
        s: &mut SagaState,
        cx: &mut Cx,
        i: usize,
        retryable: bool,
        error: String,
        may_have_happened: bool,
    ) {
        let Some(a) = self.steps[i].compensation else { return };
        let seed = s.jitter_seed;
        let run = &mut s.steps[i].compensation;
        run.in_flight = false;
        run.timeout_at = None;
        run.outcome_unknown |= may_have_happened;
        run.last_error = Some(error.clone());
        if retryable && run.attempts < a.retry.max_attempts {
            let entropy = mix(seed ^ ((i as u64) << 40) ^ (1 << 32) ^ (run.attempts as u64));
            run.next_attempt_at = Some(cx.now.plus(a.retry.delay(run.attempts, entropy)));
        } else {
            self.needs_attention(s, cx, i, ActionKind::Compensation, error);
        }
    }

    fn check_effect(&self, s: &SagaState, e: EffectId) -> Result<(), Rejection> {
        let i = e.step as usize;
        if i >= self.steps.len() {
            return Err(Rejection::UnknownEffect(e.step));
        }
        let ok = match e.action {
            ActionKind::Forward => self.forward_def(i).is_some(),
            ActionKind::Compensation => self.steps[i].compensation.is_some(),
        };
        if !ok {
            return Err(Rejection::UnknownEffect(e.step));
        }
        if s.status == Status::NotStarted {
            return Err(Rejection::NotStarted);
        }
        Ok(())
    }

    fn on_succeeded(
        &self,
        s: &mut SagaState,
        cx: &mut Cx,
        e: EffectId,
        output: Option<String>,
    ) -> Result<Outcome, Rejection> {
        self.check_effect(s, e)?;
        let i = e.step as usize;
        let st = &s.steps[i];
        // The key is the same for every attempt, so a success from any issued
        // attempt is the action's success.
        let issued = |r: &ActionRun| e.attempt >= 1 && e.attempt <= r.attempts;
        match e.action {
            ActionKind::Forward if st.phase == StepPhase::Running && issued(&st.forward) => {
                self.forward_succeeded(s, cx, i, output);
                Ok(Outcome::Applied)
            }
            ActionKind::Compensation if st.phase == StepPhase::Compensating && issued(&st.compensation) => {
                self.compensated(s, i);
                Ok(Outcome::Applied)
            }
            _ => Ok(Outcome::Ignored(Ignored::Stale)),
        }
    }

    fn on_failed(
        &self,
        s: &mut SagaState,
        cx: &mut Cx,
        e: EffectId,
        retryable: bool,
        error: String,
        maybe_done: bool,
    ) -> Result<Outcome, Rejection> {
        self.check_effect(s, e)?;
        let i = e.step as usize;
        let st = &s.steps[i];
        // Only the attempt in flight may fail: an older attempt's failure was
        // already superseded by a retry under the same key.
        let current = |r: &ActionRun| r.in_flight && e.attempt == r.attempts;
        match e.action {
            ActionKind::Forward if st.phase == StepPhase::Running && current(&st.forward) => {
                self.forward_failed(s, cx, i, retryable, error, maybe_done);
                Ok(Outcome::Applied)
            }
            ActionKind::Compensation if st.phase == StepPhase::Compensating && current(&st.compensation) => {
                self.compensation_failed(s, cx, i, retryable, error, maybe_done);
                Ok(Outcome::Applied)
            }
            _ => Ok(Outcome::Ignored(Ignored::Stale)),
        }
    }

    fn on_event(&self, s: &mut SagaState, cx: &mut Cx, ev: Event) -> Result<(Outcome, Option<InputLabel>), Rejection> {
        if s.seen_events.iter().any(|id| *id == ev.id) {
            return Ok((Outcome::Ignored(Ignored::Duplicate), None));
        }
        let rule = self.rules.iter().position(|r| r.kind == ev.kind);
        let remember = |s: &mut SagaState, id: String| {
            if s.seen_events.len() >= SEEN_EVENTS_LIMIT {
                s.seen_events.pop_front();
            }
            s.seen_events.push_back(id);
        };
        let Some(r) = rule else {
            let label = InputLabel::Event { kind: Cow::Owned(ev.kind), outcome: Cow::Borrowed("unrouted") };
            remember(s, ev.id);
            return Ok((Outcome::Ignored(Ignored::Unrouted), Some(label)));
        };
        let rule = self.rules[r];
        let i = self.rule_step[r] as usize;
        let phase = s.steps[i].phase;
        let can_buffer = !s.status.is_terminal() && s.buffered.len() < BUFFER_LIMIT;
        let outcome = match rule.reaction {
            Reaction::ForwardSucceeded | Reaction::ForwardFailed => match phase {
                StepPhase::Running => {
                    if rule.reaction == Reaction::ForwardSucceeded {
                        self.forward_succeeded(s, cx, i, ev.output.clone());
                    } else {
                        self.forward_definitive_failure(s, cx, i, rule.kind.to_string());
                    }
                    Outcome::Applied
                }
                StepPhase::Pending if can_buffer && s.status != Status::Compensating => Outcome::Buffered,
                _ => Outcome::Ignored(Ignored::Late),
            },
            Reaction::CompensationSucceeded => match phase {
                StepPhase::Compensating => {
                    self.compensated(s, i);
                    Outcome::Applied
                }
                StepPhase::Pending | StepPhase::Running | StepPhase::Succeeded if can_buffer => Outcome::Buffered,
                _ => Outcome::Ignored(Ignored::Late),
            },
            Reaction::WaitSucceeded | Reaction::WaitFailed | Reaction::Freeze => match phase {
                StepPhase::Running if s.status != Status::Compensating => {
                    if self.apply_wait(s, cx, i, rule.reaction) {
                        Outcome::Applied
                    } else {
                        Outcome::Ignored(Ignored::Late)
                    }
                }
                StepPhase::Pending if can_buffer && s.status != Status::Compensating => Outcome::Buffered,
                _ => Outcome::Ignored(Ignored::Late),
            },
        };
        if outcome == Outcome::Buffered {
            s.buffered.push(BufferedEvent { rule: r as u16, id: ev.id.clone(), output: ev.output });
        }
        let word = match outcome {
            Outcome::Applied => "applied",
            Outcome::Buffered => "buffered",
            Outcome::Ignored(_) => "late",
        };
        remember(s, ev.id);
        Ok((outcome, Some(InputLabel::Event { kind: Cow::Borrowed(rule.kind), outcome: Cow::Borrowed(word) })))
    }

    fn on_resume(&self, s: &mut SagaState, cx: &mut Cx) -> bool {
        let mut any = false;
        for i in 0..self.steps.len() {
            let st = &mut s.steps[i];
            let (kind, def, run) = match st.phase {
                StepPhase::Running if st.forward.in_flight => {
                    (ActionKind::Forward, self.forward_def(i), &mut st.forward)
                }
                StepPhase::Compensating if st.compensation.in_flight => {
                    (ActionKind::Compensation, self.steps[i].compensation, &mut st.compensation)
                }
                _ => continue,
            };
            let Some(a) = def else { continue };
            run.outcome_unknown = true;
            run.timeout_at = Some(cx.now.plus(a.timeout));
            let attempt = run.attempts;
            let e = self.effect(s, i, kind, a, attempt);
            cx.effects.push(e);
            any = true;
        }
        any
    }

    fn on_timer(&self, s: &mut SagaState, cx: &mut Cx) -> bool {
        let now = cx.now;
        let mut fired = false;
        for i in 0..self.steps.len() {
            if !matches!(s.status, Status::Running | Status::Compensating) {
                break;
            }
            let st = &s.steps[i];
            match (st.phase, self.steps[i].kind) {
                (StepPhase::Running, StepKind::Action(_)) => {
                    let r = &st.forward;
                    if r.in_flight && r.timeout_at.is_some_and(|t| t <= now) {
                        self.forward_failed(s, cx, i, true, "timed out".into(), true);
                        fired = true;
                    } else if !r.in_flight && r.next_attempt_at.is_some_and(|t| t <= now) {
                        self.issue(s, cx, i, ActionKind::Forward);
                        fired = true;
                    }
                }
                (StepPhase::Running, StepKind::Wait(w)) => {
                    if s.status == Status::Running && st.deadline.is_some_and(|t| t <= now) {
                        self.wait_resolved(s, cx, i, w.on_deadline);
                        fired = true;
                    }
                }
                (StepPhase::Compensating, _) => {
                    let r = &st.compensation;
                    if r.in_flight && r.timeout_at.is_some_and(|t| t <= now) {
                        self.compensation_failed(s, cx, i, true, "timed out".into(), true);
                        fired = true;
                    } else if !r.in_flight && r.next_attempt_at.is_some_and(|t| t <= now) {
                        self.issue(s, cx, i, ActionKind::Compensation);
                        fired = true;
                    }
                }
                (StepPhase::Pending, _) => {
                    if self.start_by_due(s, i).is_some_and(|t| t <= now) {
                        self.start_step(s, cx, i);
                        fired = true;
                    }
                }
                _ => {}
            }
        }
        fired
    }

    fn on_operator(&self, s: &mut SagaState, cx: &mut Cx, cmd: OperatorCommand) -> Result<Outcome, Rejection> {
        let invalid = |s: &SagaState, input| Err(Rejection::InvalidState { status: s.status, input });
        if s.status == Status::NotStarted {
            return Err(Rejection::NotStarted);
        }
        match cmd {
            OperatorCommand::RetryNow => {
                if let Some(a) = s.attention.clone() {
                    let i = a.step as usize;
                    match a.action {
                        ActionKind::Forward => s.steps[i].forward.attempts = 0,
                        ActionKind::Compensation => s.steps[i].compensation.attempts = 0,
                    }
                    s.status = a.resume;
                    s.attention = None;
                    self.issue(s, cx, i, a.action);
                    return Ok(Outcome::Applied);
                }
                if !matches!(s.status, Status::Running | Status::Compensating) {
                    return invalid(s, "retry_now");
                }
                let mut any = false;
                for i in 0..self.steps.len() {
                    let st = &s.steps[i];
                    if st.phase == StepPhase::Running && !st.forward.in_flight && st.forward.next_attempt_at.is_some() {
                        self.issue(s, cx, i, ActionKind::Forward);
                        any = true;
                    } else if st.phase == StepPhase::Compensating
                        && !st.compensation.in_flight
                        && st.compensation.next_attempt_at.is_some()
                    {
                        self.issue(s, cx, i, ActionKind::Compensation);
                        any = true;
                    }
                }
                if any {
                    Ok(Outcome::Applied)
                } else {
                    Err(Rejection::NothingToRetry)
                }
            }
            OperatorCommand::Compensate => {
                match s.status {
                    Status::Completed | Status::Compensated => return invalid(s, "compensate"),
                    Status::Compensating => return Ok(Outcome::Ignored(Ignored::Duplicate)),
                    _ => {}
                }
                if s.attention.as_ref().is_some_and(|a| a.resume == Status::Compensating) {
                    return Ok(Outcome::Ignored(Ignored::Duplicate));
                }
                if let Some(step) = self.pivot_passed(s) {
                    return Err(Rejection::PastPivot { step });
                }
                self.begin_compensation(s);
                Ok(Outcome::Applied)
            }
            OperatorCommand::Resolve(res) => {
                if let Some(a) = s.attention.clone() {
                    let i = a.step as usize;
                    return match (a.action, res) {
                        (ActionKind::Forward, Resolution::Succeeded) => {
                            self.forward_succeeded(s, cx, i, None);
                            Ok(Outcome::Applied)
                        }
                        (ActionKind::Forward, Resolution::Failed) => {
                            if self.pivot.is_some_and(|p| i > p as usize) {
                                return Err(Rejection::PastPivot { step: self.steps[i].name });
                            }
                            s.steps[i].phase = StepPhase::Failed;
                            s.steps[i].forward.outcome_unknown = false;
                            s.status = a.resume;
                            s.attention = None;
                            self.begin_compensation(s);
                            Ok(Outcome::Applied)
                        }
                        (ActionKind::Compensation, Resolution::Succeeded) => {
                            self.compensated(s, i);
                            Ok(Outcome::Applied)
                        }
                        (ActionKind::Compensation, Resolution::Failed) => invalid(s, "resolve_failed"),
                    };
                }
                let i = s.cursor as usize;
                let is_wait = i < self.steps.len()
                    && matches!(self.steps[i].kind, StepKind::Wait(_))
                    && matches!(s.steps[i].phase, StepPhase::Running | StepPhase::Frozen);
                if s.status != Status::Running || !is_wait {
                    return invalid(s, "resolve");
                }
                self.wait_resolved(s, cx, i, res);
                Ok(Outcome::Applied)
            }
        }
    }

    /// Moves the saga as far as it can go without new input.
    fn advance(&self, s: &mut SagaState, cx: &mut Cx) {
        let n = self.steps.len();
        // Bounded: each pass either returns or moves a step strictly forward.
        for _ in 0..(4 * n + 4) {
            match s.status {
                Status::Running => {
                    let i = s.cursor as usize;
                    if i >= n {
                        s.status = Status::Completed;
                        s.cursor = n as u16;
                        s.buffered.clear();
                        return;
                    }
                    match s.steps[i].phase {
                        StepPhase::Pending => self.start_step(s, cx, i),
                        StepPhase::Succeeded => s.cursor += 1,
                        StepPhase::Failed => self.begin_compensation(s),
                        _ => return,
                    }
                }
                Status::Compensating => {
                    let mut blocked = None;
                    let mut i = n;
                    while i > 0 {
                        i -= 1;
                        let st = &s.steps[i];
                        match (st.phase, self.steps[i].kind) {
                            (StepPhase::Running | StepPhase::Frozen, StepKind::Wait(_)) => {
                                s.steps[i].phase = StepPhase::Cancelled;
                                s.steps[i].deadline = None;
                            }
                            // An action still settling: wait for a definitive answer
                            // before undoing it (undo-then-do would leak it).
                            (StepPhase::Running, StepKind::Action(_)) => {
                                let r = &st.forward;
                                if !r.in_flight && !r.outcome_unknown && r.next_attempt_at.is_some() {
                                    // Backing off after a definitive "not done": drop it.
                                    s.steps[i].phase = StepPhase::Failed;
                                    s.steps[i].forward.next_attempt_at = None;
                                    continue;
                                }
                                blocked = Some(i);
                                break;
                            }
                            (StepPhase::Succeeded, _) => {
                                let superseded =
                                    self.supersede[i].is_some_and(|j| s.steps[j as usize].succeeded_at.is_some());
                                if self.steps[i].compensation.is_none() || superseded {
                                    continue;
                                }
                                s.steps[i].phase = StepPhase::Compensating;
                                match self.take_buffered(s, i, &[Reaction::CompensationSucceeded]) {
                                    Some(_) => {
                                        self.compensated(s, i);
                                        continue;
                                    }
                                    None => self.issue(s, cx, i, ActionKind::Compensation),
                                }
                                blocked = Some(i);
                                break;
                            }
                            (StepPhase::Compensating, _) => {
                                blocked = Some(i);
                                break;
                            }
                            _ => {}
                        }
                    }
                    match blocked {
                        Some(i) => s.cursor = i as u16,
                        None => {
                            s.status = Status::Compensated;
                            s.cursor = 0;
                            s.buffered.clear();
                        }
                    }
                    return;
                }
                _ => return,
            }
        }
    }
}
