//! Engine throughput: a full happy-path saga (start, five results, one
//! event, one timer...) per iteration; prints transitions per second.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use orchestrator::*;
use std::hint::black_box;
use std::time::Instant;

const RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 5,
    initial_delay: Millis(1_000),
    multiplier: 2.0,
    max_delay: Millis(60_000),
    jitter: 0.2,
};

fn act(name: &'static str) -> ActionDef {
    ActionDef { name, retry: RETRY, timeout: Millis(30_000) }
}

fn def() -> Definition {
    Definition::new(
        "bench",
        vec![
            StepDef::action("reserve", act("reserve")).compensate(act("release")),
            StepDef::action("hold", act("authorize")).compensate(act("void")),
            StepDef::wait("confirm", WaitDef { deadline: Some(Millis(60_000)), on_deadline: Resolution::Succeeded }),
            StepDef::action("capture", act("capture")).compensate(act("refund")),
            StepDef::action("pay", act("transfer")).pivot(),
            StepDef::action("sold", act("mark_sold")),
        ],
        vec![EventRule { kind: "confirmed", step: "confirm", reaction: Reaction::WaitSucceeded }],
    )
    .expect("valid")
}

/// One saga with a retry, a duplicate event and a timer; returns transitions.
fn run_saga(d: &Definition, n: u64) -> u64 {
    let mut s = d.new_saga("purchase-0001");
    let mut now = 1_000;
    let mut count = 0;
    let mut step = |s: &mut SagaState, now: u64, input: Input| {
        count += 1;
        d.handle(s, Timestamp(now), input).map(|t| t.effects).unwrap_or_default()
    };
    let mut fx = step(&mut s, now, Input::Start { jitter_seed: n });
    // first attempt fails, retried on the timer
    now += 10;
    step(&mut s, now, Input::Failed { effect: fx[0].id, retryable: true, error: String::new() });
    now = d.poll_timeout(&s).map_or(now, |t| t.0);
    fx = step(&mut s, now, Input::Timer);
    loop {
        now += 10;
        let Some(e) = fx.first() else { break };
        fx = step(&mut s, now, Input::Succeeded { effect: e.id, output: None });
        if s.cursor() == 2 && fx.is_empty() {
            let ev = Event { id: "evt_1".into(), kind: "confirmed".into(), output: None };
            step(&mut s, now, Input::Event(ev.clone()));
            fx = step(&mut s, now, Input::Event(ev));
            fx.extend(d.pending_effects(&s));
        }
    }
    black_box(&s);
    count
}

fn bench(c: &mut Criterion) {
    let d = def();
    let per_saga = run_saga(&d, 0);
    assert_eq!(per_saga, 10);
    // A plain measurement first so the figure is printed in one line.
    let sagas = 200_000u64;
    let start = Instant::now();
    let mut total = 0;
    for n in 0..sagas {
        total += run_saga(&d, n);
    }
    let secs = start.elapsed().as_secs_f64();
    println!("engine: {total} transitions in {secs:.3} s = {:.0} transitions/s (one core)", total as f64 / secs);

    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(per_saga));
    g.bench_function("happy_path_saga", |b| {
        let mut n = 0;
        b.iter(|| {
            n += 1;
            run_saga(&d, n)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
