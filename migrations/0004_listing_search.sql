-- Search over listings: a sentence embedding of title + description (with
-- the name of the model that made it: vectors of two models are never
-- compared) and a full-text vector, fused by reciprocal rank fusion at query
-- time (workers/marketplace/src/search.rs, docs/search.md).
ALTER TABLE listings
    ADD COLUMN embedding vector(384),
    ADD COLUMN embedding_model text,
    ADD COLUMN search_tsv tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('english', title), 'A')
        || setweight(to_tsvector('english', coalesce(breed, '')), 'A')
        || setweight(to_tsvector('english', species), 'B')
        || setweight(to_tsvector('english', description), 'C')
    ) STORED,
    ADD CONSTRAINT listings_embedding_has_model CHECK ((embedding IS NULL) = (embedding_model IS NULL));

-- Cosine distance, as the models' vectors are compared. Filters (species,
-- price, ...) are applied during the scan with pgvector 0.8's iterative
-- index scans, so a selective filter does not starve the result.
CREATE INDEX listings_embedding_hnsw ON listings USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64);
CREATE INDEX listings_search_tsv ON listings USING gin (search_tsv);
-- Listings still waiting for an embedding (the embedder was down when they
-- were written), for the backfill.
CREATE INDEX listings_embedding_pending ON listings (id) WHERE embedding IS NULL;
