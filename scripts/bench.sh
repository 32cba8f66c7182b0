#!/usr/bin/env bash
# `make bench`: the benchmarks in one run (release build), each with its own progress
# lines and bounded duration, then one report: var/bench/result.json, var/bench/chart.svg and a
# one-screen summary with ratios to the raw broker rate measured in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/infra.sh
say() { printf '[bench] %s\n' "$*"; }
say "building the benchmarks (release)"
cargo build --quiet --release -p finestra-e2e --bin bench-ingest --bin bench-billing --bin bench-send --bin bench-fair \
  --bin bench-cpu --bin bench-campaign --bin bench-gateway -p finestra-window -p finestra-ingest -p finestra-accounts \
  -p finestra-billing -p finestra-simulator -p finestra-dispatch -p finestra-gateway
rm -f var/bench-ingest.json var/bench-billing.json var/bench-send.json var/bench-fair.json var/bench-cpu.json var/bench-campaign.json var/bench-gateway.json
export BENCH_BROKER_ENGINE="$(ps -o args= -C tansu | grep -o 'storage-engine [^ ]*' | head -n1 || echo unknown)"
# Each benchmark stops by itself; the timeout only bounds a hung one.
for b in ingest billing send fair cpu campaign gateway; do
  say "bench-$b"
  timeout 900 "./target/release/bench-$b" >"var/bench-$b.out"
  sed 's/^/  /' "var/bench-$b.out"
done
python3 scripts/bench_report.py
