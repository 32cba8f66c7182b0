#!/usr/bin/env bash
# Regenerates .sqlx/, the data the compile-time checked queries (sqlx::query! and friends) build
# from without a database (.cargo/config.toml sets SQLX_OFFLINE=true). Run it after changing a
# query or a migration, and commit .sqlx/ with the change:
#   bash scripts/sqlx-prepare.sh           # regenerate .sqlx/
#   bash scripts/sqlx-prepare.sh --check   # fail if .sqlx/ is not what the code and schema give
# It migrates a scratch database (finestra_sqlx) with every schema's migrations, the way each
# owning service does (one schema each, its migrations in order, each in a transaction), then
# makes every crate's macros describe their queries against it.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export PGHOST=127.0.0.1 PGUSER=postgres
db=finestra_sqlx
check=false
[[ "${1:-}" == "--check" ]] && check=true

psql -d postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)"
createdb "$db"
migrate() { # <schema> <migrations dir>
  psql -d "$db" -v ON_ERROR_STOP=1 -qc "CREATE SCHEMA IF NOT EXISTS $1"
  for f in "$2"/*.sql; do
    PGOPTIONS="-c search_path=$1" psql -d "$db" -v ON_ERROR_STOP=1 -1 -q -f "$f" >/dev/null
  done
}
migrate accounts crates/registry/migrations
migrate windows services/window/migrations
migrate billing services/billing/migrations
migrate dispatch services/dispatch/migrations
migrate sim services/simulator/migrations

out="$PWD/.sqlx"
$check && out="$PWD/target/sqlx-check"
rm -rf "$out" && mkdir -p "$out"
# The macros run again only when their crate is rebuilt: touch every source so all are.
git ls-files -z '*.rs' | grep -zv '/build\.rs$' | xargs -0 touch
DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db" SQLX_OFFLINE=false SQLX_OFFLINE_DIR="$out" \
  cargo check --quiet --workspace --all-targets --all-features
if $check; then
  if ! diff -r .sqlx "$out" >/dev/null; then
    echo "[sqlx] .sqlx/ is stale: run bash scripts/sqlx-prepare.sh and commit it" >&2
    diff -r .sqlx "$out" | head -20 >&2
    exit 1
  fi
  echo "[sqlx] .sqlx/ matches the queries and the schema"
else
  echo "[sqlx] $(ls .sqlx | wc -l) queries described into .sqlx/"
fi
