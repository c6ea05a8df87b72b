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
//! user's object keeps their impressions across isolates and is loaded into
//! an isolate in the background the first time that isolate sees the user.
//! Until it arrives, and between syncs, a user can see a capped campaign at
//! most `max` more times per isolate they reach.

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

/// Impressions a user has seen, per campaign, within the longest window a
/// cap can have; bounded in users (least recently added evicted first).
#[derive(Debug, Default)]
pub struct FrequencyLog {
    users: HashMap<String, UserLog>,
    order: VecDeque<String>,
    max_users: usize,
}

#[derive(Debug, Default, Clone)]
pub struct UserLog {
    /// (campaign id, unix seconds), oldest first.
    pub seen: Vec<(String, u64)>,
    /// Whether the user's object history has been merged in.
    pub loaded: bool,
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
        let n = self.seen.iter().filter(|(c, t)| c == campaign && *t > since).count();
        n < max as usize
    }

    pub fn record(&mut self, campaign: &str, at: u64) {
        self.seen.push((campaign.to_string(), at));
    }

    /// Merges the object's history (deduplicated) and drops entries older
    /// than the longest cap window.
    pub fn merge(&mut self, history: Vec<(String, u64)>, now: u64) {
        for item in history {
            if !self.seen.contains(&item) {
                self.seen.push(item);
            }
        }
        let oldest = now.saturating_sub(crate::campaign::MAX_FREQ_WINDOW_SECONDS as u64);
        self.seen.retain(|(_, t)| *t > oldest);
        self.seen.sort_by_key(|(_, t)| *t);
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
                            if next(&mut rng) % 5 == 0 {
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
        u.record("c", 110);
        u.record("c", 150);
        assert!(!u.allows("c", 2, 60, 160));
        assert!(u.allows("c", 2, 60, 200), "the first impression left the window");
        assert!(u.allows("d", 1, 60, 160));
        f.user("u2");
        f.user("u3");
        assert!(f.get("u1").is_none(), "bounded: the oldest user is evicted");
    }
}
