//! What one isolate keeps between requests. Workers run one request at a
//! time per isolate thread, so a thread-local `RefCell` suffices; no borrow
//! is ever held across an `.await`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use crate::auction::{Index, Stats};
use crate::events::DataPoint;
use crate::pacing::{FrequencyLog, Ledger};

/// Users whose frequency history one isolate keeps.
pub const MAX_USERS: usize = 50_000;

pub struct Isolate {
    pub index: Option<Rc<Index>>,
    /// When the snapshot was read from KV (ms); `None` forces a reload.
    pub fetched_at_ms: Option<u64>,
    pub snapshot_version: i64,
    pub refreshing: bool,
    pub ledger: Ledger,
    pub stats: HashMap<String, Stats>,
    pub stats_changed: bool,
    pub last_rebuild_ms: u64,
    pub budget_revision: i64,
    pub freq: FrequencyLog,
    /// Impressions of capped campaigns not yet sent to the users' shard
    /// objects: user -> (campaign, served at, cap window in seconds).
    pub pending_seen: HashMap<String, Vec<(String, u64, u32)>>,
    /// Users new to this isolate whose history the next sync loads.
    pub history_wanted: Vec<String>,
    pub pending_points: Vec<DataPoint>,
    pub sync_running: bool,
    pub last_sync_ms: u64,
}

thread_local! {
    static STATE: RefCell<Isolate> = RefCell::new(Isolate {
        index: None,
        fetched_at_ms: None,
        snapshot_version: 0,
        refreshing: false,
        ledger: Ledger::new(0, 500),
        stats: HashMap::new(),
        stats_changed: false,
        last_rebuild_ms: 0,
        budget_revision: 0,
        freq: FrequencyLog::new(MAX_USERS),
        pending_seen: HashMap::new(),
        history_wanted: Vec::new(),
        pending_points: Vec::new(),
        sync_running: false,
        last_sync_ms: 0,
    });
}

pub fn with<T>(f: impl FnOnce(&mut Isolate) -> T) -> T {
    STATE.with(|s| f(&mut s.borrow_mut()))
}
