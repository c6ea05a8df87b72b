//! The auction: eligibility, eCPM ranking and second-price clearing.
//!
//! Pure and synchronous: no I/O, no clock, no randomness (the tie-break seed
//! is an input). The Worker builds an [`Index`] from the snapshot when the
//! snapshot or the click statistics change, and calls [`Index::run`] per ad
//! request with a gate that says which campaigns still have budget and are
//! under the user's frequency cap.
//!
//! Rules (the brute-force test in `tests/brute_force.rs` re-implements them
//! independently):
//! - eligible: every non-empty targeting list contains the request's value
//!   (interests: any overlap), the age lies in the range if one is set, the
//!   gate allows it, and its eCPM is at least the reserve;
//! - eCPM in micro-units per thousand impressions: a CPM bid is its own eCPM;
//!   a CPC bid's is `bid × 1000 × pCTR`, floored, with
//!   `pCTR = (clicks + 1) / (impressions + 100)`: a Beta(1, 99) prior (1 %)
//!   that new campaigns start from and that data outweighs as it comes in;
//! - the highest eCPM wins; among equal eCPMs the smallest
//!   [`tie_key`]`(seed, id)` wins, so with a random seed per request each
//!   tied campaign wins equally often;
//! - the clearing eCPM is the larger of the reserve and the best eligible
//!   eCPM other than the winner's (a tie clears at the tied eCPM); it is
//!   converted back to the winner's bid unit (per mille, or per click through
//!   its pCTR), rounded up to the cent, and never above the bid.

use std::collections::HashMap;

use crate::campaign::{BidType, Entry};

/// One cent in micro-units: prices are rounded to it.
pub const CENT_MICROS: i64 = 10_000;
pub const PRIOR_CLICKS: u64 = 1;
pub const PRIOR_IMPRESSIONS: u64 = 100;

/// Observed delivery of a campaign (all time), for its predicted click rate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    pub impressions: u64,
    pub clicks: u64,
}

impl Stats {
    /// pCTR as a fraction (numerator, denominator), smoothed, at most 1.
    pub fn pctr(self) -> (u64, u64) {
        let den = self.impressions.saturating_add(PRIOR_IMPRESSIONS);
        let num = self.clicks.saturating_add(PRIOR_CLICKS).min(den);
        (num, den)
    }
}

/// eCPM in micro-units per thousand impressions.
pub fn ecpm(kind: BidType, bid_micros: i64, stats: Stats) -> i64 {
    match kind {
        BidType::Cpm => bid_micros,
        BidType::Cpc => {
            let (num, den) = stats.pctr();
            let v = (bid_micros.max(0) as u128) * 1000 * num as u128 / den as u128;
            i64::try_from(v).unwrap_or(i64::MAX)
        }
    }
}

/// The price in the winner's bid unit for a clearing eCPM: rounded up to the
/// cent, never above the bid.
pub fn price_for(kind: BidType, bid_micros: i64, stats: Stats, clearing_ecpm: i64) -> i64 {
    let raw = match kind {
        BidType::Cpm => clearing_ecpm as i128,
        BidType::Cpc => {
            let (num, den) = stats.pctr();
            let n = clearing_ecpm.max(0) as i128 * den as i128;
            let d = 1000 * num as i128;
            (n + d - 1) / d
        }
    };
    let cents = (raw + CENT_MICROS as i128 - 1) / CENT_MICROS as i128 * CENT_MICROS as i128;
    i64::try_from(cents).unwrap_or(i64::MAX).min(bid_micros)
}

/// SplitMix64 over `seed ^ hash(id)`: a per-request random order of tied
/// campaigns.
pub fn tie_key(seed: u64, id: &str) -> u64 {
    mix(seed ^ fnv1a(id.as_bytes()))
}

pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What the request says about the pet and the user's interests. Values are
/// normalized slugs (see `campaign::normalize_value`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    pub species: Option<String>,
    pub breed: Option<String>,
    pub age_months: Option<u32>,
    pub interests: Vec<String>,
    pub region: Option<String>,
}

/// A campaign as the auction sees it: targeting as interned ids.
#[derive(Debug, Clone)]
pub struct Ranked {
    pub entry: Entry,
    pub stats: Stats,
    pub ecpm: i64,
    id_hash: u64,
    species: Vec<u32>,
    breeds: Vec<u32>,
    age: Option<(u32, u32)>,
    interests: Vec<u32>,
    regions: Vec<u32>,
}

