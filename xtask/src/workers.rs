//! Building the Workers (worker-build → `workers/<name>/build/`) and the
//! `wrangler dev` command that serves one.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use crate::paths;
use crate::process::run;
use crate::tools::Tools;
use crate::ui;

/// Every Worker, in start order (dependencies first).
pub const WORKERS: [&str; 4] = ["sandbox-psp", "marketplace", "payments", "ads"];

/// Which Workers talk to PostgreSQL.
pub fn uses_postgres(worker: &str) -> bool {
    matches!(worker, "payments" | "marketplace")
}

pub fn build_all(tools: &Tools) -> Result<()> {
    for (i, worker) in WORKERS.iter().enumerate() {
        let step = ui::step(format!("building Worker {}/{}: {worker} (Rust → Wasm, release)", i + 1, WORKERS.len()));
        run(
            &format!("worker-build for {worker}"),
            Command::new(&tools.worker_build)
                .args(["--release", "--no-opt"])
                .current_dir(paths::root().join("workers").join(worker))
                .env("WASM_BINDGEN_BIN", &tools.wasm_bindgen)
                .env("ESBUILD_BIN", &tools.esbuild),
            "the compiler output above names the failing code",
        )?;
        step.done();
    }
    Ok(())
}

/// Everything one `wrangler dev` needs to know.
pub struct Serve<'a> {
    pub worker: &'a str,
    pub port: u16,
    pub inspector_port: u16,
    pub state_dir: &'a Path,
    pub registry_dir: &'a Path,
    pub vars: &'a [(String, String)],
    /// Keep wrangler's DevTools inspector (development). Without it
    /// (tests, benchmarks) no console line is also relayed through the
    /// inspector's proxy Worker, which on 2 cores cost more CPU than the
    /// Worker itself (measured: 223 vs 501 purchases created/s).
    pub devtools: bool,
    /// Serve the copy of the Worker made by [`snapshot`] in this folder
    /// instead of `workers/<name>/build`, which wrangler watches: a build in
    /// this checkout meanwhile (a developer, another test run) must not
    /// hot-reload a test or benchmark stack in the middle of a run.
    pub snapshot: Option<&'a Path>,
}

/// Copies each Worker's `wrangler.toml` and `build/` into `dir/<worker>/`
/// (the config names its entry point relative to itself).
pub fn snapshot(dir: &Path) -> Result<()> {
    for worker in WORKERS {
        let from = paths::root().join("workers").join(worker);
        let to = dir.join(worker);
        let _ = std::fs::remove_dir_all(&to);
        std::fs::create_dir_all(&to)?;
        std::fs::copy(from.join("wrangler.toml"), to.join("wrangler.toml"))
            .with_context(|| format!("copying {worker}'s wrangler.toml"))?;
        copy_tree(&from.join("build"), &to.join("build"))
            .with_context(|| format!("copying {worker}'s build (run `cargo xtask build`)"))?;
    }
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

pub fn wrangler_dev(tools: &Tools, serve: &Serve) -> Command {
    let config = match serve.snapshot {
        Some(dir) => dir.join(serve.worker).join("wrangler.toml"),
        None => paths::root().join("workers").join(serve.worker).join("wrangler.toml"),
    };
    let mut command = Command::new("node");
    command
        .args(["--no-warnings", "--experimental-vm-modules"])
        .arg(&tools.wrangler_js)
        .arg("dev")
        .arg("--config")
        .arg(config)
        .args(["--ip", "127.0.0.1", "--port", &serve.port.to_string()])
        .args(["--inspector-port", &serve.inspector_port.to_string()])
        .arg("--persist-to")
        .arg(serve.state_dir.join(serve.worker))
        .arg("--show-interactive-dev-session=false")
        .current_dir(paths::root())
        .env("WRANGLER_SEND_METRICS", "false")
        // Each stack gets its own dev registry, so the test stack's service
        // bindings never resolve to the dev stack's Workers.
        .env("WRANGLER_REGISTRY_PATH", serve.registry_dir)
        .env("NO_COLOR", "1");
    for (name, value) in serve.vars {
        command.arg("--var").arg(format!("{name}:{value}"));
    }
    if !serve.devtools {
        without_devtools(&mut command);
    }
    command
}

/// wrangler 4.86 has no flag to turn its inspector off; it leaves it off
/// when it believes it runs in VS Code's JavaScript debug terminal (which
/// brings its own), and that is what this variable tells it. Logs still
/// reach wrangler's output through workerd's stdout.
pub fn without_devtools(command: &mut Command) {
    command.env("VSCODE_INSPECTOR_OPTIONS", "{}");
}
