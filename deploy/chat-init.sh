#!/bin/sh
# Runs once, when the bundled chat database is first initialised: the
# least-privileged role cdc run logs in as (cdc migrate grants it what it
# needs on the chat table and cdc's own tables).
set -eu
psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" -v pw="$CDC_CHAT_PASSWORD" <<'SQL'
CREATE ROLE cdc_chat LOGIN PASSWORD :'pw';
SQL
