#![allow(dead_code)]
use orchestrator::*;

pub const RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 3,
    initial_delay: Millis(1_000),
    multiplier: 2.0,
    max_delay: Millis(10_000),
    jitter: 0.5,
};

pub fn act(name: &'static str) -> ActionDef {
    ActionDef { name, retry: RETRY, timeout: Millis(5_000) }
}

/// a(comp) -> b(comp) -> wait w (deadline 60 s, freezable) -> p (pivot) -> z
pub fn def() -> Definition {
    Definition::new(
        "test",
        vec![
            StepDef::action("a", act("do_a")).compensate(act("undo_a")),
            StepDef::action("b", act("do_b")).compensate(act("undo_b")),
            StepDef::wait("w", WaitDef { deadline: Some(Millis(60_000)), on_deadline: Resolution::Succeeded }),
            StepDef::action("p", act("do_p")).pivot(),
            StepDef::action("z", act("do_z")),
        ],
        vec![
            EventRule { kind: "b.done", step: "b", reaction: Reaction::ForwardSucceeded },
            EventRule { kind: "b.undone", step: "b", reaction: Reaction::CompensationSucceeded },
            EventRule { kind: "w.ok", step: "w", reaction: Reaction::WaitSucceeded },
            EventRule { kind: "w.no", step: "w", reaction: Reaction::WaitFailed },
            EventRule { kind: "w.freeze", step: "w", reaction: Reaction::Freeze },
        ],
    )
    .expect("valid definition")
}

pub fn t(ms: u64) -> Timestamp {
    Timestamp(ms)
}

pub fn ok(e: &Effect) -> Input {
    Input::Succeeded { effect: e.id, output: Some(format!("out-{}", e.step)) }
}

pub fn fail(e: &Effect, retryable: bool) -> Input {
    Input::Failed { effect: e.id, retryable, error: "boom".into() }
}

pub fn ev(id: &str, kind: &str) -> Input {
    Input::Event(Event { id: id.into(), kind: kind.into(), output: None })
}

/// Starts a saga and returns its first effect.
pub fn started(d: &Definition) -> (SagaState, Effect) {
    let mut s = d.new_saga("s1");
    let tr = d.handle(&mut s, t(0), Input::Start { jitter_seed: 7 }).expect("start");
    (s, tr.effects[0].clone())
}
