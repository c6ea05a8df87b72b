//! `cargo xtask bench search [--count N] [--queries Q] [--no-http]`: search
//! over N generated listings (default 100,000) with real embeddings.
//!
//! Prints, for Q queries (default 200: the 38 judged queries of
//! tests/data/search_relevance.json, 10 broad one-word ones like "dog", and
//! titles of other generated listings, lowercased):
//!
//! - recall@10 of the HNSW index against exact search (the same query with
//!   index scans disabled: a sequential scan ordered by the raw distance),
//!   and the latency of both, for several `hnsw.ef_search`;
//! - the latency of the database part of `GET /v1/search` as the Worker runs
//!   it (the SQL of `workers/marketplace/src/search_sql.rs`, included below):
//!   the typo-correction lookup and the hybrid query, each timed at the
//!   client around the statement itself, one query at a time;
//! - unless `--no-http`, the end-to-end latency of `GET /v1/search` at the
//!   marketplace Worker (query embedding included);
//! - the machine's load average before and after.
//!
//! It starts what it needs on the ports of `PETNET_TEST_SLOT`: a PostgreSQL of
//! its own whose data persists in `.local/bench-search[-N]` (so a second run
//! finds the listings loaded and indexed), and, with HTTP, the test stack's
//! Workers and embedder pointed at that database. The embeddings of the
//! generated listings are cached in the tool cache, keyed by the generator's
//! version, the count and the model, so an empty database is loaded from the
//! cache by binary `COPY` (and the HNSW index built once, after the load)
//! instead of being embedded again.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::process::Supervisor;
use crate::search_eval::{encode, search_spell, search_sql};
use crate::seed::{self, Listing};
use crate::stack::{self, Profile, Secrets};
use crate::{paths, postgres, tools, ui, workers};

/// Seed of the listings (the same as `eval search`).
const SEED: u64 = 1;
/// Seed of the listings whose titles serve as queries (not in the catalog).
const QUERY_SEED: u64 = 7;
/// What the local embedder serves; part of the cache key.
const MODEL: &str = "all-minilm-l6-v2";
const DIMENSIONS: usize = 384;
const EF_SEARCH: &[i32] = &[40, 100, 200, 400];
/// Queries that match a large part of the catalog (a tenth to a third).
const BROAD: &[&str] = &["dog", "cat", "puppy", "kitten", "dog food", "cage", "horse", "fish", "rabbit", "bird"];
const USAGE: &str = "usage: cargo xtask bench search [--count N] [--queries Q] [--no-http]";

struct Options {
    count: u64,
    queries: usize,
    http: bool,
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

pub fn main(args: &[String]) -> Result<()> {
    let mut options = Options { count: 100_000, queries: 200, http: true };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value; {USAGE}"));
        match arg.as_str() {
            "--count" => options.count = value()?.parse().context("--count takes a number")?,
            "--queries" => options.queries = value()?.parse().context("--queries takes a number")?,
            "--no-http" => options.http = false,
            _ => bail!("unknown argument {arg}; {USAGE}"),
        }
    }
    if options.count == 0 || options.queries == 0 {
        bail!("--count and --queries must be positive");
    }
    let load_before = load_average();
    let started = Instant::now();
    let tools = tools::ensure(false, true)?;
    if options.http {
        workers::build_all(&tools)?;
    }
    let ports = Profile::Test.ports();
    let slot = Profile::Test.dir().file_name().map(|n| n.to_string_lossy().replace("test", "")).unwrap_or_default();
    let dir = paths::local().join(format!("bench-search{slot}"));
    let mut supervisor = Supervisor::new(&dir)?;
    let step = ui::step(format!("starting PostgreSQL on 127.0.0.1:{} ({})", ports.postgres, dir.display()));
    postgres::start(
        &mut supervisor,
        &tools.pg_bin,
        &postgres::data_dir(&dir),
        ports.postgres,
        &dir.join("logs").join("postgres.log"),
        true,
    )?;
    step.done();
    let database_url = postgres::url(ports.postgres);
    let mut stack = None;
    let result = (|| {
        let embedder_url = if options.http {
            // The test stack's Workers and embedder, on this database.
            std::env::set_var(Profile::Test.database_url_var(), &database_url);
            let step = ui::step(format!("starting the test stack's Workers ({})", Profile::Test.dir().display()));
            let started = stack.insert(stack::start(Profile::Test, &tools, true, &Secrets::from_env())?);
            step.done();
            format!("http://127.0.0.1:{}", started.ports.embedder)
        } else {
            format!("http://127.0.0.1:{}", ports.embedder)
        };
        let mut embedder = Embedder { url: embedder_url, started: options.http, tools: &tools, dir: dir.clone() };
        let setup = Instant::now();
        let mut client = ::postgres::Client::connect(&database_url, ::postgres::NoTls)?;
        ensure_loaded(&mut client, &mut embedder, &mut supervisor, options.count)?;
        let queries = queries(options.queries, &mut embedder, &mut supervisor)?;
        ui::info(format!(
            "ready to measure {:.1}s after start ({:.1}s of it loading data and queries)",
            started.elapsed().as_secs_f64(),
            setup.elapsed().as_secs_f64()
        ));
        measure(&mut client, &queries, options.count)?;
        if let Some(stack) = &stack {
            measure_http(stack, &queries)?;
        }
        Ok(())
    })();
    if let Some(mut stack) = stack {
        stack.supervisor.stop_all();
    }
    supervisor.stop_all();
    println!("load average before: {load_before}   after: {}   (2 cores)", load_average());
    result
}

