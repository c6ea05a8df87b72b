-- pgvector for listing embeddings, pg_trgm for typo-tolerant text matching.
CREATE EXTENSION IF NOT EXISTS vector;
CREATE EXTENSION IF NOT EXISTS pg_trgm;
