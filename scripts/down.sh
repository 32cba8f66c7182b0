#!/usr/bin/env bash
# `make down`: stops exactly what `make up` started (the pids in var/run), gracefully first.
set -uo pipefail
cd "$(dirname "$0")/.."
for pidfile in var/run/*.pid; do
  [ -f "$pidfile" ] || continue
  name=$(basename "$pidfile" .pid)
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "[down] $name did not stop in 30 s; killing it"
      kill -KILL "$pid"
    fi
    echo "[down] $name stopped"
  fi
  rm -f "$pidfile"
done