/// The embedding service: the test stack's, or one started here when the
/// cache misses and there is no stack.
struct Embedder<'a> {
    url: String,
    started: bool,
    tools: &'a tools::Tools,
    dir: PathBuf,
}

impl Embedder<'_> {
    fn url(&mut self, supervisor: &mut Supervisor) -> Result<&str> {
        if !self.started {
            let port =
                self.url.rsplit(':').next().and_then(|p| p.parse().ok()).context("the embedder URL names no port")?;
            stack::start_embedder(supervisor, self.tools, port, &self.dir.join("logs"))?;
            self.started = true;
        }
        Ok(&self.url)
    }
}

/// Vectors cached in the tool cache: a header (magic, dimensions, count, the
/// SHA-256 of the model and every text) and the vectors as little-endian f32.
struct VectorCache {
    path: PathBuf,
    digest: [u8; 32],
    count: usize,
}

impl VectorCache {
    fn new(name: &str, texts: &[String]) -> VectorCache {
        let mut hash = Sha256::new();
        hash.update(MODEL.as_bytes());
        for text in texts {
            hash.update((text.len() as u64).to_le_bytes());
            hash.update(text.as_bytes());
        }
        let path = paths::tool_cache().join("search-bench").join(format!("{name}-{MODEL}.f32"));
        VectorCache { path, digest: hash.finalize().into(), count: texts.len() }
    }

