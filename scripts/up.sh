#!/usr/bin/env bash
# `make up`: infrastructure, then accounts, ingest, window, billing, the simulator, dispatch and the gateway in the background (pids and logs in
# var/run), then the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
FINESTRA_TANSU_PIDFILE=var/run/tansu.pid bash scripts/infra.sh
RUN=var/run
mkdir -p "$RUN"

export FINESTRA_LOG=${FINESTRA_LOG:-info,sqlx=warn,rdkafka=warn}

start() { # name binary env...
  local name=$1 bin=$2; shift 2
  if [ -f "$RUN/$name.pid" ] && kill -0 "$(cat "$RUN/$name.pid")" 2>/dev/null; then
    echo "[up] $name already running (pid $(cat "$RUN/$name.pid"))"
    return
  fi
  env "$@" nohup "./target/debug/$bin" >"$RUN/$name.log" 2>&1 &
  echo $! >"$RUN/$name.pid"
  echo "[up] $name started (pid $!, log $RUN/$name.log)"
}

# One operator key, created once: the demo uses it, and the services that make internal calls
# (dispatch -> billing reservations, the simulator -> ingest block reports) present it.
if [ ! -s "$RUN/operator.key" ]; then
  ./target/debug/finestra --json bootstrap --prefix fin_test_ --another \
    | sed -n 's/.*"secret":"\([^"]*\)".*/\1/p' >"$RUN/operator.key"
fi
OPERATOR_KEY=$(cat "$RUN/operator.key")

start accounts finestra-accounts \
  FINESTRA_GRPC_ADDR=127.0.0.1:7050 FINESTRA_METRICS_ADDR=127.0.0.1:9100 FINESTRA_KEY_PREFIX=fin_test_
start ingest finestra-ingest \
  FINESTRA_HTTP_ADDR=127.0.0.1:8080 FINESTRA_GRPC_ADDR=127.0.0.1:7051 FINESTRA_METRICS_ADDR=127.0.0.1:9101
start window finestra-window \
  FINESTRA_GRPC_ADDR=127.0.0.1:7052 FINESTRA_METRICS_ADDR=127.0.0.1:9102
start billing finestra-billing \
  FINESTRA_GRPC_ADDR=127.0.0.1:7053 FINESTRA_METRICS_ADDR=127.0.0.1:9103
start simulator finestra-simulator \
  FINESTRA_SIM_HTTP_ADDR=127.0.0.1:8090 FINESTRA_SIM_WEBHOOK_URL=http://127.0.0.1:8080/webhooks/cloud-api \
  FINESTRA_SIM_INGEST_URL=http://127.0.0.1:7051 FINESTRA_SIM_INGEST_KEY="$OPERATOR_KEY"
start dispatch finestra-dispatch \
  FINESTRA_GRPC_ADDR=127.0.0.1:7054 FINESTRA_METRICS_ADDR=127.0.0.1:9104 \
  FINESTRA_DISPATCH_BILLING_URL=http://127.0.0.1:7053 FINESTRA_DISPATCH_BILLING_KEY="$OPERATOR_KEY" \
  FINESTRA_PROVIDER_URL=http://127.0.0.1:8090
start gateway finestra-gateway \
  FINESTRA_GATEWAY_HTTP_ADDR=127.0.0.1:8088 FINESTRA_GRPC_ADDR=127.0.0.1:7056 FINESTRA_METRICS_ADDR=127.0.0.1:9106 \
  FINESTRA_GATEWAY_DISPATCH_URL=http://127.0.0.1:7054 FINESTRA_GATEWAY_ACCOUNTS_URL=http://127.0.0.1:7050

for port in 9100 9101 9102 9103 9104 9106; do
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.2
  done
  curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null || { echo "[up] service on $port is not ready; see $RUN/*.log"; exit 1; }
done
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:8090/healthz" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fsS "http://127.0.0.1:8090/healthz" >/dev/null || { echo "[up] the simulator is not up; see $RUN/simulator.log"; exit 1; }
echo "[up] accounts: gRPC 127.0.0.1:7050, metrics http://127.0.0.1:9100/metrics"
echo "[up] ingest: webhooks http://127.0.0.1:8080/webhooks/cloud-api, gRPC 127.0.0.1:7051, metrics http://127.0.0.1:9101/metrics"
echo "[up] window: gRPC 127.0.0.1:7052, metrics http://127.0.0.1:9102/metrics"
echo "[up] billing: gRPC 127.0.0.1:7053, metrics http://127.0.0.1:9103/metrics"
echo "[up] dispatch: gRPC 127.0.0.1:7054, metrics http://127.0.0.1:9104/metrics"
echo "[up] gateway (the Cloud API for businesses): http://127.0.0.1:8088/v21.0/<phone_number_id>/messages, metrics http://127.0.0.1:9106/metrics"
echo "[up] simulator (the messaging network): http://127.0.0.1:8090 (Cloud API send surface, /sim/v1 users)"
bash scripts/demo.sh
echo
echo "[up] Finestra keeps running; 'make down' stops it."
