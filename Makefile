# controlplane-workers: `make run` starts the local platform, `make test` runs every test.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CPW := $(VENV)/bin/cpw
CHECKOV_VENV ?= .tools/checkov
# What the tests need from Debian: a real broker, Prometheus tools, the sandbox for the
# read-only-root test, wrk as the HTTP load generator of the benchmarks, and haproxy in front of
# the three-node test cluster (tests/support/cluster.py).
APT_PACKAGES := rabbitmq-server prometheus prometheus-alertmanager bubblewrap wrk haproxy postgresql
PYTEST_ARGS ?=

.PHONY: help run run-postgres test install system-deps tools lint fmt chart dashboards bench bench-index clean docs dev drill autoscale-drill pods

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,lint,bench]'
	touch $@

install: $(VENV)/.installed ## create .venv with the project and its test tools

run: $(VENV)/.installed ## the local platform on the embedded broker: API on 127.0.0.1:8000, a worker, the demo provider
	$(CPW) dev

run-postgres: $(VENV)/.installed system-deps ## `make run` with the operations in a private PostgreSQL (a temp dir, removed on exit)
	$(PY) -m tests.support.postgres -- $(CPW) dev

system-deps: ## install the Debian packages the tests need (as root), or print the command
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else \
		echo "missing system packages; run: sudo apt-get update && sudo apt-get install -y $$missing"; exit 1; \
	fi

$(CHECKOV_VENV)/bin/checkov:
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install -q checkov

tools: $(CHECKOV_VENV)/bin/checkov ## checkov in its own venv (its pins clash with ours)

test: $(VENV)/.installed system-deps tools ## run every test (real RabbitMQ, Helm engine, promtool)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed ## ruff and mypy
	$(VENV)/bin/ruff check worker api-adapter tests dashboards docs/generate.py
	$(VENV)/bin/ruff format --check worker api-adapter tests dashboards docs/generate.py
	$(VENV)/bin/mypy worker/controlplane_workers api-adapter/controlplane_api

fmt: $(VENV)/.installed ## format the code
	$(VENV)/bin/ruff format worker api-adapter tests dashboards docs/generate.py
	$(VENV)/bin/ruff check --fix worker api-adapter tests dashboards docs/generate.py

chart: $(VENV)/.installed ## render the umbrella chart through the Helm engine (VALUES=file SET="k=v ...")
	$(PY) tests/chart/render.py $(if $(VALUES),-f $(VALUES)) $(foreach s,$(SET),--set $(s))

pods: $(VENV)/.installed system-deps ## run the chart's pods as rendered, without a cluster (tests/pods; part of make test)
	$(PY) -m pytest tests/pods -p no:cacheprovider $(PYTEST_ARGS)

dashboards: $(VENV)/.installed ## regenerate dashboards/*.json from dashboards/generate.py
	$(PY) dashboards/generate.py

bench: $(VENV)/.installed system-deps ## benchmarks, printing their numbers
	$(PY) -m pytest -m bench -p no:cacheprovider -s tests/bench/test_core_bench.py tests/bench/test_peers.py tests/bench/bench_cancels.py tests/bench/bench_cancel_lookups.py tests/api/bench_replay.py tests/api/bench_index.py tests/api/bench_http.py tests/postgres/bench_pgstore.py $(PYTEST_ARGS) -o addopts=""

bench-index: $(VENV)/.installed system-deps ## the status index at 100k/300k/1M jobs: ready time, RSS, bytes per job
	$(PY) -m pytest -m bench -p no:cacheprovider -s tests/api/bench_index.py $(PYTEST_ARGS) -o addopts=""

drill: $(VENV)/.installed system-deps ## fault drills on real processes and a real RabbitMQ (tests/drills)
	$(PY) -m pytest -m drill tests/drills -o addopts=""

autoscale-drill: $(VENV)/.installed system-deps ## the autoscaling drill (tests/autoscale), printing its numbers
	$(PY) -m pytest tests/autoscale -m drill -o addopts="" -s

docs: $(VENV)/.installed ## regenerate docs/configuration.md, the docs/chart.md tables and every chart README.md
	$(PY) docs/generate.py
	$(PY) tests/chart/docs_gen.py

dev: ## skaffold dev on the current kube context: file sync, single-node RabbitMQ, API on 127.0.0.1:8000
	skaffold dev -p dev --port-forward

clean: ## remove the venvs and build output
	rm -rf $(VENV) .tools build .pytest_cache
