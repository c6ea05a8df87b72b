//! The SQL of `GET /v1/search` as plain strings, without dependencies, so
//! that `cargo xtask eval search` and `cargo xtask bench search` run exactly
//! what the Worker runs (xtask includes this file with `#[path]`).
//!
//! Parameters: `$1` the query as typed, `$2` the query with its misspellings
//! corrected (`search_spell`), then the filters' values, then (semantic side)
//! the query's vector and its model's name.

/// Candidates taken from each ranking; results past the fused list of these
/// are not paged to.
pub const DEPTH: i64 = 100;
/// The usual RRF constant: dampens the weight of the very first ranks.
pub const RRF_K: i64 = 60;

/// Set in the search's transaction. Keep reading the HNSW graph until
/// [`DEPTH`] rows pass the filters (pgvector 0.8 iterative index scans);
/// relaxed order is fine since the candidates are re-sorted by distance. The
/// scan stops after `max_scan_tuples`, which bounds the cost of a filter that
/// almost nothing matches. `ef_search` 200, twice [`DEPTH`]: recall@10 of
/// the index against exact search is 0.97 on 100,000 listings, 0.95 at 100
/// (`cargo xtask bench search`, docs/search.md).
pub const SCAN_SETTINGS: &str =
    "SET LOCAL hnsw.iterative_scan = relaxed_order; SET LOCAL hnsw.ef_search = 200; SET LOCAL hnsw.max_scan_tuples = 40000";

/// Listings that can be found at all: not removed, something left to buy.
pub const FOR_SALE: &str = "status = 'active' AND quantity > reserved + sold";

/// The full-text query: every word of the query as typed, or every word of
/// it as corrected (the same query when nothing was corrected).
///
/// Listings with only some of the words are left to the semantic ranking:
/// ranking them here too ("any word", ordered after "every word") measured
/// worse (nDCG@10 0.883 against 0.911 on `eval search`: "calm older cat for
/// a flat" then ranks every listing that says "cat") and costs a rank of a
/// large part of the catalog per query.
pub const FULLTEXT_QUERY: &str = "CASE WHEN $1 = $2 THEN plainto_tsquery('english', $1)
    ELSE plainto_tsquery('english', $1) || plainto_tsquery('english', $2) END";

/// The full-text ranking: ids with their rank by cover density, at most
/// [`DEPTH`].
pub fn fulltext(where_sql: &str) -> String {
    format!(
        "SELECT id, row_number() OVER (ORDER BY r DESC, id) AS rank FROM (
             SELECT id, ts_rank_cd(search_tsv, words.q, 32) AS r
             FROM listings, (SELECT {FULLTEXT_QUERY} AS q) words
             WHERE search_tsv @@ words.q AND {where_sql}
             ORDER BY r DESC, id LIMIT {DEPTH}) candidates"
    )
}

/// The semantic ranking: the [`DEPTH`] nearest listings by cosine distance
/// (HNSW index), `$v` the query's vector as text, `$m` its model.
pub fn semantic(where_sql: &str, v: usize, m: usize) -> String {
    format!(
        "SELECT id, row_number() OVER (ORDER BY dist, id) AS rank FROM (
             SELECT id, embedding <=> ${v}::text::vector AS dist FROM listings
             WHERE embedding_model = ${m} AND {where_sql}
             ORDER BY embedding <=> ${v}::text::vector LIMIT {DEPTH}) candidates"
    )
}

/// Both rankings fused by reciprocal rank fusion; one page of the fused list
/// (`fetch` rows from `offset`) with what the API shows of each listing.
/// `vector` is the parameter numbers of the query's vector and model, or
/// `None` for full-text only (no embedding).
pub fn hybrid(where_sql: &str, vector: Option<(usize, usize)>, fetch: i64, offset: i64) -> String {
    let semantic = match vector {
        Some((v, m)) => semantic(where_sql, v, m),
        None => "SELECT NULL::text AS id, NULL::bigint AS rank WHERE false".to_string(),
    };
    let fulltext = fulltext(where_sql);
    format!(
        "WITH semantic AS ({semantic}),
         fulltext AS ({fulltext}),
         fused AS (
             SELECT id, (COALESCE(1.0 / ({RRF_K} + s.rank), 0) + COALESCE(1.0 / ({RRF_K} + f.rank), 0))::float8 AS score
             FROM semantic s FULL OUTER JOIN fulltext f USING (id))
         SELECT l.id, l.title, l.price_minor, l.currency, l.species, l.region, fused.score
         FROM fused JOIN listings l USING (id)
         ORDER BY fused.score DESC, l.id
         LIMIT {fetch} OFFSET {offset}"
    )
}