/// The winner of one auction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Position in [`Index::ranked`].
    pub position: usize,
    pub ecpm: i64,
    pub clearing_ecpm: i64,
    /// In the winner's bid unit (per mille or per click), micro-units.
    pub price_micros: i64,
}

/// The active campaigns sorted by eCPM (descending), with posting lists by
/// species so a request only walks the campaigns that can match it.
#[derive(Debug, Clone, Default)]
pub struct Index {
    ranked: Vec<Ranked>,
    words: HashMap<String, u32>,
    /// Positions of campaigns targeting any species, ascending.
    any_species: Vec<u32>,
    /// Positions by targeted species id, ascending.
    by_species: HashMap<u32, Vec<u32>>,
}

impl Index {
    pub fn build(entries: Vec<Entry>, stats: &HashMap<String, Stats>) -> Index {
        let mut index = Index::default();
        let ranked: Vec<Ranked> = entries
            .into_iter()
            .map(|entry| {
                let s = stats.get(&entry.id).copied().unwrap_or_default();
                let mut intern = |list: &[String]| -> Vec<u32> { list.iter().map(|w| index.intern(w)).collect() };
                Ranked {
                    ecpm: ecpm(entry.kind, entry.bid_micros, s),
                    stats: s,
                    id_hash: fnv1a(entry.id.as_bytes()),
                    species: intern(&entry.species),
                    breeds: intern(&entry.breeds),
                    interests: intern(&entry.interests),
                    regions: intern(&entry.regions),
                    age: entry.age,
                    entry,
                }
            })
            .collect();
        index.ranked = ranked;
        index.sort_and_post();
        index
    }

    /// New click statistics: recomputes the eCPMs and the order in place,
    /// without copying any campaign (the same result as [`Index::build`]
    /// with these statistics).
    pub fn rerank(&mut self, stats: &HashMap<String, Stats>) {
        for r in &mut self.ranked {
            let s = stats.get(&r.entry.id).copied().unwrap_or_default();
            r.stats = s;
            r.ecpm = ecpm(r.entry.kind, r.entry.bid_micros, s);
        }
        self.sort_and_post();
    }

    fn sort_and_post(&mut self) {
        self.ranked.sort_by(|a, b| b.ecpm.cmp(&a.ecpm).then_with(|| a.entry.id.cmp(&b.entry.id)));
        self.any_species.clear();
        self.by_species.clear();
        for (pos, r) in self.ranked.iter().enumerate() {
            if r.species.is_empty() {
                self.any_species.push(pos as u32);
            }
            for id in &r.species {
                self.by_species.entry(*id).or_default().push(pos as u32);
            }
        }
    }

    fn intern(&mut self, word: &str) -> u32 {
        let next = self.words.len() as u32;
        *self.words.entry(word.to_string()).or_insert(next)
    }

    fn lookup(&self, word: Option<&str>) -> Option<u32> {
        word.and_then(|w| self.words.get(w).copied())
    }

    pub fn ranked(&self) -> &[Ranked] {
        &self.ranked
    }

    pub fn len(&self) -> usize {
        self.ranked.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranked.is_empty()
    }

