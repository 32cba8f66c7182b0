#!/usr/bin/env bash
# Brings up what Finestra needs on one machine, idempotently: Postgres and Redis (started only
# if down), the `finestra` database, the tansu broker (installed once, started with its SQLite
# engine if nothing listens on 9092), the topics and the migrations. A second run changes
# nothing and takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p var/run

say() { printf '[infra] %s\n' "$*"; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { # port seconds what
  for _ in $(seq 1 $(( $2 * 10 ))); do port_open "$1" && return 0; sleep 0.1; done
  say "$3 did not come up on port $1"; return 1
}

export PATH="$HOME/.cargo/bin:$PATH"
PGHOST=127.0.0.1 PGUSER=postgres
export PGHOST PGUSER

if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  say "starting PostgreSQL"
  # Debian's cluster tools (this machine kind runs as root; elsewhere start it yourself).
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  wait_port 5432 30 PostgreSQL
  for _ in $(seq 1 50); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 0.2; done
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  say "starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  wait_port 6379 10 Redis
fi
exists=$(psql -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'finestra'")
if [ "$exists" != "1" ]; then
  say "creating database finestra"
  createdb finestra
fi

if ! command -v tansu >/dev/null 2>&1 || ! tansu --version 2>/dev/null | grep -q '0\.6\.0'; then
  say "installing tansu 0.6.0 (once; about 15 minutes on 2 cores)"
  cargo install tansu --version 0.6.0 --locked --features dynostore,libsql
fi
if ! port_open 9092; then
  say "starting tansu (SQLite engine, var/tansu.db)"
  # The SQLite path must be relative to the working directory (an absolute one is mangled).
  # Its SQLite engine serves one storage call at a time on one task: one runtime thread spends
  # 10-20 % less CPU per record than one per core (docs/events.md).
  TOKIO_WORKER_THREADS=1 nohup tansu broker --storage-engine sqlite://var/tansu.db \
    --listener-url tcp://127.0.0.1:9092 --advertised-listener-url tcp://127.0.0.1:9092 \
    >var/tansu.log 2>&1 &
  # `make up` records the pid in its run folder so `make down` stops it; otherwise it stays.
  echo $! >"${FINESTRA_TANSU_PIDFILE:-var/tansu.pid}"
  wait_port 9092 30 tansu
fi

say "building the CLI and services"
cargo build --quiet -p finestra-cli -p finestra-window -p finestra-ingest -p finestra-accounts \
  -p finestra-billing -p finestra-simulator -p finestra-dispatch -p finestra-gateway --bins
./target/debug/finestra migrate
FINESTRA_LOG=warn ./target/debug/finestra-window migrate
FINESTRA_LOG=warn ./target/debug/finestra-billing migrate
FINESTRA_LOG=warn ./target/debug/finestra-dispatch migrate
./target/debug/finestra topics --partitions 4
say "ready: postgres 5432, redis 6379, kafka (tansu) 9092"
