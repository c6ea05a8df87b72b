mod common;
use common::*;
use orchestrator::*;

fn one(tr: &Transition) -> Effect {
    assert_eq!(tr.effects.len(), 1, "{tr:?}");
    tr.effects[0].clone()
}

/// Drives a..b to success and returns the state waiting at `w`.
fn at_wait(d: &Definition) -> SagaState {
    let (mut s, a) = started(d);
    let b = one(&d.handle(&mut s, t(10), ok(&a)).unwrap());
    let tr = d.handle(&mut s, t(20), ok(&b)).unwrap();
    assert!(tr.effects.is_empty());
    assert_eq!(s.position(), Position { status: Status::Running, step: 2 });
    s
}

#[test]
fn happy_path_completes_with_stable_keys() {
    let d = def();
    let (mut s, a) = started(&d);
    assert_eq!(a.key, "s1:a:do_a");
    assert_eq!(d.poll_timeout(&s), Some(t(5_000)), "attempt timeout is the wake-up");
    let b = one(&d.handle(&mut s, t(10), ok(&a)).unwrap());
    assert_eq!(b.key, "s1:b:do_b");
    d.handle(&mut s, t(20), ok(&b)).unwrap();
    assert_eq!(d.poll_timeout(&s), Some(t(60_020)), "wait deadline is the wake-up");
    let tr = d.handle(&mut s, t(60_020), Input::Timer).unwrap();
    let p = one(&tr);
    assert_eq!(p.key, "s1:p:do_p");
    let z = one(&d.handle(&mut s, t(60_030), ok(&p)).unwrap());
    let tr = d.handle(&mut s, t(60_040), ok(&z)).unwrap();
    assert_eq!(s.status(), Status::Completed);
    assert_eq!(tr.wake_at, None);
    assert_eq!(s.step("a").unwrap().output.as_deref(), Some("out-a"));
    assert_eq!(s.history().count(), 6);
}

#[test]
fn retry_uses_backoff_and_same_key() {
    let d = def();
    let (mut s, a) = started(&d);
    let tr = d.handle(&mut s, t(100), fail(&a, true)).unwrap();
    assert!(tr.effects.is_empty());
    let due = tr.wake_at.unwrap();
    // initial delay 1 s with up to 50 % jitter
    assert!(due >= t(600) && due <= t(1_100), "{due:?}");
    assert_eq!(d.handle(&mut s, t(due.0 - 1), Input::Timer).unwrap().outcome, Outcome::Ignored(Ignored::NothingDue));
    let a2 = one(&d.handle(&mut s, due, Input::Timer).unwrap());
    assert_eq!(a2.key, a.key);
    assert_eq!(a2.id.attempt, 2);
    // the first attempt's failure, arriving late, is stale
    let tr = d.handle(&mut s, due, fail(&a, true)).unwrap();
    assert_eq!(tr.outcome, Outcome::Ignored(Ignored::Stale));
    // but a success from the first attempt is the same operation: accepted
    let tr = d.handle(&mut s, due, ok(&a)).unwrap();
    assert_eq!(tr.outcome, Outcome::Applied);
    assert_eq!(s.cursor(), 1);
}

