//! Budgets and frequency caps without a Durable Object round trip per ad.
//!
//! Each isolate keeps a [`Ledger`]: the spend per campaign that the budget
//! object last reported (`known`), plus what this isolate has charged since
//! and not yet had acknowledged (`unsynced`). A background sync (started
//! with `ctx.wait_until`, at most every `sync interval`) sends the unsynced
//! deltas to the budget object, which adds them up, and brings back the
//! totals. The object's totals are the truth; the ledger is a bounded
//! estimate of them.
//!
//! **Overspend bound.** An isolate serves a campaign only while
//! `known + unsynced < budget` and `unsynced < allowance`, where
//! `allowance = budget × allowance_bps / 10 000` (at least one cent). So
//! once the object's total reaches the budget, every isolate stops at its
//! next sync, having charged at most `allowance + one charge` since its last
//! sync that saw the budget not yet reached. With `N` isolates serving the
//! campaign, total spend ≤ `budget + N × (allowance + max charge)`, where a
//! charge is one CPM impression (price / 1000) or one CPC click (≤ bid).
//! Proof sketch and a simulation with interleaved isolates: the test
//! `overspend_is_bounded_across_isolates` below. An isolate that dies with
//! unsynced charges loses them: that is under-billing, never overspend.
//!
//! **Frequency caps** are exact within an isolate ([`FrequencyLog`]); the
//! user's shard object ([`user_shard`]) keeps their impressions of capped
//! campaigns across isolates; the background sync sends them and loads the
//! history of users new to the isolate, one call per shard touched. Until
//! a user's history arrives, and between syncs, a user can see a capped
//! campaign at most `max` more times per isolate they reach.

use std::collections::{HashMap, VecDeque};

/// What an isolate reports for one campaign in one sync.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Delta {
    pub spend_micros: i64,
    pub impressions: u64,
    pub clicks: u64,
}

impl Delta {
    fn add(&mut self, other: Delta) {
        self.spend_micros = self.spend_micros.saturating_add(other.spend_micros);
        self.impressions = self.impressions.saturating_add(other.impressions);
        self.clicks = self.clicks.saturating_add(other.clicks);
    }

    pub fn is_zero(&self) -> bool {
        *self == Delta::default()
    }
}

/// The per-isolate budget estimate for one UTC day.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    pub day: u64,
    allowance_bps: i64,
    /// Today's spend per campaign as the budget object last reported it.
    known: HashMap<String, i64>,
    /// Charged here and not yet sent.
    pending: HashMap<String, Delta>,
    /// Sent in the sync under way, not yet acknowledged.
    in_flight: HashMap<String, Delta>,
}

impl Ledger {
    pub fn new(day: u64, allowance_bps: i64) -> Ledger {
        Ledger { day, allowance_bps: allowance_bps.clamp(1, 10_000), ..Ledger::default() }
    }

    fn unsynced(&self, id: &str) -> i64 {
        self.pending.get(id).map_or(0, |d| d.spend_micros) + self.in_flight.get(id).map_or(0, |d| d.spend_micros)
    }

    pub fn allowance(&self, budget_micros: i64) -> i64 {
        (budget_micros / 10_000 * self.allowance_bps).max(crate::auction::CENT_MICROS)
    }

    /// May this isolate charge `id` once more today?
    pub fn allows(&self, id: &str, budget_micros: i64) -> bool {
        let known = self.known.get(id).copied().unwrap_or(0);
        let unsynced = self.unsynced(id);
        known.saturating_add(unsynced) < budget_micros && unsynced < self.allowance(budget_micros)
    }

