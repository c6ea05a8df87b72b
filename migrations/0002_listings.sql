-- Marketplace listings and the units reserved or sold against them.
-- available = quantity - reserved - sold, never negative (the CHECK is the
-- last line of defence; reservations use one conditional UPDATE).
CREATE TABLE listings (
    id             text PRIMARY KEY,
    seller_id      text NOT NULL,
    seller_account text NOT NULL,
    title          text NOT NULL,
    description    text NOT NULL DEFAULT '',
    species        text NOT NULL,
    breed          text,
    age_months     integer CHECK (age_months >= 0),
    region         text NOT NULL,
    price_minor    bigint NOT NULL CHECK (price_minor > 0),
    currency       text NOT NULL,
    quantity       integer NOT NULL CHECK (quantity >= 0),
    reserved       integer NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    sold           integer NOT NULL DEFAULT 0 CHECK (sold >= 0),
    status         text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'removed')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (reserved + sold <= quantity)
);

-- One row per purchase: reserving, releasing and selling are idempotent by
-- purchase id.
CREATE TABLE reservations (
    purchase_id text PRIMARY KEY,
    listing_id  text NOT NULL REFERENCES listings (id),
    quantity    integer NOT NULL CHECK (quantity > 0),
    status      text NOT NULL CHECK (status IN ('reserved', 'released', 'sold')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reservations_listing ON reservations (listing_id);
