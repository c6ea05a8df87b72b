-- The vocabulary of the listings, for typo tolerance in search: every word
-- (PostgreSQL's `simple` parser: lowercased, not stemmed) of every listing's
-- title, description, breed and species, with a trigram index to find the
-- known words closest to a misspelled one (workers/marketplace/src/search_spell.rs,
-- docs/search.md). Words are only ever added: a word whose last listing is
-- gone may still be offered as a correction, which finds nothing and harms
-- nothing.
CREATE TABLE search_terms (term text PRIMARY KEY);
CREATE INDEX search_terms_trgm ON search_terms USING gin (term gin_trgm_ops);

CREATE FUNCTION listing_words(title text, description text, breed text, species text) RETURNS SETOF text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT w FROM unnest(tsvector_to_array(to_tsvector('simple',
        title || ' ' || description || ' ' || coalesce(breed, '') || ' ' || species))) w
    WHERE char_length(w) BETWEEN 3 AND 40 AND w ~ '^[[:alpha:]]+$'
$$;

-- Inserts: once per statement, over all the new rows (a bulk load stays bulk).
CREATE FUNCTION search_terms_from_new_listings() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO search_terms (term)
    SELECT DISTINCT w FROM new_listings, listing_words(title, description, breed, species) w
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;
CREATE TRIGGER listings_search_terms_insert AFTER INSERT ON listings
    REFERENCING NEW TABLE AS new_listings FOR EACH STATEMENT EXECUTE FUNCTION search_terms_from_new_listings();

-- Updates: only those that change the text (not reservations and sales).
CREATE FUNCTION search_terms_from_changed_listing() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO search_terms (term)
    SELECT DISTINCT w FROM listing_words(NEW.title, NEW.description, NEW.breed, NEW.species) w
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;
CREATE TRIGGER listings_search_terms_update AFTER UPDATE OF title, description, breed, species ON listings
    FOR EACH ROW EXECUTE FUNCTION search_terms_from_changed_listing();

INSERT INTO search_terms (term)
SELECT DISTINCT w FROM listings, listing_words(title, description, breed, species) w
ON CONFLICT DO NOTHING;
