//! Child processes that never outlive us.
//!
//! Each service runs in its own process group (wrangler's node spawns
//! workerd; postgres forks backends), so stopping a service signals the
//! whole group. Three layers make sure nothing is orphaned:
//! - normal stop and Ctrl-C: [`Supervisor::stop_all`] signals every group,
//!   waits, then SIGKILLs what is left;
//! - we are killed outright: each direct child gets SIGKILL from the kernel
//!   (`PR_SET_PDEATHSIG`), and services that fork helpers of their own
//!   (wrangler forks workerd) run in a PID namespace of their own
//!   (`unshare --pid --kill-child`), where the kernel kills every process
//!   once the first one dies;
//! - anything that still survived (a grandchild): the pid file lets the next
//!   run find and stop it before starting again.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

pub struct Supervisor {
    children: Vec<Managed>,
    pid_file: PathBuf,
    /// A string every command line we start contains (the stack's folder),
    /// so the pid file never makes us signal a stranger that reused a pid.
    marker: String,
    /// Held while this supervisor lives: one live stack per folder.
    _lock: fs::File,
}

struct Managed {
    name: String,
    child: Child,
    stop_signal: i32,
    log: PathBuf,
}

/// Where a child's output goes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// To its log file only.
    LogFile,
    /// To its log file and, prefixed with its name, to our stderr.
    LogFileAndTerminal,
}

impl Supervisor {
    /// Creates a supervisor whose pid file lives in `state_dir`, first stopping
    /// anything a previous run left behind there.
    ///
    /// Refuses to start while another live xtask supervises the same folder
    /// (a second `cargo xtask dev` must not kill the first one's stack): the
    /// folder's lock is held for the supervisor's life and released by the
    /// kernel when its process dies, however it dies.
    pub fn new(state_dir: &Path) -> Result<Self> {
        use std::os::unix::io::AsRawFd;
        fs::create_dir_all(state_dir)?;
        let lock = fs::File::create(state_dir.join("supervisor.lock"))?;
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            anyhow::bail!(
                "another `cargo xtask` is already running a stack from {} (stop it first, e.g. Ctrl-C in its terminal)",
                state_dir.display()
            );
        }
        let supervisor = Self {
            children: Vec::new(),
            pid_file: state_dir.join("pids"),
            marker: state_dir.display().to_string(),
            _lock: lock,
        };
        supervisor.reap_leftovers();
        Ok(supervisor)
    }

    fn reap_leftovers(&self) {
        let Ok(text) = fs::read_to_string(&self.pid_file) else { return };
        let mut stopped = 0;
        for pgid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            for pid in processes_in_group(pgid) {
                if cmdline(pid).contains(&self.marker) || cwd(pid).starts_with(crate::paths::root()) {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    stopped += 1;
                }
            }
        }
        if stopped > 0 {
            crate::ui::info(format!("stopped {stopped} process(es) left over from an earlier run"));
            // SIGKILL is asynchronous: wait until they are gone and their ports free.
            let deadline = Instant::now() + Duration::from_secs(10);
            let groups: Vec<i32> = text.lines().filter_map(|l| l.trim().parse::<i32>().ok()).collect();
            while groups.iter().any(|g| !processes_in_group(*g).is_empty()) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(100));
            }
        }
        let _ = fs::remove_file(&self.pid_file);
    }

    /// Like [`Supervisor::spawn`], but inside a PID namespace of its own when
    /// the system allows it, so that none of its descendants can outlive it.
    pub fn spawn_contained(
        &mut self,
        name: &str,
        command: Command,
        log: &Path,
        output: Output,
        stop_signal: i32,
    ) -> Result<()> {
        let command = if pid_namespaces_work() { in_pid_namespace(&command) } else { command };
        self.spawn(name, command, log, output, stop_signal)
    }

    /// Starts `command` in its own process group, output to `log`.
    pub fn spawn(
        &mut self,
        name: &str,
        mut command: Command,
        log: &Path,
        output: Output,
        stop_signal: i32,
    ) -> Result<()> {
        if let Some(parent) = log.parent() {
            fs::create_dir_all(parent)?;
        }
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
        unsafe {
            command.pre_exec(|| {
                // Runs after any uid/gid change, so the setting sticks.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().with_context(|| format!("could not start {name}: {command:?}"))?;
        let file = fs::OpenOptions::new().create(true).append(true).open(log)?;
        for (stream, is_err) in [
            (child.stdout.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>), false),
            (child.stderr.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>), true),
        ] {
            let Some(stream) = stream else { continue };
            let mut file = file.try_clone()?;
            let prefix = format!("[{name}] ");
            thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = writeln!(file, "{line}");
                    if output == Output::LogFileAndTerminal {
                        let _ = is_err;
                        eprintln!("{prefix}{line}");
                    }
                }
            });
        }
        let pid = child.id() as i32;
        let mut pids = fs::OpenOptions::new().create(true).append(true).open(&self.pid_file)?;
        writeln!(pids, "{pid}")?;
        self.children.push(Managed { name: name.to_string(), child, stop_signal, log: log.to_path_buf() });
        Ok(())
    }

    /// The first child that has exited, with its status.
    pub fn exited(&mut self) -> Option<(String, ExitStatus, PathBuf)> {
        for managed in &mut self.children {
            if let Ok(Some(status)) = managed.child.try_wait() {
                return Some((managed.name.clone(), status, managed.log.clone()));
            }
        }
        None
    }

    /// SIGKILLs one child's whole process group at once (no chance to shut
    /// down cleanly) and forgets it.
    pub fn kill_hard(&mut self, name: &str) -> Result<()> {
        let index =
            self.children.iter().position(|m| m.name == name).with_context(|| format!("no running service {name}"))?;
        let mut managed = self.children.remove(index);
        let pgid = managed.child.id() as i32;
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !processes_in_group(pgid).is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        let _ = managed.child.wait();
        Ok(())
    }

    /// The process group of a running child (its pid: each is a group leader).
    pub fn group_of(&self, name: &str) -> Option<i32> {
        self.children.iter().find(|m| m.name == name).map(|m| m.child.id() as i32)
    }

    pub fn is_running(&mut self, name: &str) -> bool {
        self.children.iter_mut().find(|m| m.name == name).is_some_and(|m| matches!(m.child.try_wait(), Ok(None)))
    }

    /// Stops every child, newest first, and waits for whole process groups to
    /// be gone. Returns how many groups needed SIGKILL.
    pub fn stop_all(&mut self) -> usize {
        let mut killed = 0;
        while let Some(mut managed) = self.children.pop() {
            let pgid = managed.child.id() as i32;
            unsafe { libc::kill(-pgid, managed.stop_signal) };
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let _ = managed.child.try_wait();
                if processes_in_group(pgid).is_empty() {
                    break;
                }
                if Instant::now() > deadline {
                    unsafe { libc::kill(-pgid, libc::SIGKILL) };
                    killed += 1;
                    thread::sleep(Duration::from_millis(200));
                    let _ = managed.child.try_wait();
                    break;
                }
                thread::sleep(Duration::from_millis(100));
            }
            let _ = managed.child.wait();
        }
        let _ = fs::remove_file(&self.pid_file);
        killed
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop_all();
    }
}

