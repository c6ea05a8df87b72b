//! The local stack: PostgreSQL and the four Workers, on fixed ports, under
//! one supervisor. `cargo xtask dev` and `cargo xtask test` run the same
//! stack with different ports and folders, so both can run at once.

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::paths;
use crate::postgres;
use crate::process::{self, Output, Supervisor};
use crate::tools::Tools;
use crate::ui;
use crate::workers::{self, Serve, WORKERS};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    Dev,
    Test,
}

pub struct Ports {
    pub postgres: u16,
    pub payments: u16,
    pub marketplace: u16,
    pub ads: u16,
    pub sandbox_psp: u16,
    /// The local embedding service (`embedder/`) the marketplace calls.
    pub embedder: u16,
    /// First of four consecutive inspector ports (one per wrangler).
    pub inspector_base: u16,
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Profile::Dev => "dev",
            Profile::Test => "test",
        }
    }

    pub fn ports(self) -> Ports {
        match self {
            Profile::Dev => Ports {
                postgres: 54329,
                payments: 8787,
                marketplace: 8788,
                ads: 8789,
                sandbox_psp: 8790,
                embedder: 8791,
                inspector_base: 9231,
            },
            Profile::Test => {
                let shift = 100 * test_slot();
                Ports {
                    postgres: 54339 + shift,
                    payments: 8797 + shift,
                    marketplace: 8798 + shift,
                    ads: 8799 + shift,
                    sandbox_psp: 8800 + shift,
                    embedder: 8801 + shift,
                    inspector_base: 9241 + shift,
                }
            }
        }
    }

    pub fn dir(self) -> PathBuf {
        match (self, test_slot()) {
            (Profile::Test, slot) if slot > 0 => paths::local().join(format!("test-{slot}")),
            _ => paths::local().join(self.name()),
        }
    }

    /// The environment variable that points this stack at an existing
    /// PostgreSQL instead of the embedded one. Tests have their own, so a
    /// `DATABASE_URL` meant for development never receives test data.
    pub fn database_url_var(self) -> &'static str {
        match self {
            Profile::Dev => "DATABASE_URL",
            Profile::Test => "TEST_DATABASE_URL",
        }
    }

    pub fn database_url_override(self) -> Option<String> {
        std::env::var(self.database_url_var()).ok().filter(|v| !v.is_empty())
    }
}

/// `PETNET_TEST_SLOT=N` (1-9) moves the test stack to ports shifted by 100·N
/// and its own folder, so several test runs can share a machine.
fn test_slot() -> u16 {
    std::env::var("PETNET_TEST_SLOT").ok().and_then(|v| v.parse::<u16>().ok()).filter(|n| *n <= 9).unwrap_or(0)
}

/// Fails early, with the culprit named, when a port is taken: usually a stack
/// still running from another terminal.
fn check_ports_free(profile: Profile, ports: &Ports, with_postgres: bool) -> Result<()> {
    let mut wanted: Vec<(&str, u16)> = WORKERS.iter().map(|w| (*w, ports.of(w))).collect();
    wanted.extend((0..WORKERS.len() as u16).map(|i| ("a wrangler inspector", ports.inspector_base + i)));
    if with_postgres {
        wanted.push(("postgres", ports.postgres));
    }
    wanted.push(("embedder", ports.embedder));
    for (what, port) in wanted {
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            bail!(
                "port {port} (for {what}) is already in use on 127.0.0.1: is another `cargo xtask {}` running? Stop it first",
                profile.name()
            );
        }
    }
    Ok(())
}

impl Ports {
    pub fn of(&self, worker: &str) -> u16 {
        match worker {
            "payments" => self.payments,
            "marketplace" => self.marketplace,
            "ads" => self.ads,
            _ => self.sandbox_psp,
        }
    }
}

