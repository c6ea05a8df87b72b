//! The Worker's own workerd socket, behind `wrangler dev`'s proxy.
//!
//! `wrangler dev` serves its port from a second workerd (the ProxyWorker)
//! that only exists to hold requests while a hot reload swaps the Worker,
//! and forwards each request to the workerd that runs the Worker. That hop
//! does not exist in production, and on this 2-core machine it costs more
//! than the Worker itself (measured: 1,337 vs 4,115 requests/s for a 404 at
//! 16 connections). Benchmarks measure "at the Worker", so they find that
//! inner socket: among the listening TCP sockets of the wrangler's processes
//! (one process group per service, see `process.rs`), the one that `probe`
//! recognises as the Worker.

use std::collections::HashSet;
use std::fs;

use crate::process::processes_in_group;

/// The port of the Worker's own workerd in process group `pgid`, skipping
/// `skip` (wrangler's public and inspector ports); `probe` must say whether
/// a port answers as the Worker (e.g. its `/healthz` names the service).
pub fn worker_port(pgid: i32, skip: &[u16], probe: impl Fn(u16) -> bool) -> Option<u16> {
    let mut inodes = HashSet::new();
    for pid in processes_in_group(pgid) {
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() != "workerd" {
            continue;
        }
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for fd in fds.flatten() {
            if let Some(inode) = fs::read_link(fd.path())
                .ok()
                .and_then(|t| t.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse::<u64>().ok())
            {
                inodes.insert(inode);
            }
        }
    }
    let mut ports = listening_ports(&inodes);
    ports.retain(|p| !skip.contains(p));
    ports.sort_unstable();
    ports.into_iter().find(|port| probe(*port))
}

/// Loopback TCP ports in LISTEN state whose socket inode is in `inodes`.
fn listening_ports(inodes: &HashSet<u64>) -> Vec<u16> {
    let text = fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|line| {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
            if *state != "0A" || !inodes.contains(&inode.parse::<u64>().ok()?) {
                return None;
            }
            u16::from_str_radix(local.split_once(':')?.1, 16).ok()
        })
        .collect()
}
