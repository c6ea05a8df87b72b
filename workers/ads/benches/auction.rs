//! The auction alone, over 10,000 active campaigns (target: < 50 µs).
//! `cargo bench -p ads --bench auction`

use std::collections::HashMap;

use ads::auction::{Index, Query, Stats};
use ads::campaign::{BidType, Entry};
use criterion::{black_box, criterion_group, criterion_main, Criterion};

const SPECIES: &[&str] = &["dog", "cat", "rabbit", "parrot", "fish", "horse"];
const INTERESTS: &[&str] = &["agility", "toys", "grooming", "food", "travel", "naps", "training"];
const REGIONS: &[&str] = &["berlin", "paris", "madrid", "rome", "vienna"];

fn rng(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn index() -> Index {
    let mut s = 1;
    let entries: Vec<Entry> = (0..10_000)
        .map(|i| Entry {
            id: format!("cmp_{i:05}"),
            creative_id: "crv_x".into(),
            kind: if i % 2 == 0 { BidType::Cpm } else { BidType::Cpc },
            bid_micros: if i % 2 == 0 {
                (1 + rng(&mut s) % 40) as i64 * 100_000
            } else {
                (1 + rng(&mut s) % 40) as i64 * 10_000
            },
            daily_budget_micros: 1_000_000_000,
            species: vec![SPECIES[(rng(&mut s) % 6) as usize].to_string()],
            breeds: vec![],
            age: (i % 3 == 0).then_some((0, 60)),
            interests: if i % 4 == 0 { vec![INTERESTS[(rng(&mut s) % 7) as usize].to_string()] } else { vec![] },
            regions: if i % 2 == 0 { vec![REGIONS[(rng(&mut s) % 5) as usize].to_string()] } else { vec![] },
            cap: None,
            title: "t".into(),
            image_url: "https://i.example/a.png".into(),
        })
        .collect();
    let stats: HashMap<String, Stats> =
        entries.iter().map(|e| (e.id.clone(), Stats { impressions: 1000, clicks: 12 })).collect();
    Index::build(entries, &stats)
}

fn bench(c: &mut Criterion) {
    let index = index();
    let typical = Query {
        species: Some("dog".into()),
        breed: Some("labrador".into()),
        age_months: Some(14),
        interests: vec!["toys".into(), "naps".into()],
        region: Some("berlin".into()),
    };
    // Nothing matches: every campaign of the species is walked.
    let selective = Query {
        species: Some("cat".into()),
        age_months: None,
        interests: vec!["nothing".into()],
        region: Some("nowhere".into()),
        breed: None,
    };
    let mut seed = 0u64;
    c.bench_function("auction 10k campaigns, typical request", |b| {
        b.iter(|| {
            seed += 1;
            black_box(index.run(black_box(&typical), 500_000, seed, |_| true))
        })
    });
    c.bench_function("auction 10k campaigns, nothing eligible (worst case)", |b| {
        b.iter(|| black_box(index.run(black_box(&selective), 500_000, 1, |_| true)))
    });
    // Half the campaigns out of budget or capped.
    c.bench_function("auction 10k campaigns, half gated out", |b| {
        b.iter(|| black_box(index.run(black_box(&typical), 500_000, 3, |c| c.ecpm % 2 == 0)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
