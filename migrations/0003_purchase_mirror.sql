-- The operators' view across purchases. Each purchase's Durable Object owns
-- its state; this is a mirror of its summary, written with the saga's
-- revision and only ever replaced by a newer one.
CREATE TABLE purchases (
    id           text PRIMARY KEY,
    state        text NOT NULL,
    listing_id   text NOT NULL,
    buyer_id     text NOT NULL,
    seller_id    text NOT NULL,
    quantity     integer NOT NULL CHECK (quantity > 0),
    amount_minor bigint NOT NULL CHECK (amount_minor >= 0),
    currency     text NOT NULL,
    revision     bigint NOT NULL,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL
);
CREATE INDEX purchases_by_created ON purchases (created_at DESC, id DESC);
CREATE INDEX purchases_by_state ON purchases (state, created_at DESC, id DESC);