    /// Records a charge (and the impression or click behind it).
    pub fn charge(&mut self, id: &str, delta: Delta) {
        self.pending.entry(id.to_string()).or_default().add(delta);
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Moves the pending deltas into flight and returns them for the sync.
    pub fn begin_sync(&mut self) -> Vec<(String, Delta)> {
        let batch: Vec<(String, Delta)> = self.pending.drain().collect();
        for (id, d) in &batch {
            self.in_flight.entry(id.clone()).or_default().add(*d);
        }
        batch
    }

    /// The object added the batch and answered with today's totals (of the
    /// campaigns it reports); `day` is the object's day.
    pub fn finish_sync(&mut self, day: u64, totals: impl IntoIterator<Item = (String, i64)>) {
        self.in_flight.clear();
        if day != self.day {
            self.day = day;
            self.known.clear();
        }
        for (id, spent) in totals {
            let k = self.known.entry(id).or_insert(0);
            *k = (*k).max(spent);
        }
    }

    /// The sync failed: its deltas go back to pending, to be sent again.
    pub fn abort_sync(&mut self) {
        for (id, d) in self.in_flight.drain() {
            self.pending.entry(id).or_default().add(d);
        }
    }

    /// A new UTC day: spend starts from zero (deltas not yet sent belong to
    /// the previous day and are sent with it).
    pub fn roll_day(&mut self, day: u64) {
        if day > self.day {
            self.day = day;
            self.known.clear();
        }
    }
}

/// The budget object's arithmetic: per campaign, today's spend.
#[derive(Debug, Clone, Default)]
pub struct Book {
    pub day: u64,
    pub spent: HashMap<String, i64>,
}

impl Book {
    pub fn apply(&mut self, day: u64, batch: &[(String, Delta)]) {
        if day > self.day {
            self.day = day;
            self.spent.clear();
        }
        if day < self.day {
            return; // yesterday's deltas do not count against today's budget
        }
        for (id, d) in batch {
            *self.spent.entry(id.clone()).or_insert(0) += d.spend_micros;
        }
    }
}

/// The most serving times kept per user and campaign: a cap's `max` is at
/// most 1000, and only the newest `max` times can decide it.
pub const MAX_KEPT_PER_CAMPAIGN: usize = 1000;

/// The user-shard object a user's cap history and click dedup live in:
/// `users:{fnv1a(user) mod shards}`. One object per shard (not per user), so
/// an isolate's background sync makes at most `shards` calls however many
/// users it served, and a user always maps to the same object.
pub fn user_shard(user: &str, shards: u32) -> u32 {
    (crate::auction::fnv1a(user.as_bytes()) % shards.max(1) as u64) as u32
}

/// Impressions of frequency-capped campaigns a user has seen; bounded in
/// users (least recently added evicted first). Impressions of campaigns
/// without a cap are not kept: no rule reads them.
#[derive(Debug, Default)]
pub struct FrequencyLog {
    users: HashMap<String, UserLog>,
    order: VecDeque<String>,
    max_users: usize,
}

#[derive(Debug, Default, Clone)]
pub struct UserLog {
    /// Capped campaign id -> serving times (unix seconds), oldest first:
    /// the newest `max` within the cap's window.
    pub seen: HashMap<String, Vec<u64>>,
    /// Whether the user's history from their shard object has been merged in.
    pub loaded: bool,
    /// Queued for (or in) a history load.
    pub loading: bool,
}

impl FrequencyLog {
    pub fn new(max_users: usize) -> FrequencyLog {
        FrequencyLog { max_users: max_users.max(1), ..FrequencyLog::default() }
    }

    pub fn user(&mut self, user: &str) -> &mut UserLog {
        if !self.users.contains_key(user) {
            while self.users.len() >= self.max_users {
                match self.order.pop_front() {
                    Some(old) => {
                        self.users.remove(&old);
                    }
                    None => break,
                }
            }
            self.order.push_back(user.to_string());
        }
        self.users.entry(user.to_string()).or_default()
    }

    pub fn get(&self, user: &str) -> Option<&UserLog> {
        self.users.get(user)
    }
}

impl UserLog {
    /// Under `max` impressions of `campaign` in the last `per_seconds`?
    pub fn allows(&self, campaign: &str, max: u32, per_seconds: u32, now: u64) -> bool {
        let since = now.saturating_sub(per_seconds as u64);
        let n = self.seen.get(campaign).map_or(0, |times| times.iter().rev().take_while(|t| **t > since).count());
        n < max as usize
    }

    /// Records an impression of a campaign capped at `max` per `per_seconds`
    /// and forgets what can no longer decide that cap.
    pub fn record(&mut self, campaign: &str, at: u64, max: u32, per_seconds: u32) {
        let times = self.seen.entry(campaign.to_string()).or_default();
        let pos = times.partition_point(|t| *t <= at);
        times.insert(pos, at);
        let since = at.saturating_sub(per_seconds as u64);
        let stale = times.partition_point(|t| *t <= since);
        let over = times.len().saturating_sub((max as usize).clamp(1, MAX_KEPT_PER_CAMPAIGN));
        times.drain(..stale.max(over));
    }

