//! Property tests: random input sequences against the test definition.
mod common;
use common::*;
use orchestrator::*;
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Step {
    /// Answer the n-th in-flight effect (or a made-up one).
    Answer {
        pick: usize,
        success: bool,
        retryable: bool,
        stale_attempt: bool,
    },
    Event {
        id: u8,
        kind: u8,
    },
    TimerAtDue,
    TimerAt(u32),
    Op(u8),
    Resume,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0usize..3, any::<bool>(), any::<bool>(), prop::bool::weighted(0.1))
            .prop_map(|(pick, success, retryable, stale_attempt)| Step::Answer { pick, success, retryable, stale_attempt }),
        2 => (0u8..6, 0u8..6).prop_map(|(id, kind)| Step::Event { id, kind }),
        3 => Just(Step::TimerAtDue),
        1 => (0u32..200_000).prop_map(Step::TimerAt),
        1 => (0u8..4).prop_map(Step::Op),
        1 => Just(Step::Resume),
    ]
}

const KINDS: [&str; 6] = ["b.done", "b.undone", "w.ok", "w.no", "w.freeze", "nobody.cares"];

fn to_input(d: &Definition, s: &SagaState, now: &mut u64, st: &Step) -> Input {
    match st {
        Step::Answer { pick, success, retryable, stale_attempt } => {
            let pending = d.pending_effects(s);
            let mut id = match pending.get(*pick) {
                Some(e) => e.id,
                None => EffectId { step: (*pick % 5) as u16, action: ActionKind::Forward, attempt: 1 },
            };
            if *stale_attempt {
                id.attempt = id.attempt.saturating_sub(1);
            }
            // Failures split three ways: definitive, retryable, and unknown
            // (the provider's 5xx), picked by `retryable` and the attempt's parity.
            match (*success, *retryable, id.attempt % 2 == 0) {
                (true, _, _) => Input::Succeeded { effect: id, output: None },
                (false, true, true) => Input::OutcomeUnknown { effect: id, error: "503".into() },
                (false, retryable, _) => Input::Failed { effect: id, retryable, error: "x".into() },
            }
        }
        Step::Event { id, kind } => {
            Input::Event(Event { id: format!("e{id}"), kind: KINDS[*kind as usize].into(), output: None })
        }
        Step::TimerAtDue => {
            if let Some(t) = d.poll_timeout(s) {
                *now = (*now).max(t.0);
            }
            Input::Timer
        }
        Step::TimerAt(dt) => {
            *now += *dt as u64;
            Input::Timer
        }
        Step::Op(0) => Input::Operator(OperatorCommand::RetryNow),
        Step::Op(1) => Input::Operator(OperatorCommand::Compensate),
        Step::Op(2) => Input::Operator(OperatorCommand::Resolve(Resolution::Succeeded)),
        Step::Op(_) => Input::Operator(OperatorCommand::Resolve(Resolution::Failed)),
        Step::Resume => Input::Resume,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_inputs_keep_every_rule(steps in prop::collection::vec(step(), 1..80), seed in any::<u64>()) {
        let d = def();
        let mut s = d.new_saga("s1");
        d.handle(&mut s, t(0), Input::Start { jitter_seed: seed }).unwrap();
        let mut now = 0u64;
        let mut ever_compensating = false;
        let mut last_comp_step: Option<u16> = None;
        let mut max_cursor_running = 0u16;
        for st in &steps {
            let input = to_input(&d, &s, &mut now, st);
            let before = s.clone();
            match d.handle(&mut s, t(now), input.clone()) {
                Err(_) => prop_assert_eq!(&s, &before, "a rejection leaves the state untouched"),
                Ok(tr) => {
                    if matches!(tr.outcome, Outcome::Ignored(Ignored::Duplicate | Ignored::Stale | Ignored::NothingDue)) {
                        prop_assert_eq!(&s, &before, "a no-op changes nothing");
                    }
                    for e in &tr.effects {
                        let key = d.idempotency_key("s1", e.id.step, e.id.action).unwrap();
                        prop_assert_eq!(&e.key, &key, "keys are stable per step and action");
                        if e.id.action == ActionKind::Compensation {
                            prop_assert!(s.steps()[e.id.step as usize].succeeded_at.is_some(), "only completed steps are compensated");
                            if let Some(prev) = last_comp_step {
                                prop_assert!(e.id.step <= prev, "compensations run in reverse order");
                            }
                            last_comp_step = Some(e.id.step);
                        }
                    }
                    prop_assert_eq!(tr.wake_at, d.poll_timeout(&s));
                }
            }
            if before.status().is_terminal() {
                prop_assert_eq!(s.status(), before.status(), "terminal is terminal");
            }
            if s.status() == Status::Compensating {
                ever_compensating = true;
            }
            if ever_compensating {
                prop_assert!(s.status() != Status::Running && s.status() != Status::Completed, "never forward again after compensating");
            }
            if s.status() == Status::Running {
                prop_assert!(s.cursor() >= max_cursor_running, "never moves backwards");
                max_cursor_running = s.cursor();
            }
            // Replaying the same event is a no-op.
            if let Input::Event(ev) = &input {
                let snap = s.clone();
                let tr = d.handle(&mut s, t(now), Input::Event(ev.clone())).unwrap();
                prop_assert_eq!(tr.outcome, Outcome::Ignored(Ignored::Duplicate));
                prop_assert_eq!(&s, &snap);
            }
            prop_assert!(s.history().count() <= HISTORY_LIMIT);
            let back = SagaState::from_json(&s.to_json().unwrap()).unwrap();
            prop_assert_eq!(&back, &s, "state round-trips through JSON");
        }
    }

    #[test]
    fn backoff_stays_within_bounds(attempt in 1u32..40, entropy in any::<u64>(), jitter in 0.0f64..1.0) {
        let p = RetryPolicy { jitter, ..RETRY };
        let d = p.delay(attempt, entropy);
        prop_assert!(d <= p.max_delay);
        let base = RetryPolicy { jitter: 0.0, ..p }.delay(attempt, 0);
        prop_assert!(d.0 as f64 >= base.0 as f64 * (1.0 - jitter) - 1.0);
    }
}
