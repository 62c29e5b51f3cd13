# Shoal's developer entry points. Every target installs what it needs first (scripts/setup is idempotent).
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup up down status test lint typecheck unit bench-kvstore bench-scheduler

setup:
	scripts/setup

# A local multi-host cluster (etcd, a manager, HOSTS agent hosts in network namespaces) with the demo stack.
HOSTS ?= 3
up: setup
	$(BIN)/swarmctl cluster up --hosts $(HOSTS) --stack examples/demo-stack.yml

down: setup
	$(BIN)/swarmctl cluster down

status: setup
	$(BIN)/swarmctl cluster status

lint: setup
	$(BIN)/ruff check .

typecheck: setup
	$(BIN)/mypy

# The whole suite: lint, types, then every test (unit, contract on real etcd and ZooKeeper, integration).
test: setup
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest

unit: setup
	$(BIN)/pytest tests/unit

bench-kvstore: setup
	$(BIN)/python -m bench.kvstore

bench-scheduler: setup
	$(BIN)/python -m bench.scheduler