    /// Replaces what this isolate knows with the user's history from their
    /// shard object plus `unsent`, the impressions recorded here that the
    /// object has not received yet. The history includes everything this
    /// isolate sent up to the call that returned it, so nothing is counted
    /// twice.
    pub fn merge(&mut self, history: Vec<(String, u64)>, unsent: &[(String, u64)], now: u64) {
        let oldest = now.saturating_sub(crate::campaign::MAX_FREQ_WINDOW_SECONDS as u64);
        let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
        for (campaign, at) in history.into_iter().chain(unsent.iter().cloned()) {
            if at > oldest {
                seen.entry(campaign).or_default().push(at);
            }
        }
        for times in seen.values_mut() {
            times.sort_unstable();
            let over = times.len().saturating_sub(MAX_KEPT_PER_CAMPAIGN);
            times.drain(..over);
        }
        self.seen = seen;
        self.loaded = true;
        self.loading = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn next(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// N isolates charge one campaign in random interleavings; syncs are
    /// started and finished at random moments (several in flight at once,
    /// some failing). The object's total never exceeds the documented bound.
    #[test]
    fn overspend_is_bounded_across_isolates() {
        for seed in 0..300u64 {
            let mut rng = seed;
            let n = 1 + (next(&mut rng) % 8) as usize;
            let budget = 1_000_000 + (next(&mut rng) % 50_000_000) as i64;
            let max_charge = 10 + (next(&mut rng) % 400_000) as i64;
            let mut isolates: Vec<Ledger> = (0..n).map(|_| Ledger::new(1, 500)).collect();
            let mut flights: Vec<Option<Vec<(String, Delta)>>> = vec![None; n];
            let mut book = Book { day: 1, ..Book::default() };
            for _ in 0..20_000 {
                let i = (next(&mut rng) % n as u64) as usize;
                match next(&mut rng) % 10 {
                    0 | 1 => {
                        if flights[i].is_none() {
                            flights[i] = Some(isolates[i].begin_sync());
                        }
                    }
                    2 => {
                        if let Some(batch) = flights[i].take() {
                            if next(&mut rng).is_multiple_of(5) {
                                isolates[i].abort_sync();
                            } else {
                                book.apply(1, &batch);
                                let total = book.spent.get("c").copied().unwrap_or(0);
                                isolates[i].finish_sync(1, [("c".to_string(), total)]);
                            }
                        }
                    }
                    _ => {
                        if isolates[i].allows("c", budget) {
                            let charge = 1 + (next(&mut rng) % max_charge as u64) as i64;
                            isolates[i].charge("c", Delta { spend_micros: charge, impressions: 1, clicks: 0 });
                        }
                    }
                }
            }
            // Everything still pending eventually reaches the object.
            for (i, l) in isolates.iter_mut().enumerate() {
                if let Some(batch) = flights[i].take() {
                    book.apply(1, &batch);
                }
                let rest = l.begin_sync();
                book.apply(1, &rest);
            }
            let total = book.spent.get("c").copied().unwrap_or(0);
            let allowance = isolates[0].allowance(budget);
            let bound = budget + n as i64 * (allowance + max_charge);
            assert!(total <= bound, "seed {seed}: spent {total} > bound {bound} (budget {budget}, {n} isolates)");
        }
    }

    #[test]
    fn one_isolate_stops_at_the_budget_and_resets_next_day() {
        let mut l = Ledger::new(1, 10_000);
        let mut charged = 0;
        while l.allows("c", 100_000) {
            l.charge("c", Delta { spend_micros: 30_000, impressions: 1, clicks: 0 });
            charged += 30_000;
        }
        assert_eq!(charged, 120_000, "stops after the charge that crosses the budget");
        l.roll_day(2);
        let batch = l.begin_sync();
        assert_eq!(batch.len(), 1);
        l.finish_sync(2, []);
        assert!(l.allows("c", 100_000));
    }

    #[test]
    fn frequency_windows() {
        let mut f = FrequencyLog::new(2);
        let u = f.user("u1");
        u.record("c", 110, 2, 60);
        u.record("c", 150, 2, 60);
        assert!(!u.allows("c", 2, 60, 160));
        assert!(u.allows("c", 2, 60, 200), "the first impression left the window");
        assert!(u.allows("d", 1, 60, 160));
        f.user("u2");
        f.user("u3");
        assert!(f.get("u1").is_none(), "bounded: the oldest user is evicted");
    }

    #[test]
    fn a_user_log_keeps_only_what_can_decide_the_cap() {
        let mut u = UserLog::default();
        for t in 0..50 {
            u.record("c", 1000 + t, 3, 3600);
        }
        assert_eq!(u.seen["c"], vec![1047, 1048, 1049], "the newest max times");
        u.record("c", 10_000, 3, 60);
        assert_eq!(u.seen["c"], vec![10_000], "times outside the window are dropped");
        // An impression reported late (another isolate's, via history) still
        // lands in order.
        u.record("c", 9_990, 3, 60);
        assert_eq!(u.seen["c"], vec![9_990, 10_000]);
        assert!(!u.allows("c", 2, 60, 10_001));
        assert!(u.allows("c", 3, 60, 10_001));
    }

    #[test]
    fn history_merge_counts_each_impression_once() {
        let mut u = UserLog::default();
        // Served here: 100 (sent in the call that returns the history) and
        // 105 (recorded while that call was under way, not sent yet).
        u.record("c", 100, 5, 3600);
        u.record("c", 105, 5, 3600);
        // The object has another isolate's 90 and this isolate's 100.
        u.merge(vec![("c".into(), 90), ("c".into(), 100)], &[("c".into(), 105)], 200);
        assert_eq!(u.seen["c"], vec![90, 100, 105]);
        assert!(u.loaded && !u.loading);
        assert!(!u.allows("c", 3, 3600, 200));
        assert!(u.allows("c", 4, 3600, 200));
    }

    #[test]
    fn users_spread_over_shards() {
        let mut counts = [0u32; 16];
        for i in 0..16_000 {
            counts[user_shard(&format!("user{i}"), 16) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
        assert_eq!(user_shard("alice", 16), user_shard("alice", 16));
        assert_eq!(user_shard("alice", 1), 0);
        assert_eq!(user_shard("alice", 0), 0, "no shard count means one shard");
    }
}