/// Tokens and secrets: from the environment when set, else development
/// defaults (printed at start; never valid anywhere but here).
pub struct Secrets(pub Vec<(&'static str, String)>);

impl Secrets {
    pub fn from_env() -> Self {
        let defaults = [
            ("CHECKOUT_TOKEN", "dev_checkout_token"),
            ("OPS_TOKEN", "dev_ops_token"),
            ("INTERNAL_TOKEN", "dev_internal_token"),
            ("STRIPE_WEBHOOK_SECRET", "whsec_dev_local_only"),
            ("STRIPE_SECRET_KEY", "sk_test_dev_local_only"),
            ("CLICK_SIGNING_KEY", "dev_click_signing_key"),
        ];
        Secrets(
            defaults
                .iter()
                .map(|(name, default)| {
                    let value =
                        std::env::var(name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_string());
                    (*name, value)
                })
                .collect(),
        )
    }

    pub fn print(&self) {
        for (name, value) in &self.0 {
            let source = if std::env::var(name).is_ok_and(|v| !v.is_empty()) {
                "from the environment"
            } else {
                "development default"
            };
            ui::info(format!("{name}={value}  ({source})"));
        }
    }
}

/// The test stack runs the purchase saga in seconds where production takes
/// days, so the end-to-end tests can watch a deadline pass. `cargo xtask dev`
/// keeps the production defaults of `workers/payments/wrangler.toml`.
pub const TEST_SAGA_TIMINGS: &[(&str, &str)] = &[
    ("INSPECTION_WINDOW_SECONDS", "8"),
    ("CALL_TIMEOUT_SECONDS", "5"),
    // Eight attempts: the chaos drill fails 20% of provider calls, and a
    // purchase must not run out of retries by bad luck (0.2^8 per call).
    ("MARKETPLACE_RETRY", "max_attempts=8 initial_delay_ms=200 multiplier=2 max_delay_ms=2000 jitter=0.2"),
    ("PAYMENT_RETRY", "max_attempts=8 initial_delay_ms=200 multiplier=2 max_delay_ms=2000 jitter=0.2"),
    ("COMPENSATION_RETRY", "max_attempts=8 initial_delay_ms=200 multiplier=2 max_delay_ms=2000 jitter=0.2"),
];

pub struct Stack {
    pub ports: Ports,
    pub database_url: String,
    pub supervisor: Supervisor,
    launches: Vec<Launch>,
    state: PathBuf,
    registry: PathBuf,
    logs: PathBuf,
    output: Output,
    devtools: bool,
    /// Test stacks serve a copy of the builds (see `workers::Serve::snapshot`).
    snapshot: Option<PathBuf>,
}

/// How a Worker was started, so a crash drill can start it again the same way.
struct Launch {
    worker: &'static str,
    index: u16,
    vars: Vec<(String, String)>,
}

impl Stack {
    pub fn url(&self, worker: &str) -> String {
        format!("http://127.0.0.1:{}", self.ports.of(worker))
    }

    /// The Worker's own workerd socket, without wrangler's dev proxy in
    /// front (see `direct.rs`); benchmarks use it to measure at the Worker.
    pub fn direct_url(&self, worker: &str) -> Result<String> {
        let pgid = self.supervisor.group_of(worker).with_context(|| format!("{worker} is not running"))?;
        let index = WORKERS.iter().position(|w| *w == worker).unwrap_or(0) as u16;
        let skip = [self.ports.of(worker), self.ports.inspector_base + index];
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(5)))
            .http_status_as_error(false)
            .build()
            .into();
        // Any status will do (a degraded check answers 503): the body names the service.
        let probe = |port: u16| {
            agent
                .get(&format!("http://127.0.0.1:{port}/healthz"))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_to_string().ok())
                .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
                .is_some_and(|body| body["service"] == worker)
        };
        let port = crate::direct::worker_port(pgid, &skip, probe)
            .with_context(|| format!("could not find {worker}'s own workerd socket behind wrangler's proxy"))?;
        Ok(format!("http://127.0.0.1:{port}"))
    }

    /// SIGKILLs a Worker's wrangler and workerd (a crash, not a shutdown),
    /// then starts it again on the same persisted state and waits until it
    /// answers. For the crash drill.
    pub fn crash_and_restart(&mut self, tools: &Tools, worker: &str, down_for: Duration) -> Result<()> {
        self.supervisor.kill_hard(worker)?;
        std::thread::sleep(down_for);
        let launch =
            self.launches.iter().find(|l| l.worker == worker).with_context(|| format!("{worker} was never started"))?;
        let serve = Serve {
            worker: launch.worker,
            port: self.ports.of(worker),
            inspector_port: self.ports.inspector_base + launch.index,
            state_dir: &self.state,
            registry_dir: &self.registry,
            vars: &launch.vars,
            devtools: self.devtools,
            snapshot: self.snapshot.as_deref(),
        };
        let command = workers::wrangler_dev(tools, &serve);
        self.supervisor.spawn_contained(
            worker,
            command,
            &self.logs.join(format!("{worker}.log")),
            self.output,
            libc::SIGTERM,
        )?;
        let logs = self.logs.clone();
        wait_healthy(self, worker, &logs)
    }

    /// Restarts a Worker on the same state with extra vars (later ones win),
    /// e.g. `SAGA_EFFECTS=inline` for `cargo xtask bench saga`.
    pub fn restart_with_vars(&mut self, tools: &Tools, worker: &str, vars: &[(&str, &str)]) -> Result<()> {
        let launch = self
            .launches
            .iter_mut()
            .find(|l| l.worker == worker)
            .with_context(|| format!("{worker} was never started"))?;
        launch.vars.extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self.crash_and_restart(tools, worker, Duration::ZERO)
    }
}

