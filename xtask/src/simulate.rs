//! `cargo xtask simulate --sagas N --seed S`: deterministic simulation of
//! purchase sagas through the real engine (see `steps::simulation`).

use anyhow::{bail, Context};
use std::time::Instant;

pub fn main(args: &[String]) -> anyhow::Result<()> {
    let mut sagas: u64 = 1_000;
    let mut seed: u64 = 1;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> anyhow::Result<u64> {
            let v = it.next().with_context(|| format!("{name} needs a value"))?;
            v.parse().with_context(|| format!("{name}: `{v}` is not a number"))
        };
        match a.as_str() {
            "--sagas" => sagas = value("--sagas")?,
            "--seed" => seed = value("--seed")?,
            other => bail!("unknown argument `{other}`; usage: cargo xtask simulate --sagas N --seed S"),
        }
    }
    let started = Instant::now();
    let report = steps::simulation::run(&steps::simulation::SimConfig::new(sagas, seed))
        .map_err(|e| anyhow::anyhow!("simulation could not start: {e}"))?;
    let elapsed = started.elapsed().as_millis();
    let outcomes: Vec<String> = report.outcomes.iter().map(|(s, n)| format!("{}={n}", s.as_str())).collect();
    eprintln!(
        "outcomes: {}; rejected_commands={} crashes={} early_captures={} needs_attention_episodes={}",
        outcomes.join(" "),
        report.rejected_commands,
        report.crashes,
        report.early_captures,
        report.attention_episodes
    );
    if let Some(v) = report.violations.first() {
        eprintln!("first violation: [{}] {} — {}", v.invariant, v.purchase_id, v.detail);
        eprintln!("replay: cargo xtask simulate --sagas {sagas} --seed {seed}");
        eprintln!("saga state and history:\n{}", v.state_json);
        let mut kinds: Vec<&str> = report.violations.iter().map(|v| v.invariant).collect();
        kinds.sort_unstable();
        kinds.dedup();
        eprintln!("violated invariants: {}", kinds.join(", "));
    }
    println!("{}", report.summary_line(elapsed));
    if !report.violations.is_empty() {
        bail!("{} invariant violations", report.violations.len());
    }
    Ok(())
}