#[test]
fn jitter_is_deterministic_per_seed() {
    let d = def();
    let run = |seed| {
        let mut s = d.new_saga("s1");
        let a = d.handle(&mut s, t(0), Input::Start { jitter_seed: seed }).unwrap().effects[0].clone();
        d.handle(&mut s, t(0), fail(&a, true)).unwrap().wake_at
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
}

#[test]
fn non_retryable_failure_compensates_completed_steps_in_reverse() {
    let d = def();
    let mut s = at_wait(&d);
    let tr = d.handle(&mut s, t(30), ev("e1", "w.no")).unwrap();
    let ub = one(&tr);
    assert_eq!(ub.key, "s1:b:undo_b");
    assert_eq!(s.status(), Status::Compensating);
    let ua = one(&d.handle(&mut s, t(40), ok(&ub)).unwrap());
    assert_eq!(ua.key, "s1:a:undo_a");
    d.handle(&mut s, t(50), ok(&ua)).unwrap();
    assert_eq!(s.status(), Status::Compensated);
    assert_eq!(s.step("w").unwrap().phase, StepPhase::Failed);
}

#[test]
fn failed_step_itself_is_not_compensated() {
    let d = def();
    let (mut s, a) = started(&d);
    let b = one(&d.handle(&mut s, t(10), ok(&a)).unwrap());
    let ua = one(&d.handle(&mut s, t(20), fail(&b, false)).unwrap());
    assert_eq!(ua.key, "s1:a:undo_a");
}

#[test]
fn exhausted_definitive_retries_compensate() {
    let d = def();
    let (mut s, a) = started(&d);
    let mut b = one(&d.handle(&mut s, t(10), ok(&a)).unwrap());
    let mut now = 10;
    loop {
        now += 10;
        let tr = d.handle(&mut s, t(now), fail(&b, true)).unwrap();
        if s.status() == Status::Compensating {
            assert_eq!(one(&tr).key, "s1:a:undo_a");
            break;
        }
        now = tr.wake_at.unwrap().0;
        b = one(&d.handle(&mut s, t(now), Input::Timer).unwrap());
        assert!(b.id.attempt <= 3);
    }
    assert_eq!(s.step("b").unwrap().phase, StepPhase::Failed);
}

#[test]
fn unknown_outcomes_exhausted_need_attention_never_a_guess() {
    // A 5xx may have moved money: after the last retry the saga must not
    // compensate as if the step never happened.
    let d = def();
    let (mut s, a) = started(&d);
    let mut b = one(&d.handle(&mut s, t(10), ok(&a)).unwrap());
    let mut now = 10;
    loop {
        now += 10;
        let tr = d.handle(&mut s, t(now), Input::OutcomeUnknown { effect: b.id, error: "503".into() }).unwrap();
        assert_ne!(s.status(), Status::Compensating, "compensated after an unknown outcome");
        if s.status() == Status::NeedsAttention {
            assert!(tr.effects.is_empty());
            break;
        }
        now = tr.wake_at.unwrap().0;
        b = one(&d.handle(&mut s, t(now), Input::Timer).unwrap());
        assert_eq!(b.key, "s1:b:do_b", "every retry under the same key");
        assert!(b.id.attempt <= 3);
    }
    assert_eq!(s.attention().map(|a| a.step_name.as_ref()), Some("b"));
    // A definitive answer (say the provider's replay of the key) resolves it.
    let tr = d.handle(&mut s, t(now + 1), Input::Operator(OperatorCommand::RetryNow)).unwrap();
    let retry = one(&tr);
    d.handle(&mut s, t(now + 2), ok(&retry)).unwrap();
    assert_eq!(s.step("b").unwrap().phase, StepPhase::Succeeded);
}

#[test]
fn timeouts_exhausted_need_attention_and_a_late_success_resumes() {
    let d = def();
    let (mut s, a) = started(&d);
    let b = one(&d.handle(&mut s, t(10), ok(&a)).unwrap());
    let mut now;
    loop {
        now = d.poll_timeout(&s).unwrap().0;
        d.handle(&mut s, t(now), Input::Timer).unwrap();
        if s.status() == Status::NeedsAttention {
            break;
        }
    }
    let att = s.attention().unwrap();
    assert_eq!((att.step_name.as_ref(), att.action), ("b", ActionKind::Forward));
    assert_eq!(d.poll_timeout(&s), None, "an operator, not a timer, resumes it");
    // the webhook for the first attempt finally arrives
    d.handle(&mut s, t(now + 1), ev("late", "b.done")).unwrap();
    assert_eq!(s.position(), Position { status: Status::Running, step: 2 });
    let _ = b;
}

#[test]
fn compensation_out_of_retries_needs_attention_until_retry_now() {
    let d = def();
    let mut s = at_wait(&d);
    let mut ub = one(&d.handle(&mut s, t(30), Input::Operator(OperatorCommand::Compensate)).unwrap());
    loop {
        let tr = d.handle(&mut s, t(40), fail(&ub, true)).unwrap();
        match tr.wake_at {
            Some(w) => ub = one(&d.handle(&mut s, w, Input::Timer).unwrap()),
            None => break,
        }
    }
    assert_eq!(s.status(), Status::NeedsAttention);
    let att = s.attention().unwrap().clone();
    assert_eq!((att.step, att.action, att.resume), (1, ActionKind::Compensation, Status::Compensating));
    assert_eq!(att.error, "boom");
    let again = one(&d.handle(&mut s, t(100_000), Input::Operator(OperatorCommand::RetryNow)).unwrap());
    assert_eq!(again.key, "s1:b:undo_b");
    assert_eq!(again.id.attempt, 1, "fresh budget");
    let ua = one(&d.handle(&mut s, t(100_001), ok(&again)).unwrap());
    d.handle(&mut s, t(100_002), ok(&ua)).unwrap();
    assert_eq!(s.status(), Status::Compensated);
}

#[test]
fn duplicate_event_changes_nothing() {
    let d = def();
    let mut s = at_wait(&d);
    d.handle(&mut s, t(30), ev("e1", "w.freeze")).unwrap();
    let before = s.clone();
    let tr = d.handle(&mut s, t(31), ev("e1", "w.freeze")).unwrap();
    assert_eq!(tr.outcome, Outcome::Ignored(Ignored::Duplicate));
    assert_eq!(s, before);
}

#[test]
fn late_event_never_moves_backwards() {
    let d = def();
    let mut s = at_wait(&d);
    // b's webhook arrives after its HTTP result already completed it
    let tr = d.handle(&mut s, t(30), ev("b1", "b.done")).unwrap();
    assert_eq!(tr.outcome, Outcome::Ignored(Ignored::Late));
    assert_eq!(s.position(), Position { status: Status::Running, step: 2 });
    assert_eq!(s.history().last().unwrap().input, InputLabel::Event { kind: "b.done".into(), outcome: "late".into() });
    // a wait event after the saga compensated is late too
    d.handle(&mut s, t(40), Input::Operator(OperatorCommand::Compensate)).unwrap();
    let tr = d.handle(&mut s, t(41), ev("w1", "w.ok")).unwrap();
    assert_eq!(tr.outcome, Outcome::Ignored(Ignored::Late));
    assert_eq!(s.status(), Status::Compensating);
}

#[test]
fn early_event_is_kept_until_its_step_starts() {
    let d = def();
    let (mut s, a) = started(&d);
    let tr = d.handle(&mut s, t(5), ev("w1", "w.ok")).unwrap();
    assert_eq!(tr.outcome, Outcome::Buffered);
    assert_eq!(s.cursor(), 0);
    let b = one(&d.handle(&mut s, t(10), ok(&a)).unwrap());
    // w starts and immediately consumes the buffered confirmation: p is issued
    let p = one(&d.handle(&mut s, t(20), ok(&b)).unwrap());
    assert_eq!(p.key, "s1:p:do_p");
}

#[test]
fn early_forward_event_completes_step_without_performing_it() {
    let d = def();
    let (mut s, a) = started(&d);
    assert_eq!(d.handle(&mut s, t(5), ev("bd", "b.done")).unwrap().outcome, Outcome::Buffered);
    let tr = d.handle(&mut s, t(10), ok(&a)).unwrap();
    assert!(tr.effects.is_empty());
    assert_eq!(s.cursor(), 2);
}

#[test]
fn freeze_suspends_deadline_until_resolved() {
    let d = def();
    let mut s = at_wait(&d);
    d.handle(&mut s, t(30), ev("f", "w.freeze")).unwrap();
    assert_eq!(s.step("w").unwrap().phase, StepPhase::Frozen);
    assert_eq!(d.poll_timeout(&s), None);
    let tr = d.handle(&mut s, t(1_000_000), Input::Timer).unwrap();
    assert_eq!(tr.outcome, Outcome::Ignored(Ignored::NothingDue));
    // a buyer-style success while frozen is not enough
    assert_eq!(d.handle(&mut s, t(1_000_001), ev("ok", "w.ok")).unwrap().outcome, Outcome::Ignored(Ignored::Late));
    let tr = d.handle(&mut s, t(1_000_002), Input::Operator(OperatorCommand::Resolve(Resolution::Failed))).unwrap();
    assert_eq!(one(&tr).key, "s1:b:undo_b");
}

#[test]
fn pivot_allows_only_forward() {
    let d = def();
    let mut s = at_wait(&d);
    let p = one(&d.handle(&mut s, t(30), ev("ok", "w.ok")).unwrap());
    // pivot in flight: it may take effect, so no compensation
    let err = d.handle(&mut s, t(31), Input::Operator(OperatorCommand::Compensate)).unwrap_err();
    assert_eq!(err, Rejection::PastPivot { step: "p" });
    let z = one(&d.handle(&mut s, t(40), ok(&p)).unwrap());
    // a definitive failure after the pivot cannot compensate: attention
    d.handle(&mut s, t(50), fail(&z, false)).unwrap();
    assert_eq!(s.status(), Status::NeedsAttention);
    assert_eq!(s.attention().unwrap().resume, Status::Running);
    let err = d.handle(&mut s, t(51), Input::Operator(OperatorCommand::Resolve(Resolution::Failed))).unwrap_err();
    assert_eq!(err, Rejection::PastPivot { step: "z" });
    d.handle(&mut s, t(52), Input::Operator(OperatorCommand::Resolve(Resolution::Succeeded))).unwrap();
    assert_eq!(s.status(), Status::Completed);
}

#[test]
fn pivot_definitive_failure_compensates() {
    let d = def();
    let mut s = at_wait(&d);
    let p = one(&d.handle(&mut s, t(30), ev("ok", "w.ok")).unwrap());
    let ub = one(&d.handle(&mut s, t(31), fail(&p, false)).unwrap());
    assert_eq!(ub.key, "s1:b:undo_b");
}

#[test]
fn pivot_out_of_retries_needs_attention_not_compensation() {
    let d = def();
    let mut s = at_wait(&d);
    let mut p = one(&d.handle(&mut s, t(30), ev("ok", "w.ok")).unwrap());
    loop {
        let tr = d.handle(&mut s, t(40), fail(&p, true)).unwrap();
        match tr.wake_at {
            Some(w) => p = one(&d.handle(&mut s, w, Input::Timer).unwrap()),
            None => break,
        }
    }
    assert_eq!(s.status(), Status::NeedsAttention);
    let p = one(&d.handle(&mut s, t(50), Input::Operator(OperatorCommand::RetryNow)).unwrap());
    assert_eq!(p.key, "s1:p:do_p");
}

#[test]
fn compensation_waits_for_an_in_flight_step() {
    let d = def();
    let (mut s, a) = started(&d);
    let b = one(&d.handle(&mut s, t(10), ok(&a)).unwrap());
    // cancel while b is in flight: nothing is undone yet
    let tr = d.handle(&mut s, t(11), Input::Operator(OperatorCommand::Compensate)).unwrap();
    assert!(tr.effects.is_empty());
    assert_eq!(s.cursor(), 1);
    // b turns out to have succeeded: undo b, then a
    let ub = one(&d.handle(&mut s, t(12), ok(&b)).unwrap());
    assert_eq!(ub.key, "s1:b:undo_b");
}

#[test]
fn backing_off_step_is_dropped_when_compensating() {
    let d = def();
    let (mut s, a) = started(&d);
    let b = one(&d.handle(&mut s, t(10), ok(&a)).unwrap());
    d.handle(&mut s, t(11), fail(&b, true)).unwrap();
    let ua = one(&d.handle(&mut s, t(12), Input::Operator(OperatorCommand::Compensate)).unwrap());
    assert_eq!(ua.key, "s1:a:undo_a");
    assert_eq!(s.step("b").unwrap().phase, StepPhase::Failed);
}

#[test]
fn buffered_compensation_event_completes_it_without_an_effect() {
    let d = def();
    let mut s = at_wait(&d);
    assert_eq!(d.handle(&mut s, t(30), ev("u", "b.undone")).unwrap().outcome, Outcome::Buffered);
    let ua = one(&d.handle(&mut s, t(31), ev("n", "w.no")).unwrap());
    assert_eq!(ua.key, "s1:a:undo_a");
}

#[test]
fn operator_rejections_are_typed_and_leave_state_alone() {
    let d = def();
    let mut fresh = d.new_saga("x");
    assert_eq!(d.handle(&mut fresh, t(0), Input::Operator(OperatorCommand::RetryNow)), Err(Rejection::NotStarted));
    let (mut s, a) = started(&d);
    let before = s.clone();
    let err = d.handle(&mut s, t(1), Input::Operator(OperatorCommand::Resolve(Resolution::Succeeded))).unwrap_err();
    assert!(matches!(err, Rejection::InvalidState { status: Status::Running, .. }));
    assert_eq!(d.handle(&mut s, t(1), Input::Operator(OperatorCommand::RetryNow)), Err(Rejection::NothingToRetry));
    let bogus =
        Input::Succeeded { effect: EffectId { step: 99, action: ActionKind::Forward, attempt: 1 }, output: None };
    assert_eq!(d.handle(&mut s, t(1), bogus), Err(Rejection::UnknownEffect(99)));
    let no_comp = Input::Failed {
        effect: EffectId { step: 2, action: ActionKind::Compensation, attempt: 1 },
        retryable: true,
        error: String::new(),
    };
    assert_eq!(d.handle(&mut s, t(1), no_comp), Err(Rejection::UnknownEffect(2)));
    assert_eq!(s, before);
    let _ = a;
}

#[test]
fn retry_now_skips_backoff() {
    let d = def();
    let (mut s, a) = started(&d);
    d.handle(&mut s, t(1), fail(&a, true)).unwrap();
    let a2 = one(&d.handle(&mut s, t(2), Input::Operator(OperatorCommand::RetryNow)).unwrap());
    assert_eq!((a2.key.as_str(), a2.id.attempt), ("s1:a:do_a", 2));
}

#[test]
fn start_twice_is_a_no_op() {
    let d = def();
    let (mut s, _) = started(&d);
    let before = s.clone();
    let tr = d.handle(&mut s, t(9), Input::Start { jitter_seed: 1 }).unwrap();
    assert_eq!(tr.outcome, Outcome::Ignored(Ignored::Duplicate));
    assert_eq!(s, before);
}

#[test]
fn pending_effects_re_perform_under_the_same_key() {
    let d = def();
    let (s, a) = started(&d);
    let json = s.to_json().unwrap();
    let restored = SagaState::from_json(&json).unwrap();
    d.check(&restored).unwrap();
    assert_eq!(restored, s);
    assert_eq!(d.pending_effects(&restored), vec![a]);
}

#[test]
fn newer_schema_is_refused_and_other_definitions_detected() {
    let d = def();
    let (s, _) = started(&d);
    let json = s.to_json().unwrap().replace("\"schema_version\":1", "\"schema_version\":99");
    assert!(matches!(SagaState::from_json(&json), Err(StateError::TooNew { found: 99, .. })));
    let other = Definition::new("other", vec![StepDef::action("a", act("x"))], vec![]).unwrap();
    assert_eq!(other.check(&s), Err(Rejection::Incompatible("other")));
    let mut s2 = s.clone();
    assert!(other.handle(&mut s2, t(1), Input::Timer).is_err());
}

#[test]
fn history_is_bounded() {
    let d = def();
    let mut s = at_wait(&d);
    for i in 0..(HISTORY_LIMIT * 3) {
        d.handle(&mut s, t(100 + i as u64), ev(&format!("u{i}"), "unknown.kind")).unwrap();
    }
    assert_eq!(s.history().count(), HISTORY_LIMIT);
    assert!(s.transitions() as usize > HISTORY_LIMIT);
}

#[test]
fn start_by_runs_a_step_ahead_of_the_cursor() {
    let d = Definition::new(
        "guarded",
        vec![
            StepDef::action("hold", act("authorize")).compensate(act("void")).superseded_by("capture"),
            StepDef::wait("wait", WaitDef { deadline: None, on_deadline: Resolution::Succeeded }),
            StepDef::action("capture", act("capture")).compensate(act("refund")).start_by("hold", Millis(1_000)),
            StepDef::action("pay", act("transfer")).pivot(),
        ],
        vec![EventRule { kind: "no", step: "wait", reaction: Reaction::WaitFailed }],
    )
    .unwrap();
    let mut s = d.new_saga("g");
    let h = d.handle(&mut s, t(0), Input::Start { jitter_seed: 0 }).unwrap().effects[0].clone();
    let tr = d.handle(&mut s, t(10), ok(&h)).unwrap();
    assert_eq!(tr.wake_at, Some(t(1_000)), "guard counts from the hold's start");
    let c = one(&d.handle(&mut s, t(1_000), Input::Timer).unwrap());
    assert_eq!(c.key, "g:capture:capture");
    assert_eq!(s.cursor(), 1, "still waiting");
    d.handle(&mut s, t(1_010), ok(&c)).unwrap();
    // compensation refunds the capture and skips the superseded void
    let r = one(&d.handle(&mut s, t(2_000), ev("n", "no")).unwrap());
    assert_eq!(r.key, "g:capture:refund");
    let tr = d.handle(&mut s, t(2_010), ok(&r)).unwrap();
    assert!(tr.effects.is_empty());
    assert_eq!(s.status(), Status::Compensated);
}

#[test]
fn definitions_are_validated() {
    let two = Definition::new(
        "x",
        vec![StepDef::action("a", act("a")).pivot(), StepDef::action("b", act("b")).pivot()],
        vec![],
    );
    assert_eq!(two.unwrap_err(), DefinitionError::TwoPivots);
    let bad_rule = Definition::new(
        "x",
        vec![StepDef::action("a", act("a"))],
        vec![EventRule { kind: "k", step: "a", reaction: Reaction::Freeze }],
    );
    assert!(matches!(bad_rule.unwrap_err(), DefinitionError::RuleMismatch { .. }));
    assert_eq!(Definition::new("x", vec![], vec![]).unwrap_err(), DefinitionError::NoSteps);
}

#[test]
fn backoff_grows_and_caps() {
    let p = RETRY;
    assert_eq!(RetryPolicy { jitter: 0.0, ..p }.delay(1, 0), Millis(1_000));
    assert_eq!(RetryPolicy { jitter: 0.0, ..p }.delay(2, 0), Millis(2_000));
    assert_eq!(RetryPolicy { jitter: 0.0, ..p }.delay(10, 0), Millis(10_000));
    let j = p.delay(1, u64::MAX);
    assert!(j >= Millis(500) && j < Millis(1_000));
}
