# Finestra: one command runs the platform with its demo, one runs the tests.
SHELL := /bin/bash
.DEFAULT_GOAL := help

.PHONY: help up down infra test lint deploy-check bench chaos bench-ingest bench-auth bench-billing bench-send bench-fair bench-cpu bench-campaign bench-gateway docs-config sqlx-prepare sqlx-check

help:
	@echo "make up            infrastructure + every service in the background, then the demo"
	@echo "make down          stop what 'make up' started"
	@echo "make test          unit and integration tests (starts the infrastructure first)"
	@echo "make lint          rustfmt check + clippy -D warnings"
	@echo "make sqlx-prepare  regenerate .sqlx/ (the checked queries' offline data) after changing a query or a migration"
	@echo "make sqlx-check    fail if .sqlx/ is stale"
	@echo "make docs-config   rewrite docs/configuration.md from the settings the services declare"
	@echo "make deploy-check  render deploy/ overlays and validate them offline against the Kubernetes schemas"
	@echo "make bench         every benchmark, one JSON result, an SVG chart, a one-screen summary"
	@echo "make chaos         kill -9 each service, FLUSHALL Redis, kill -9 the broker, under load; checks nothing lost or doubled"
	@echo "make bench-ingest  webhook and window-update throughput (release build)"
	@echo "make bench-auth    GetWindow calls/s with and without the auth layer"
	@echo "make bench-billing reservations/s and captures/s (release build)"
	@echo "make bench-send    the whole chain: SendMessage to delivered and charged (release build)"
	@echo "make bench-fair    fairness between tenants: a noisy neighbour, ten weights (release build)"
	@echo "make bench-cpu     CPU per delivered message by process, services as processes (release build)"
	@echo "make bench-campaign a 100,000-recipient campaign: quote time, runner rate, memory (release build)"
	@echo "make bench-gateway the Cloud API gateway's overhead against direct SendMessage (release build)"

up:
	@bash scripts/up.sh

down:
	@bash scripts/down.sh

infra:
	@bash scripts/infra.sh

# The tests' own stores, made afresh for each run: never the `finestra` database nor Redis
# database 0 that `make up` serves.
TEST_DATABASE := finestra_test
export FINESTRA_TEST_DATABASE_URL := postgres://postgres@127.0.0.1:5432/$(TEST_DATABASE)
export FINESTRA_TEST_REDIS_URL := redis://127.0.0.1:6379/1

test: infra
	@psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS $(TEST_DATABASE) WITH (FORCE)"
	@createdb -h 127.0.0.1 -U postgres $(TEST_DATABASE)
	@redis-cli -h 127.0.0.1 -p 6379 -n 1 FLUSHDB >/dev/null
	@# The billing and dispatch binaries the crash tests start carry their failpoints (release
	@# images do not).
	@cargo build --quiet -p finestra-billing --features failpoints --bin finestra-billing
	@cargo build --quiet -p finestra-dispatch --features failpoints --bin finestra-dispatch
	@# The Python clients of the gateway's tests (a venv, made once per requirements change).
	@bash scripts/python-env.sh
	@if cargo nextest --version >/dev/null 2>&1; then \
		cargo nextest run --workspace --no-fail-fast; \
	else \
		cargo test --workspace --no-fail-fast; \
	fi
	@# After every test: the books of every tenant of the run still balance.
	@FINESTRA_LOG=warn FINESTRA_DATABASE_URL=$(FINESTRA_TEST_DATABASE_URL) \
		FINESTRA_REDIS_URL=$(FINESTRA_TEST_REDIS_URL) ./target/debug/finestra-billing reconcile

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

sqlx-prepare:
	@bash scripts/sqlx-prepare.sh

sqlx-check:
	@bash scripts/sqlx-prepare.sh --check

docs-config:
	FINESTRA_WRITE_DOCS=1 cargo test --quiet -p finestra-e2e --test configuration

deploy-check:
	@bash scripts/deploy_check.sh

bench:
	@bash scripts/bench.sh

chaos: infra
	@echo "[chaos] building the services and the harness (release)"
	@cargo build --quiet --release -p finestra-e2e --bin chaos -p finestra-window -p finestra-ingest \
		-p finestra-accounts -p finestra-billing -p finestra-simulator -p finestra-dispatch --bins
	@CHAOS_BIN_DIR=target/release ./target/release/chaos

bench-ingest: infra
	cargo build --release -p finestra-e2e --bin bench-ingest
	BENCH_BROKER_ENGINE="$$(ps -o args= -C tansu | grep -o 'storage-engine [^ ]*' | head -n1 || echo unknown)" \
		./target/release/bench-ingest

bench-auth: infra
	cargo build --release -p finestra-e2e --bin bench-auth
	./target/release/bench-auth

bench-billing: infra
	cargo build --release -p finestra-e2e --bin bench-billing
	./target/release/bench-billing

bench-send: infra
	cargo build --release -p finestra-e2e --bin bench-send
	./target/release/bench-send

bench-cpu: infra
	cargo build --release -p finestra-e2e --bin bench-cpu -p finestra-window -p finestra-ingest \
		-p finestra-accounts -p finestra-billing -p finestra-simulator -p finestra-dispatch --bins
	./target/release/bench-cpu

bench-campaign: infra
	cargo build --release -p finestra-e2e --bin bench-campaign -p finestra-window -p finestra-ingest \
		-p finestra-accounts -p finestra-billing -p finestra-simulator -p finestra-dispatch --bins
	./target/release/bench-campaign

bench-gateway: infra
	cargo build --release -p finestra-e2e --bin bench-gateway -p finestra-window -p finestra-ingest \
		-p finestra-accounts -p finestra-billing -p finestra-simulator -p finestra-dispatch \
		-p finestra-gateway --bins
	./target/release/bench-gateway

bench-fair: infra
	cargo build --release -p finestra-e2e --bin bench-fair
	./target/release/bench-fair
