-- A denser HNSW graph for listing embeddings: m = 32, ef_construction = 200
-- (0004 had 16 and 64). Listings of one kind are near-duplicates of each
-- other (the same product, another seller's sentence), and HNSW's neighbour
-- pruning then keeps mostly the cluster's own members as neighbours, cutting
-- clusters off the graph: on 100,000 generated listings recall@10 was 0.85 at
-- ef_search 100 and 0.87 at 200 with (16, 64); with (32, 200) it is 0.95 and
-- 0.97 (`cargo xtask bench search`, docs/search.md). The index is about
-- twice as large and takes about twice as long to build.
--
-- On a large production table, build the new index by hand first with
-- CREATE INDEX CONCURRENTLY (migrations run in a transaction) and swap names.
DROP INDEX IF EXISTS listings_embedding_hnsw;
CREATE INDEX listings_embedding_hnsw ON listings USING hnsw (embedding vector_cosine_ops) WITH (m = 32, ef_construction = 200);
