#!/bin/sh
# Runs once, when the bundled source database is first initialised (it stands
# in for the backend's database): the reference users table, if the backend
# has not created it, and the least-privileged role cdc run logs in as
# (REPLICATION, and SELECT on users once cdc migrate grants it).
set -eu
psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" -v pw="$CDC_SOURCE_PASSWORD" <<'SQL'
CREATE TABLE IF NOT EXISTS public.users (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    first_name      text NOT NULL,
    last_name       text,
    email           text UNIQUE,
    phone           text,
    password_hash   text,
    role            text,
    status          text,
    profile_picture text,
    created_at      timestamptz DEFAULT now(),
    updated_at      timestamptz DEFAULT now()
);
CREATE INDEX IF NOT EXISTS users_updated_at_idx ON public.users (updated_at);
CREATE ROLE cdc_source LOGIN REPLICATION PASSWORD :'pw';
SQL