    fn read(&self) -> Option<Vec<Vec<f32>>> {
        let mut file = std::fs::File::open(&self.path).ok()?;
        let mut header = [0u8; 8 + 4 + 8 + 32];
        file.read_exact(&mut header).ok()?;
        let dims = u32::from_le_bytes(header[8..12].try_into().ok()?) as usize;
        let count = u64::from_le_bytes(header[12..20].try_into().ok()?) as usize;
        if &header[..8] != b"PNVEC001" || dims != DIMENSIONS || count != self.count || header[20..] != self.digest {
            return None;
        }
        let mut data = vec![0u8; count * dims * 4];
        file.read_exact(&mut data).ok()?;
        Some(
            data.chunks_exact(dims * 4)
                .map(|v| v.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
                .collect(),
        )
    }

    fn write(&self, vectors: &[Vec<f32>]) -> Result<()> {
        let dir = self.path.parent().context("cache path")?;
        std::fs::create_dir_all(dir)?;
        let scratch = self.path.with_extension("partial");
        let mut out = std::io::BufWriter::new(std::fs::File::create(&scratch)?);
        out.write_all(b"PNVEC001")?;
        out.write_all(&(DIMENSIONS as u32).to_le_bytes())?;
        out.write_all(&(vectors.len() as u64).to_le_bytes())?;
        out.write_all(&self.digest)?;
        for v in vectors {
            if v.len() != DIMENSIONS {
                bail!("a vector has {} dimensions, not {DIMENSIONS}", v.len());
            }
            for x in v {
                out.write_all(&x.to_le_bytes())?;
            }
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&scratch, &self.path)?;
        Ok(())
    }

    /// The cached vectors, or embeds `texts` and caches them.
    fn get(&self, texts: &[String], embedder: &mut Embedder, supervisor: &mut Supervisor) -> Result<Vec<Vec<f32>>> {
        if let Some(vectors) = self.read() {
            ui::info(format!("{} vectors from the cache ({})", vectors.len(), self.path.display()));
            return Ok(vectors);
        }
        let (model, vectors) = seed::embed_all(embedder.url(supervisor)?, texts)?;
        if model != MODEL {
            bail!("the embedder serves {model}, not {MODEL}");
        }
        self.write(&vectors)?;
        ui::info(format!("cached in {}", self.path.display()));
        Ok(vectors)
    }
}

/// Makes sure the database holds exactly listings `0..count` of [`SEED`],
/// embedded, indexed and analysed; a database already loaded by an earlier
/// run with the same key is used as it is.
fn ensure_loaded(
    client: &mut ::postgres::Client,
    embedder: &mut Embedder,
    supervisor: &mut Supervisor,
    count: u64,
) -> Result<()> {
    let key = format!("g{}-s{SEED}-n{count}-{MODEL}", seed::GENERATOR_VERSION);
    client.batch_execute("CREATE TABLE IF NOT EXISTS bench_search_dataset (key text NOT NULL)")?;
    let loaded: Option<String> = client.query_opt("SELECT key FROM bench_search_dataset", &[])?.map(|r| r.get(0));
    let rows: i64 = client.query_one("SELECT count(*) FROM listings", &[])?.get(0);
    if loaded.as_deref() == Some(key.as_str()) && rows == count as i64 {
        ui::info(format!("the database already holds the {count} listings ({key})"));
        return Ok(());
    }
    let started = Instant::now();
    let listings: Vec<Listing> = (0..count).map(|i| seed::generate(SEED, i)).collect();
    let texts: Vec<String> = listings.iter().map(|l| seed::listing_text(&l.title, &l.description)).collect();
    let vectors = VectorCache::new(&format!("listings-g{}-s{SEED}-n{count}", seed::GENERATOR_VERSION), &texts)
        .get(&texts, embedder, supervisor)?;
    let embedded = started.elapsed();

    let step = ui::step(format!("loading {count} listings (binary COPY), then building the indexes"));
    let load = Instant::now();
    // The indexes as the migrations define them, dropped for the load and
    // built again after it: far faster than inserting into them row by row.
    let mut definitions = Vec::new();
    for index in ["listings_embedding_hnsw", "listings_search_tsv"] {
        let row = client.query_one("SELECT pg_get_indexdef(to_regclass($1))", &[&index])?;
        definitions.push(row.get::<_, Option<String>>(0).with_context(|| format!("no index {index}"))?);
    }
    client.batch_execute(
        "DELETE FROM bench_search_dataset;
         TRUNCATE listings, search_terms CASCADE;
         DROP INDEX listings_embedding_hnsw;
         DROP INDEX listings_search_tsv;",
    )?;
    seed::insert(client, &listings, &vectors, MODEL)?;
    let copied = load.elapsed();
    let index = Instant::now();
    // HNSW builds in memory when the graph fits maintenance_work_mem
    // (~300 MB here), with one parallel worker beside the leader on this
    // 2-core machine.
    client.batch_execute("SET maintenance_work_mem = '1GB'; SET max_parallel_maintenance_workers = 1")?;
    for definition in &definitions {
        client.batch_execute(definition)?;
    }
    client.batch_execute("RESET maintenance_work_mem; RESET max_parallel_maintenance_workers")?;
    client.batch_execute("VACUUM ANALYZE listings")?;
    client.batch_execute("VACUUM ANALYZE search_terms")?;
    client.execute("INSERT INTO bench_search_dataset (key) VALUES ($1)", &[&key])?;
    step.done();
    ui::info(format!(
        "loaded in {:.1}s: vectors {:.1}s, COPY + insert {:.1}s, indexes + analyse {:.1}s",
        started.elapsed().as_secs_f64(),
        embedded.as_secs_f64(),
        copied.as_secs_f64(),
        index.elapsed().as_secs_f64()
    ));
    Ok(())
}

struct Query {
    q: String,
    corrected: String,
    vector: String,
}

/// The judged queries, [`BROAD`] ones, then lowercased titles of listings
/// of another seed.
fn queries(n: usize, embedder: &mut Embedder, supervisor: &mut Supervisor) -> Result<Vec<Query>> {
    let judged: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(paths::root().join("tests/data/search_relevance.json"))?)?;
    let mut texts: Vec<String> = judged["queries"]
        .as_array()
        .context("no queries")?
        .iter()
        .filter_map(|q| q["q"].as_str().map(String::from))
        .take(n)
        .collect();
    // Broad one-word queries: the full-text side ranks thousands of matches.
    for broad in BROAD {
        if texts.len() < n {
            texts.push(broad.to_string());
        }
    }
    let mut i = 0;
    while texts.len() < n {
        let title = seed::generate(QUERY_SEED, i).title.to_lowercase();
        if !texts.contains(&title) {
            texts.push(title);
        }
        i += 1;
    }
    let vectors = VectorCache::new(&format!("queries-g{}-n{n}", seed::GENERATOR_VERSION), &texts)
        .get(&texts, embedder, supervisor)?;
    Ok(texts
        .into_iter()
        .zip(vectors)
        .map(|(q, v)| {
            let items: Vec<String> = v.iter().map(|x| x.to_string()).collect();
            Query { corrected: q.clone(), q, vector: format!("[{}]", items.join(",")) }
        })
        .collect())
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1000.0
}

