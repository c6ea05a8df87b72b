//! The embedded PostgreSQL: init, start (as an unprivileged user when we are
//! root, since postgres refuses to run as root), readiness and migrations.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::paths;
use crate::process::{self, Output, Supervisor};
use crate::ui;

pub const USER: &str = "petnet";
pub const DATABASE: &str = "petnet";
/// uid/gid of `nobody` on Debian and most Linux systems.
const NOBODY: u32 = 65534;

pub fn running_as_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

pub fn url(port: u16) -> String {
    format!("postgres://{USER}@127.0.0.1:{port}/{DATABASE}")
}

/// The data folder of a stack. Normally under `.local/`; when we run as root
/// and `nobody` cannot reach the checkout (say it is under /root), under
/// /var/lib/petnet instead, named after the checkout so clones do not collide.
pub fn data_dir(stack_dir: &Path) -> PathBuf {
    let preferred = stack_dir.join("postgres");
    if !running_as_root() || traversable_by_others(stack_dir) {
        return preferred;
    }
    let digest = hex::encode(&Sha256::digest(stack_dir.display().to_string().as_bytes())[..6]);
    PathBuf::from("/var/lib/petnet").join(digest).join("postgres")
}

fn traversable_by_others(dir: &Path) -> bool {
    dir.ancestors()
        .skip(1)
        .filter(|a| a.exists())
        .all(|a| fs::metadata(a).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
}

/// Initializes the cluster if needed and starts `postgres` under `supervisor`.
/// Returns once it accepts connections and the migrations are applied.
pub fn start(
    supervisor: &mut Supervisor,
    pg_bin: &Path,
    data: &Path,
    port: u16,
    log: &Path,
    fast_and_loose: bool,
) -> Result<()> {
    let cluster = data.join("cluster");
    prepare_dir(data)?;
    if !cluster.join("PG_VERSION").exists() {
        let step = ui::step(format!("initializing a PostgreSQL cluster in {}", cluster.display()));
        let _ = fs::remove_dir_all(&cluster);
        let mut initdb = Command::new(pg_bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&cluster)
            .args(["-U", USER, "--auth=trust", "-E", "UTF8", "--no-locale", "--no-instructions"])
            .current_dir(data);
        as_unprivileged(&mut initdb);
        let out = initdb.output().context("could not run initdb")?;
        if !out.status.success() {
            bail!("initdb failed:\n{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        }
        step.done();
    }
    let mut postgres = Command::new(pg_bin.join("postgres"));
    postgres
        .arg("-D")
        .arg(&cluster)
        .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="])
        .current_dir(data);
    if fast_and_loose {
        // Throw-away test databases: durability buys nothing there.
        postgres.args(["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]);
    }
    as_unprivileged(&mut postgres);
    supervisor.spawn("postgres", postgres, log, Output::LogFile, libc::SIGINT)?;
    wait_ready(supervisor, port, log)?;
    ensure_database(port)?;
    migrate(&url(port))
}

fn prepare_dir(data: &Path) -> Result<()> {
    fs::create_dir_all(data).with_context(|| format!("could not create {}", data.display()))?;
    if running_as_root() {
        std::os::unix::fs::chown(data, Some(NOBODY), Some(NOBODY))?;
        fs::set_permissions(data, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

fn as_unprivileged(command: &mut Command) {
    if running_as_root() {
        command.uid(NOBODY).gid(NOBODY).env("HOME", "/tmp");
    }
}

fn wait_ready(supervisor: &mut Supervisor, port: u16, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let admin = format!("postgres://{USER}@127.0.0.1:{port}/postgres");
    loop {
        if postgres::Client::connect(&admin, postgres::NoTls).is_ok() {
            return Ok(());
        }
        if crate::interrupted() {
            bail!("interrupted");
        }
        if !supervisor.is_running("postgres") {
            bail!("postgres exited during start-up; its log says:\n{}", process::tail(log, 20));
        }
        if Instant::now() > deadline {
            bail!(
                "postgres did not accept connections on 127.0.0.1:{port} within 60s; log:\n{}",
                process::tail(log, 20)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn ensure_database(port: u16) -> Result<()> {
    let admin = format!("postgres://{USER}@127.0.0.1:{port}/postgres");
    let mut client = postgres::Client::connect(&admin, postgres::NoTls)?;
    let exists = client.query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&DATABASE])?.is_some();
    if !exists {
        client.batch_execute(&format!("CREATE DATABASE {DATABASE}"))?;
    }
    Ok(())
}

/// A migration file: `migrations/NNNN_name.sql`.
#[derive(Debug)]
pub struct Migration {
    pub version: i32,
    pub name: String,
    pub sql: String,
}

impl Migration {
    fn checksum(&self) -> String {
        hex::encode(Sha256::digest(self.sql.as_bytes()))
    }
}

pub fn load_migrations(dir: &Path) -> Result<Vec<Migration>> {
    let mut migrations = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        let Some(file) = path.file_name().and_then(|f| f.to_str()) else { continue };
        let Some(stem) = file.strip_suffix(".sql") else { continue };
        let (number, name) =
            stem.split_once('_').with_context(|| format!("migration {file} must be named NNNN_description.sql"))?;
        let version: i32 = number.parse().with_context(|| format!("migration {file} must start with a number"))?;
        migrations.push(Migration { version, name: name.to_string(), sql: fs::read_to_string(&path)? });
    }
    migrations.sort_by_key(|m| m.version);
    if let Some(pair) = migrations.windows(2).find(|w| w[0].version == w[1].version) {
        bail!("two migrations share the number {}", pair[0].version);
    }
    Ok(migrations)
}

/// Applies each migration not yet recorded in `schema_migrations`, each in its
/// own transaction with its record, so a failed one leaves nothing half-done.
pub fn migrate(database_url: &str) -> Result<()> {
    let migrations = load_migrations(&paths::root().join("migrations"))?;
    let mut client = postgres::Client::connect(database_url, postgres::NoTls)
        .with_context(|| format!("cannot connect to {}", redact(database_url)))?;
    client.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version integer PRIMARY KEY,
            name text NOT NULL,
            checksum text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )?;
    let mut applied = 0;
    for migration in &migrations {
        let recorded =
            client.query_opt("SELECT checksum FROM schema_migrations WHERE version = $1", &[&migration.version])?;
        if let Some(row) = recorded {
            let checksum: String = row.get(0);
            if checksum != migration.checksum() {
                bail!(
                    "migration {:04}_{} was edited after it was applied; add a new migration instead (or start over with --fresh)",
                    migration.version,
                    migration.name
                );
            }
            continue;
        }
        let mut tx = client.transaction()?;
        tx.batch_execute(&migration.sql)
            .with_context(|| format!("migration {:04}_{} failed", migration.version, migration.name))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&migration.version, &migration.name, &migration.checksum()],
        )?;
        tx.commit()?;
        applied += 1;
    }
    ui::info(format!("migrations: {applied} applied now, {} in total", migrations.len()));
    Ok(())
}

/// A connection string without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