fn pid_namespaces_work() -> bool {
    static WORKS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WORKS.get_or_init(|| {
        Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child=SIGKILL", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

fn in_pid_namespace(command: &Command) -> Command {
    let mut wrapped = Command::new("unshare");
    wrapped.args(["--pid", "--fork", "--kill-child=SIGKILL", "--"]).arg(command.get_program()).args(command.get_args());
    if let Some(dir) = command.get_current_dir() {
        wrapped.current_dir(dir);
    }
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => wrapped.env(key, value),
            None => wrapped.env_remove(key),
        };
    }
    wrapped
}

/// Live (non-zombie) processes whose process group is `pgid`, from /proc.
pub fn processes_in_group(pgid: i32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
            // Fields after the parenthesised command: state ppid pgrp ...
            let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return false };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            fields.first() != Some(&"Z") && fields.get(2).and_then(|p| p.parse::<i32>().ok()) == Some(pgid)
        })
        .collect()
}

fn cwd(pid: i32) -> PathBuf {
    fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default()
}

fn cmdline(pid: i32) -> String {
    fs::read(format!("/proc/{pid}/cmdline")).map(|b| String::from_utf8_lossy(&b).replace('\0', " ")).unwrap_or_default()
}

/// The last `n` lines of a log file, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs a command to completion with inherited output (so its own progress
/// shows), failing with `what` and a hint when it does not succeed.
pub fn run(what: &str, command: &mut Command, hint: &str) -> Result<()> {
    let status = command.status().with_context(|| format!("could not run {what}: {command:?}"))?;
    if !status.success() {
        anyhow::bail!("{what} failed ({status}). {hint}");
    }
    Ok(())
}