    /// Runs one auction. `gate(position, campaign)` answers for budget and
    /// frequency cap; it is only asked about campaigns whose targeting
    /// matches, in rank order, and only until the price is known.
    pub fn run(
        &self,
        query: &Query,
        reserve_ecpm: i64,
        seed: u64,
        mut gate: impl FnMut(&Ranked) -> bool,
    ) -> Option<Outcome> {
        let species = self.lookup(query.species.as_deref());
        let breed = self.lookup(query.breed.as_deref());
        let region = self.lookup(query.region.as_deref());
        let interests: Vec<u32> = query.interests.iter().filter_map(|i| self.words.get(i.as_str()).copied()).collect();
        let specific: &[u32] = species.and_then(|s| self.by_species.get(&s)).map(Vec::as_slice).unwrap_or(&[]);

        // (ecpm, tie key, position) of the best so far; whether it is tied.
        let mut best: Option<(i64, u64, usize)> = None;
        let mut tied = false;
        let mut second: Option<i64> = None;
        let (mut i, mut j) = (0, 0);
        let any = &self.any_species;
        // Merge the two ascending posting lists: rank order.
        while i < any.len() || j < specific.len() {
            let pos = match (any.get(i), specific.get(j)) {
                (Some(&a), Some(&b)) if a <= b => {
                    i += 1;
                    if a == b {
                        j += 1;
                    }
                    a
                }
                (_, Some(&b)) => {
                    j += 1;
                    b
                }
                (Some(&a), None) => {
                    i += 1;
                    a
                }
                (None, None) => break,
            } as usize;
            let Some(c) = self.ranked.get(pos) else { break };
            if c.ecpm < reserve_ecpm {
                break;
            }
            let matches = (c.breeds.is_empty() || breed.is_some_and(|b| c.breeds.contains(&b)))
                && (c.regions.is_empty() || region.is_some_and(|r| c.regions.contains(&r)))
                && c.age.is_none_or(|(lo, hi)| query.age_months.is_some_and(|a| lo <= a && a <= hi))
                && (c.interests.is_empty() || interests.iter().any(|x| c.interests.contains(x)));
            if !matches || !gate(c) {
                continue;
            }
            match best {
                None => best = Some((c.ecpm, mix(seed ^ c.id_hash), pos)),
                Some((top, key, _)) if c.ecpm == top => {
                    tied = true;
                    let k = mix(seed ^ c.id_hash);
                    if k < key {
                        best = Some((top, k, pos));
                    }
                }
                Some(_) => {
                    second = Some(c.ecpm);
                    break;
                }
            }
        }
        let (top, _, position) = best?;
        let other = if tied { top } else { second.unwrap_or(0) };
        let clearing = other.max(reserve_ecpm).min(top);
        let winner = &self.ranked[position];
        Some(Outcome {
            position,
            ecpm: top,
            clearing_ecpm: clearing,
            price_micros: price_for(winner.entry.kind, winner.entry.bid_micros, winner.stats, clearing),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn entry(id: &str, kind: BidType, bid: i64) -> Entry {
        Entry {
            id: id.into(),
            creative_id: "crv_0".into(),
            kind,
            bid_micros: bid,
            daily_budget_micros: 100 * 1_000_000,
            species: vec![],
            breeds: vec![],
            age: None,
            interests: vec![],
            regions: vec![],
            cap: None,
            title: "t".into(),
            image_url: "https://i.example/a.png".into(),
        }
    }

    #[test]
    fn second_price_with_reserve_and_never_above_bid() {
        let idx = Index::build(
            vec![entry("cmp_a", BidType::Cpm, 3_000_000), entry("cmp_b", BidType::Cpm, 2_000_000)],
            &HashMap::new(),
        );
        let out = idx.run(&Query::default(), 500_000, 1, |_| true).unwrap();
        assert_eq!(idx.ranked()[out.position].entry.id, "cmp_a");
        assert_eq!(out.price_micros, 2_000_000);
        // Alone: pays the reserve.
        let out = idx.run(&Query::default(), 500_000, 1, |c| c.entry.id == "cmp_a").unwrap();
        assert_eq!(out.price_micros, 500_000);
        // Below the reserve: no ad.
        assert!(idx.run(&Query::default(), 5_000_000, 1, |_| true).is_none());
    }

    #[test]
    fn cpc_is_ranked_by_predicted_clicks() {
        // 0.40 per click at the 1 % prior = 4.00 eCPM, beats a 3.00 CPM.
        let idx = Index::build(
            vec![entry("cmp_cpc", BidType::Cpc, 400_000), entry("cmp_cpm", BidType::Cpm, 3_000_000)],
            &HashMap::new(),
        );
        let out = idx.run(&Query::default(), 0, 7, |_| true).unwrap();
        assert_eq!(idx.ranked()[out.position].entry.id, "cmp_cpc");
        assert_eq!(out.ecpm, 4_000_000);
        // Clears at 3.00 eCPM = 0.30 per click.
        assert_eq!(out.price_micros, 300_000);
        // With a poor record (0 clicks in 900 impressions) it drops below.
        let stats = HashMap::from([("cmp_cpc".to_string(), Stats { impressions: 900, clicks: 0 })]);
        let idx = Index::build(
            vec![entry("cmp_cpc", BidType::Cpc, 400_000), entry("cmp_cpm", BidType::Cpm, 3_000_000)],
            &stats,
        );
        let out = idx.run(&Query::default(), 0, 7, |_| true).unwrap();
        assert_eq!(idx.ranked()[out.position].entry.id, "cmp_cpm");
    }

    #[test]
    fn rerank_in_place_equals_a_fresh_build() {
        let mut entries = Vec::new();
        for i in 0..300 {
            let mut e = entry(&format!("cmp_{i:03}"), if i % 2 == 0 { BidType::Cpc } else { BidType::Cpm }, 0);
            e.bid_micros = 10_000 * (1 + (i * 37 % 97) as i64);
            e.species = match i % 3 {
                0 => vec![],
                1 => vec!["dog".into()],
                _ => vec!["cat".into(), "dog".into()],
            };
            entries.push(e);
        }
        let mut idx = Index::build(entries.clone(), &HashMap::new());
        let stats: HashMap<String, Stats> = (0..300)
            .filter(|i| i % 2 == 0)
            .map(|i| (format!("cmp_{i:03}"), Stats { impressions: (i * 53 % 400) as u64, clicks: (i % 9) as u64 }))
            .collect();
        idx.rerank(&stats);
        let fresh = Index::build(entries, &stats);
        let ids = |x: &Index| x.ranked().iter().map(|r| (r.entry.id.clone(), r.ecpm, r.stats)).collect::<Vec<_>>();
        assert_eq!(ids(&idx), ids(&fresh));
        for species in [None, Some("dog"), Some("cat"), Some("fish")] {
            let q = Query { species: species.map(str::to_string), ..Query::default() };
            for seed in 0..20 {
                assert_eq!(idx.run(&q, 0, seed, |_| true), fresh.run(&q, 0, seed, |_| true));
                assert_eq!(idx.run(&q, 0, seed, |r| r.ecpm % 3 != 0), fresh.run(&q, 0, seed, |r| r.ecpm % 3 != 0));
            }
        }
    }

    #[test]
    fn ties_are_broken_fairly() {
        let ids = ["cmp_a", "cmp_b", "cmp_c", "cmp_d"];
        let idx = Index::build(ids.iter().map(|id| entry(id, BidType::Cpm, 1_000_000)).collect(), &HashMap::new());
        let mut wins = HashMap::new();
        for seed in 0..40_000u64 {
            let out = idx.run(&Query::default(), 0, mix(seed), |_| true).unwrap();
            assert_eq!(out.price_micros, 1_000_000, "a tie clears at the tied bid");
            *wins.entry(idx.ranked()[out.position].entry.id.clone()).or_insert(0u32) += 1;
        }
        for id in ids {
            let n = wins[id];
            assert!((9_000..11_000).contains(&n), "{id} won {n} of 40000");
        }
    }

    #[test]
    fn targeting_lists_and_ages() {
        let mut dog = entry("cmp_dog", BidType::Cpm, 2_000_000);
        dog.species = vec!["dog".into()];
        dog.age = Some((2, 24));
        dog.interests = vec!["agility".into(), "toys".into()];
        let idx = Index::build(vec![dog], &HashMap::new());
        let q = |species: Option<&str>, age: Option<u32>, interests: &[&str]| Query {
            species: species.map(str::to_string),
            age_months: age,
            interests: interests.iter().map(|s| s.to_string()).collect(),
            ..Query::default()
        };
        assert!(idx.run(&q(Some("dog"), Some(5), &["toys"]), 0, 0, |_| true).is_some());
        assert!(idx.run(&q(Some("cat"), Some(5), &["toys"]), 0, 0, |_| true).is_none());
        assert!(idx.run(&q(None, Some(5), &["toys"]), 0, 0, |_| true).is_none());
        assert!(idx.run(&q(Some("dog"), Some(30), &["toys"]), 0, 0, |_| true).is_none());
        assert!(idx.run(&q(Some("dog"), None, &["toys"]), 0, 0, |_| true).is_none());
        assert!(idx.run(&q(Some("dog"), Some(5), &["naps"]), 0, 0, |_| true).is_none());
    }

    #[test]
    fn price_never_exceeds_bid_for_odd_ctrs() {
        for imps in [0u64, 1, 7, 99, 1234, 99_999] {
            for clicks in [0u64, 1, 3, 50] {
                let stats = Stats { impressions: imps, clicks: clicks.min(imps) };
                for bid in [10_000i64, 120_000, 990_000, 1_000_000_000] {
                    let e = ecpm(BidType::Cpc, bid, stats);
                    for clearing in [0, e / 3, e.saturating_sub(1), e] {
                        let p = price_for(BidType::Cpc, bid, stats, clearing);
                        assert!(p <= bid && p % CENT_MICROS == 0 && p >= 0, "bid {bid} clearing {clearing} -> {p}");
                    }
                }
            }
        }
    }
}
