//! Building the Workers (worker-build → `workers/<name>/build/`) and the
//! `wrangler dev` command that serves one.

use std::path::Path;
use std::process::Command;

use anyhow::Result;

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
}

pub fn wrangler_dev(tools: &Tools, serve: &Serve) -> Command {
    let config = paths::root().join("workers").join(serve.worker).join("wrangler.toml");
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
    command
}
