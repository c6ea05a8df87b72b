//! Project automation, run as `cargo xtask <task>`. Run `cargo xtask help`.

mod bench_ads;
mod bench_saga;
mod bench_search;
mod crash;
mod demo;
mod direct;
mod paths;
mod postgres;
mod process;
mod search_eval;
mod seed;
mod simulate;
mod stack;
mod tools;
mod ui;
mod workers;

use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};

use stack::{Profile, Secrets};

/// Set by Ctrl-C (or SIGTERM); every wait loop checks it.
static STOP: AtomicBool = AtomicBool::new(false);

pub fn interrupted() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Native crates: unit, property and doc tests that need no running stack.
const NATIVE_PACKAGES: &[&str] =
    &["orchestrator", "steps", "webhooks", "worker-common", "marketplace", "payments", "ads", "sandbox-psp", "xtask"];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (task, rest) = match args.split_first() {
        Some((task, rest)) => (task.as_str(), rest),
        None => ("help", &[][..]),
    };
    let result = match task {
        "dev" => dev(rest),
        "test" => test(rest),
        "build" => build(rest),
        "simulate" => simulate::main(rest),
        "demo" => demo::main(rest),
        "drill" => drill(rest),
        "bench" => bench(rest),
        "seed-listings" => install_stop_handler().and_then(|()| seed::main(rest)),
        "eval" => match rest.split_first() {
            Some((what, rest)) if what == "search" => install_stop_handler().and_then(|()| search_eval::main(rest)),
            _ => Err(anyhow::anyhow!("usage: cargo xtask eval search [--count N]")),
        },
        "help" | "--help" | "-h" => {
            print_help();
            Ok(())
        }
        other => Err(anyhow::anyhow!("unknown task `{other}`; run `cargo xtask help`")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_help() {
    println!(
        "cargo xtask <task>\n\n\
         Tasks:\n  \
         dev [--fresh] [--fresh-tools]   install what is missing, build, and run the local stack until Ctrl-C\n  \
         test [--fresh-tools]            every test: native unit/property tests, then end-to-end on a throw-away stack\n  \
         build                           build the four Workers (Rust -> Wasm) into workers/<name>/build\n  \
         simulate --sagas N --seed S     deterministic simulation of purchase sagas with injected faults\n  \
         demo                            one complete purchase against the running dev stack, printed as a timeline\n  \
         drill <name>|all                a reliability drill on a throw-away stack: chaos, last-unit, one-purchase, hostile, needs-attention, crash\n  \
         bench saga [--sagas N] [--concurrency C]  the purchase saga against Restate and Cloudflare Workflows (docs/benchmarks.md)\n  \
         bench ads [--seconds N] [--connections C] 10,000 campaigns into a throw-away stack, then p50/p99 and req/s of GET /v1/ads at the Worker (--url, --via-wrangler-proxy, --tmpfs: docs/ads.md)\n  \
         bench search [--count N] [--no-http]     100,000 listings: recall@10 of HNSW vs exact, p50/p95 of the database part (docs/search.md)\n  \
         seed-listings --count N [--seed S]        N realistic listings, embedded in batches, into the running dev stack\n  \
         eval search [--count N]                   search relevance (nDCG@10, hybrid vs full-text) and filters on N seeded listings\n\n\
         Flags:\n  \
         --fresh        start the dev stack from empty state (PostgreSQL, Durable Objects, KV)\n  \
         --fresh-tools  reinstall the cached tools (worker-build, wasm-bindgen, PostgreSQL)\n"
    );
}

struct Flags {
    fresh: bool,
    fresh_tools: bool,
}

fn flags(args: &[String], allowed: &[&str]) -> Result<Flags> {
    for arg in args {
        if !allowed.contains(&arg.as_str()) {
            bail!("unknown flag `{arg}` (allowed: {})", allowed.join(", "));
        }
    }
    let has = |f: &str| args.iter().any(|a| a == f);
    Ok(Flags { fresh: has("--fresh"), fresh_tools: has("--fresh-tools") })
}

fn install_stop_handler() -> Result<()> {
    ctrlc::set_handler(|| {
        if STOP.swap(true, Ordering::SeqCst) {
            eprintln!("\nstill stopping; press Ctrl-C again in a moment if it hangs");
        } else {
            eprintln!("\nstopping the stack...");
        }
    })?;
    Ok(())
}

fn dev(args: &[String]) -> Result<()> {
    let flags = flags(args, &["--fresh", "--fresh-tools"])?;
    install_stop_handler()?;
    let secrets = Secrets::from_env();
    ui::info("secrets (set these environment variables to override):");
    secrets.print();
    let tools = tools::ensure(flags.fresh_tools, Profile::Dev.database_url_override().is_none())?;
    workers::build_all(&tools)?;
    let mut stack = stack::start(Profile::Dev, &tools, flags.fresh, &secrets)?;
    println!("all services ready; state persists in {}. Ctrl-C stops everything.", Profile::Dev.dir().display());
    let outcome = stack::supervise(&mut stack, &STOP);
    let killed = stack.supervisor.stop_all();
    eprintln!(
        "stopped every service{}",
        if killed > 0 { format!(" ({killed} needed SIGKILL)") } else { String::new() }
    );
    outcome
}

fn build(args: &[String]) -> Result<()> {
    flags(args, &[])?;
    let tools = tools::ensure(false, false)?;
    workers::build_all(&tools)
}

fn test(args: &[String]) -> Result<()> {
    let flags = flags(args, &["--fresh-tools"])?;
    install_stop_handler()?;
    let step = ui::step("native unit and property tests");
    let mut native = Command::new("cargo");
    native.arg("test").current_dir(paths::root());
    for package in NATIVE_PACKAGES {
        native.args(["-p", package]);
    }
    process::run("native tests", &mut native, "see the failing test above")?;
    step.done();

    let tools = tools::ensure(flags.fresh_tools, Profile::Test.database_url_override().is_none())?;
    workers::build_all(&tools)?;
    let step = ui::step("compiling the end-to-end tests");
    process::run(
        "compiling e2e tests",
        Command::new("cargo").args(["test", "-p", "e2e", "--no-run"]).current_dir(paths::root()),
        "see the compiler output above",
    )?;
    step.done();

    // The crash drill kills and restarts workerd, so it runs on a stack of
    // its own, first; it is a regression test like any other.
    let step = ui::step("crash drill: SIGKILL the payments Worker under load, restart it, check every saga");
    crash::run(&tools).context("the crash drill failed")?;
    step.done();

    let secrets = Secrets::from_env();
    let step = ui::step("starting a throw-away stack (test ports, .local/test)");
    let mut stack = stack::start(Profile::Test, &tools, true, &secrets)?;
    step.done();

    let step = ui::step("end-to-end tests against the running stack");
    let status = e2e_command(&stack, &secrets, &[]).status();
    stack.supervisor.stop_all();
    drop(step);
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => {
            bail!("end-to-end tests failed ({s}); service logs are in {}", Profile::Test.dir().join("logs").display())
        }
        Err(e) => bail!("could not run the end-to-end tests: {e}"),
    }
}

/// `cargo test -p e2e <args>` pointed at a running stack.
fn e2e_command(stack: &stack::Stack, secrets: &Secrets, args: &[&str]) -> Command {
    let mut e2e = Command::new("cargo");
    e2e.args(["test", "-p", "e2e"]).args(args).current_dir(paths::root());
    for worker in workers::WORKERS {
        e2e.env(format!("E2E_{}_URL", worker.to_uppercase().replace('-', "_")), stack.url(worker));
    }
    e2e.env("E2E_DATABASE_URL", &stack.database_url);
    for (name, value) in &secrets.0 {
        e2e.env(format!("E2E_{name}"), value);
    }
    e2e
}

/// The reliability drills of tests/tests/drills.rs, by short name.
const DRILLS: &[(&str, &str)] = &[
    ("chaos", "chaos"),
    ("last-unit", "race_for_the_last_unit"),
    ("one-purchase", "races_on_one_purchase"),
    ("hostile", "hostile_input"),
    ("needs-attention", "exhausted_retries_need_attention_and_resume"),
];

/// `cargo xtask drill <name>|all`: one drill on a throw-away test stack, with
/// its report printed.
fn drill(args: &[String]) -> Result<()> {
    let mut names: Vec<&str> = DRILLS.iter().map(|(n, _)| *n).collect();
    names.push("crash");
    if let [name] = args {
        if name == "crash" {
            // Kills and restarts processes, so it is driven from here, not from a test.
            install_stop_handler()?;
            let tools = tools::ensure(false, Profile::Test.database_url_override().is_none())?;
            workers::build_all(&tools)?;
            return crash::run(&tools);
        }
    }
    let test = match args {
        [name] if name == "all" => None,
        [name] => Some(
            DRILLS
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| *t)
                .ok_or_else(|| anyhow::anyhow!("unknown drill `{name}`; drills: {}, all", names.join(", ")))?,
        ),
        _ => bail!("usage: cargo xtask drill <{}|all>", names.join("|")),
    };
    install_stop_handler()?;
    let tools = tools::ensure(false, Profile::Test.database_url_override().is_none())?;
    workers::build_all(&tools)?;
    let secrets = Secrets::from_env();
    let step = ui::step("starting a throw-away stack (test ports, .local/test)");
    let mut stack = stack::start(Profile::Test, &tools, true, &secrets)?;
    step.done();
    let mut args = vec!["--test", "drills"];
    if let Some(test) = test {
        args.extend(["--", "--exact", test, "--nocapture"]);
    } else {
        args.extend(["--", "--nocapture", "--test-threads=1"]);
    }
    let status = e2e_command(&stack, &secrets, &args).status();
    stack.supervisor.stop_all();
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => bail!("the drill failed ({s}); service logs are in {}", Profile::Test.dir().join("logs").display()),
        Err(e) => bail!("could not run the drill: {e}"),
    }
}

/// `cargo xtask bench <what>`: benchmarks (docs/benchmarks.md).
fn bench(args: &[String]) -> Result<()> {
    match args.split_first() {
        Some((what, rest)) if what == "saga" => {
            install_stop_handler()?;
            bench_saga::main(rest)
        }
        Some((what, _)) if what == "ads" => bench_ads::main(args),
        Some((what, rest)) if what == "search" => install_stop_handler().and_then(|()| bench_search::main(rest)),
        _ => bail!("usage: cargo xtask bench saga [--sagas N] [--concurrency C] | bench ads [--seconds N] [--connections C] [--url URL | --via-wrangler-proxy] | bench search [--count N] [--no-http]"),
    }
}
