-- Which chat columns hold the source's values, per sync (slot): a column
-- added to SYNC_COLUMNS is recorded unfilled until cdc run has backfilled
-- it, and a change of SYNC_COLUMNS by cdc migrate is what a running cdc
-- follows.

-- +goose Up
CREATE TABLE IF NOT EXISTS cdc_columns (
    slot_name     text NOT NULL,
    chat_column   text NOT NULL,
    source_column text NOT NULL,
    filled        boolean NOT NULL,  -- every existing row has the source's values
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (slot_name, chat_column)
);

-- +goose Down
DROP TABLE IF EXISTS cdc_columns;
