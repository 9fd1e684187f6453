-- The source's timeline as each sync (slot) last saw it, and whether a
-- promotion of its standby keeps the slot: a cdc started after a
-- promotion (a new timeline) knows whether the slot it finds can be
-- trusted or must be created again with a copy.

-- +goose Up
CREATE TABLE IF NOT EXISTS cdc_source (
    slot_name       text PRIMARY KEY,
    timeline        integer NOT NULL,
    promotion_keeps boolean NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- +goose Down
DROP TABLE IF EXISTS cdc_source;
