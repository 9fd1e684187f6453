-- A change that keeps failing updates its open dead letter (attempts,
-- message, payload, LSN) instead of adding a row per failure.

-- +goose Up
ALTER TABLE sync_errors ADD COLUMN IF NOT EXISTS last_attempt_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX IF NOT EXISTS sync_errors_created_at ON sync_errors (created_at);

-- +goose Down
DROP INDEX IF EXISTS sync_errors_created_at;
ALTER TABLE sync_errors DROP COLUMN IF EXISTS last_attempt_at;