struct Timings(Vec<Duration>);

impl Timings {
    fn summary(&self) -> String {
        let mut sorted = self.0.clone();
        sorted.sort();
        format!("p50 {:>6.2} ms   p95 {:>6.2} ms", percentile(&sorted, 0.5), percentile(&sorted, 0.95))
    }
}

/// The 10 nearest listings (id, distance) of `depth` read under `settings`
/// (the exact search disables index scans, so the planner sorts every row
/// by the raw distance), and the time of the query statement alone.
fn nearest(
    client: &mut ::postgres::Client,
    vector: &str,
    settings: &str,
    depth: i64,
) -> Result<(Vec<(String, f64)>, Duration)> {
    let mut tx = client.transaction()?;
    tx.batch_execute(settings)?;
    let sql = format!(
        "SELECT id, embedding <=> $1::text::vector FROM listings WHERE embedding_model = $2 AND {}
         ORDER BY embedding <=> $1::text::vector LIMIT {depth}",
        search_sql::FOR_SALE
    );
    let statement = tx.prepare(&sql)?;
    let started = Instant::now();
    let rows = tx.query(&statement, &[&vector, &MODEL])?;
    let elapsed = started.elapsed();
    tx.commit()?;
    let mut found: Vec<(String, f64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    // Relaxed-order iterative scans may return rows slightly out of order.
    found.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    found.truncate(10);
    Ok((found, elapsed))
}

/// recall@10 against the exact answers. Generated listings repeat their
/// texts (41,162 distinct among 100,000), and equal texts have equal
/// vectors, so the exact 10th distance is often shared by more than 10
/// listings and *which* of them are the "true" 10 is arbitrary: a result
/// counts as found when its distance is no greater than the exact 10th
/// distance (the usual tie-aware definition). Also returns the strict
/// recall by id, for reference.
fn recall(got: &[Vec<(String, f64)>], exact: &[Vec<(String, f64)>]) -> (f64, f64) {
    let (mut hits, mut by_id, mut wanted) = (0usize, 0usize, 0usize);
    for (g, e) in got.iter().zip(exact) {
        let Some(&(_, tenth)) = e.last() else { continue };
        hits += g.iter().filter(|(_, d)| *d <= tenth + 1e-9).count().min(e.len());
        by_id += g.iter().filter(|(id, _)| e.iter().any(|(x, _)| x == id)).count();
        wanted += e.len();
    }
    let wanted = wanted.max(1) as f64;
    (hits as f64 / wanted, by_id as f64 / wanted)
}

fn measure(client: &mut ::postgres::Client, queries: &[Query], count: u64) -> Result<()> {
    let exact_settings = "SET LOCAL enable_indexscan = off; SET LOCAL enable_bitmapscan = off";
    let step = ui::step(format!("exact search: {} queries, sequential scans of {count} vectors", queries.len()));
    let mut exact = Vec::new();
    let mut exact_time = Timings(Vec::new());
    for q in queries {
        let (ids, elapsed) = nearest(client, &q.vector, exact_settings, 10)?;
        exact.push(ids);
        exact_time.0.push(elapsed);
    }
    step.done();
    println!(
        "\nsearch over {count} listings, {} queries, one at a time; times of the SQL statement at the client",
        queries.len()
    );
    println!("{:<58} {:>9} {:>6}   latency", "", "recall@10", "(ids)");
    println!(
        "{:<58} {:>9} {:>6}   {}",
        "exact (index scans off: sequential scan + sort)",
        "1.000",
        "1.000",
        exact_time.summary()
    );
    let show = |label: String, got: &[Vec<(String, f64)>], time: &Timings| {
        let (r, by_id) = recall(got, &exact);
        println!("{label:<58} {r:>9.3} {by_id:>6.3}   {}", time.summary());
    };
    for &ef in EF_SEARCH {
        // Index scans only: this measures the index, whatever the planner
        // would pick for a table this size.
        let settings = format!(
            "SET LOCAL enable_seqscan = off; SET LOCAL hnsw.iterative_scan = relaxed_order; SET LOCAL hnsw.ef_search = {ef}"
        );
        // A first pass warms the index's pages; the second is measured.
        for q in queries {
            nearest(client, &q.vector, &settings, 10)?;
        }
        let (mut got, mut time) = (Vec::new(), Timings(Vec::new()));
        for q in queries {
            let (ids, elapsed) = nearest(client, &q.vector, &settings, 10)?;
            got.push(ids);
            time.0.push(elapsed);
        }
        show(format!("HNSW top 10, ef_search = {ef}"), &got, &time);
    }
    // The semantic half as the Worker runs it: DEPTH candidates under the
    // Worker's settings, of which the first 10 by distance.
    let (mut got, mut time) = (Vec::new(), Timings(Vec::new()));
    for q in queries {
        let (ids, elapsed) = nearest(client, &q.vector, search_sql::SCAN_SETTINGS, search_sql::DEPTH)?;
        got.push(ids);
        time.0.push(elapsed);
    }
    show(format!("HNSW top {} with the Worker's settings, first 10", search_sql::DEPTH), &got, &time);

    // The database part of GET /v1/search: the typo lookup, then the hybrid query.
    let mut corrections = Timings(Vec::new());
    let mut hybrid = Timings(Vec::new());
    let mut both = Timings(Vec::new());
    let sql = search_sql::hybrid(search_sql::FOR_SALE, Some((3, 4)), 11, 0);
    for pass in 0..2 {
        for q in queries {
            let started = Instant::now();
            let rows = client.query(search_spell::CANDIDATES_SQL, &[&q.q])?;
            let lookup = started.elapsed();
            let mut fixes = std::collections::HashMap::new();
            for row in rows {
                let word: String = row.get(0);
                let candidates: Vec<String> = row.get(1);
                if let Some(fix) = search_spell::best(&word, &candidates) {
                    fixes.insert(word, fix.to_string());
                }
            }
            let corrected = search_spell::apply(&q.corrected, &fixes);
            let mut tx = client.transaction()?;
            tx.batch_execute(search_sql::SCAN_SETTINGS)?;
            let statement = tx.prepare(&sql)?;
            let started = Instant::now();
            let params: [&(dyn ::postgres::types::ToSql + Sync); 4] = [&q.q, &corrected, &q.vector, &MODEL];
            tx.query(&statement, &params)?;
            let query = started.elapsed();
            tx.commit()?;
            if pass == 1 {
                corrections.0.push(lookup);
                hybrid.0.push(query);
                both.0.push(lookup + query);
            }
        }
    }
    println!("{:<58} {:>16}   {}", "typo lookup (search_terms, pg_trgm)", "", corrections.summary());
    println!("{:<58} {:>16}   {}", "hybrid query (HNSW + full text + RRF, limit 10)", "", hybrid.summary());
    println!("{:<58} {:>16}   {}", "database part of a search (lookup + hybrid)", "", both.summary());
    Ok(())
}

/// `GET /v1/search` end to end at the marketplace Worker (its own workerd
/// socket when it can be found, else wrangler's proxy): connection to
/// PostgreSQL, typo lookup, query embedding, hybrid query, JSON.
fn measure_http(stack: &stack::Stack, queries: &[Query]) -> Result<()> {
    let (base, at) = match stack.direct_url("marketplace") {
        Ok(url) => (url, "at the Worker's workerd socket"),
        Err(_) => (stack.url("marketplace"), "through wrangler's proxy"),
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut time = Timings(Vec::new());
    for pass in 0..2 {
        for q in queries {
            let url = format!("{base}/v1/search?q={}&limit=10", encode(&q.q));
            let started = Instant::now();
            let mut response = agent.get(&url).call().with_context(|| format!("GET {url}"))?;
            let body = response.body_mut().read_to_string()?;
            let elapsed = started.elapsed();
            if response.status() != 200 {
                bail!("GET {url}: {} {body}", response.status());
            }
            if pass == 1 {
                time.0.push(elapsed);
            }
        }
    }
    println!("{:<58} {:>16}   {}", format!("GET /v1/search end to end ({at})"), "", time.summary());
    Ok(())
}
