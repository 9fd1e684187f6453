-- cdc's bookkeeping in the chat database.

-- +goose Up
CREATE TABLE IF NOT EXISTS cdc_checkpoint (
    slot_name        text PRIMARY KEY,
    lsn              pg_lsn NOT NULL,       -- end of the last source transaction applied
    partial_xact_lsn pg_lsn,                -- a transaction applied only in part (split across batches)
    partial_changes  bigint NOT NULL DEFAULT 0, -- how many of its changes are applied
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS sync_errors (
    id          bigserial PRIMARY KEY,
    error_type  text NOT NULL,
    user_id     text,
    message     text NOT NULL,
    detail      text,
    payload     jsonb,
    lsn         pg_lsn,
    attempts    integer NOT NULL DEFAULT 1,
    resolved    boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz
);

CREATE INDEX IF NOT EXISTS sync_errors_unresolved_user_id ON sync_errors (user_id) WHERE NOT resolved;

-- +goose Down
DROP TABLE IF EXISTS sync_errors;
DROP TABLE IF EXISTS cdc_checkpoint;