/// A fresh test stack whose Workers keep their durable state (Durable
/// Objects, alarms, KV) in `target`, e.g. a folder on tmpfs: what `start`
/// does with `fresh`, then the stack's `state` folder as a link to `target`.
/// For benchmarks: locally every Durable Object commit is an `fsync` on the
/// runtime's only thread, which production storage does not do.
pub fn start_with_state_in(
    profile: Profile,
    tools: &Tools,
    secrets: &Secrets,
    target: &std::path::Path,
) -> Result<Stack> {
    let dir = profile.dir();
    for sub in ["state", "logs", "registry"] {
        let path = dir.join(sub);
        let _ = fs::remove_file(&path);
        let _ = fs::remove_dir_all(&path);
    }
    let _ = fs::remove_dir_all(postgres::data_dir(&dir));
    let _ = fs::remove_dir_all(target);
    fs::create_dir_all(target)?;
    fs::create_dir_all(&dir)?;
    std::os::unix::fs::symlink(target, dir.join("state")).context("linking the stack's state folder")?;
    start(profile, tools, false, secrets)
}

/// Starts PostgreSQL (unless `DATABASE_URL` points elsewhere) and every
/// Worker, and waits until each answers `/healthz` with 200.
pub fn start(profile: Profile, tools: &Tools, fresh: bool, secrets: &Secrets) -> Result<Stack> {
    let dir = profile.dir();
    let ports = profile.ports();
    let mut supervisor = Supervisor::new(&dir)?;
    if fresh {
        let step = ui::step(format!("removing the {} stack's state (--fresh)", profile.name()));
        for sub in ["state", "logs", "registry"] {
            let _ = fs::remove_dir_all(dir.join(sub));
        }
        let _ = fs::remove_dir_all(postgres::data_dir(&dir));
        step.done();
    }
    let logs = dir.join("logs");
    fs::create_dir_all(&logs)?;
    let external_database = profile.database_url_override();
    check_ports_free(profile, &ports, external_database.is_none())?;
    let database_url = match external_database {
        Some(url) => {
            let step =
                ui::step(format!("using {} {} (migrating it)", profile.database_url_var(), postgres::redact(&url)));
            postgres::migrate(&url)?;
            step.done();
            url
        }
        None => {
            let step = ui::step(format!("starting PostgreSQL on 127.0.0.1:{}", ports.postgres));
            let data = postgres::data_dir(&dir);
            postgres::start(
                &mut supervisor,
                &tools.pg_bin,
                &data,
                ports.postgres,
                &logs.join("postgres.log"),
                profile == Profile::Test,
            )?;
            step.done();
            postgres::url(ports.postgres)
        }
    };
    println!("postgres     {}  ready", postgres::redact(&database_url));
    let embedder_url = start_embedder(&mut supervisor, tools, ports.embedder, &logs)?;
    println!("embedder     {embedder_url}  ready");

    let registry = dir.join("registry");
    let state = dir.join("state");
    fs::create_dir_all(&registry)?;
    // Development hot-reloads what `cargo xtask build` writes; tests and
    // benchmarks keep serving the build they started with.
    let snapshot = if profile == Profile::Test {
        let folder = dir.join("serve");
        workers::snapshot(&folder)?;
        Some(folder)
    } else {
        None
    };
    let output = if profile == Profile::Dev { Output::LogFileAndTerminal } else { Output::LogFile };
    let mut launches = Vec::new();
    for (i, worker) in WORKERS.iter().enumerate() {
        let mut vars: Vec<(String, String)> = secrets.0.iter().map(|(n, v)| (n.to_string(), v.clone())).collect();
        if workers::uses_postgres(worker) {
            vars.push(("DATABASE_URL".into(), database_url.clone()));
        }
        if *worker == "payments" && profile == Profile::Test {
            vars.extend(TEST_SAGA_TIMINGS.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        }
        if *worker == "marketplace" {
            vars.push(("EMBEDDER_URL".into(), embedder_url.clone()));
        }
        if *worker == "ads" {
            // Local stacks only: Analytics Engine points go to a recorder
            // Durable Object that `GET /_test/events` reads.
            vars.push(("ADS_EVENT_RECORDER".into(), "on".into()));
            if profile == Profile::Test {
                // Short enough for a test to watch a click URL expire.
                vars.push(("CLICK_TTL_SECONDS".into(), "4".into()));
            }
        }
        vars.push(("STRIPE_API_BASE".into(), format!("http://127.0.0.1:{}", ports.sandbox_psp)));
        vars.push(("STRIPE_WEBHOOK_URL".into(), format!("http://127.0.0.1:{}/v1/webhooks/stripe", ports.payments)));
        let serve = Serve {
            worker,
            port: ports.of(worker),
            inspector_port: ports.inspector_base + i as u16,
            state_dir: &state,
            registry_dir: &registry,
            vars: &vars,
            devtools: profile == Profile::Dev,
            snapshot: snapshot.as_deref(),
        };
        let command = workers::wrangler_dev(tools, &serve);
        supervisor.spawn_contained(worker, command, &logs.join(format!("{worker}.log")), output, libc::SIGTERM)?;
        launches.push(Launch { worker, index: i as u16, vars });
    }
    let devtools = profile == Profile::Dev;
    let mut stack = Stack {
        ports,
        database_url,
        supervisor,
        launches,
        state,
        registry,
        logs: logs.clone(),
        output,
        devtools,
        snapshot,
    };
    for worker in WORKERS {
        let step = ui::step(format!("waiting for {worker} on {}", stack.url(worker)));
        wait_healthy(&mut stack, worker, &logs)?;
        step.done();
    }
    for worker in WORKERS {
        println!("{worker:<12} {}  ready", stack.url(worker));
    }
    Ok(stack)
}

fn wait_healthy(stack: &mut Stack, worker: &str, logs: &std::path::Path) -> Result<()> {
    let url = format!("{}/healthz", stack.url(worker));
    let deadline = Instant::now() + Duration::from_secs(180);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut last;
    loop {
        if crate::interrupted() {
            bail!("interrupted");
        }
        if let Some((name, status, log)) = stack.supervisor.exited() {
            bail!(
                "{name} exited ({status}) while the stack was starting; last lines of {}:\n{}",
                log.display(),
                process::tail(&log, 30)
            );
        }
        match agent.get(&url).call() {
            Ok(response) if response.status() == 200 => return Ok(()),
            Ok(mut response) => {
                last = format!("{} {}", response.status(), response.body_mut().read_to_string().unwrap_or_default());
            }
            Err(err) => last = err.to_string(),
        }
        if Instant::now() > deadline {
            let log = logs.join(format!("{worker}.log"));
            bail!(
                "{worker} did not become healthy at {url} within 180s (last answer: {last}); log tail:\n{}",
                process::tail(&log, 30)
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Blocks until Ctrl-C (Ok) or until a service dies (Err naming it). A
/// service counts as dead when its process exits, or when its port stops
/// accepting connections for a few seconds in a row (wrangler can outlive the
/// workerd that actually serves).
pub fn supervise(stack: &mut Stack, stop: &std::sync::atomic::AtomicBool) -> Result<()> {
    const PROBE_EVERY: Duration = Duration::from_secs(2);
    const FAILURES_ALLOWED: u32 = 3;
    let mut failures = [0u32; WORKERS.len()];
    let mut last_probe = Instant::now();
    loop {
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        if let Some((name, status, log)) = stack.supervisor.exited() {
            return Err(anyhow::anyhow!(
                "{name} exited ({status}); stopping everything. Last lines of {}:\n{}",
                log.display(),
                process::tail(&log, 30)
            ))
            .context("a service of the stack died");
        }
        if last_probe.elapsed() >= PROBE_EVERY {
            last_probe = Instant::now();
            for (i, worker) in WORKERS.iter().enumerate() {
                let address = std::net::SocketAddr::from(([127, 0, 0, 1], stack.ports.of(worker)));
                if std::net::TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_ok() {
                    failures[i] = 0;
                    continue;
                }
                failures[i] += 1;
                if failures[i] >= FAILURES_ALLOWED {
                    bail!(
                        "{worker} stopped accepting connections on {address} (its workerd died?); stopping everything. Its log is {}",
                        Profile::Dev.dir().join("logs").join(format!("{worker}.log")).display()
                    );
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Starts the local embedding service (the marketplace's stand-in for
/// Workers AI) and waits until it embeds a probe sentence.
pub(crate) fn start_embedder(
    supervisor: &mut Supervisor,
    tools: &Tools,
    port: u16,
    logs: &std::path::Path,
) -> Result<String> {
    let step = ui::step(format!("starting the embedder on 127.0.0.1:{port}"));
    let url = format!("http://127.0.0.1:{port}");
    let log = logs.join("embedder.log");
    let mut command = std::process::Command::new(&tools.embedder);
    command.arg("--model-dir").arg(&tools.embedder_model).args(["--listen", &format!("127.0.0.1:{port}")]);
    supervisor.spawn("embedder", command, &log, Output::LogFile, libc::SIGTERM)?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if crate::interrupted() {
            bail!("interrupted");
        }
        if !supervisor.is_running("embedder") {
            bail!("the embedder exited during start-up; last lines of {}:\n{}", log.display(), process::tail(&log, 20));
        }
        if agent.get(&format!("{url}/healthz")).call().is_ok_and(|r| r.status() == 200) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the embedder did not answer on {url} within 60s; log:\n{}", process::tail(&log, 20));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    step.done();
    Ok(url)
}
