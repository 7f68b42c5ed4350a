# The two commands a fresh machine needs: `make demo` and `make test`. Both set everything up themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SRC := common gpuattr exporter simulator attribution dashboards alerts tests bench

.PHONY: demo test lint typecheck unit docs check-generated deploy-check bench system-deps proto screenshots clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==25.3
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[simulator,kubernetes,otlp,attribution,dev]'
	$(BIN)/python -m exporter.resolve.proto.generate
	touch $(STAMP)

proto: $(STAMP)
	$(BIN)/python -m exporter.resolve.proto.generate

# Real peers from Debian: prometheus (promtool), prometheus-alertmanager (amtool) and victoria-metrics;
# openssl for TLS tests; chromium (headless) to render the HTML reports in a real browser.
system-deps:
	@if ! command -v promtool >/dev/null || ! command -v amtool >/dev/null || ! command -v openssl >/dev/null \
	    || ! command -v chromium >/dev/null || ! command -v victoria-metrics >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
	    prometheus prometheus-alertmanager openssl chromium victoria-metrics >/dev/null; \
	fi

# First an H200 node with an MPS-shared GPU, a launch-bound pod and time-slicing (summary only), then the
# default 4xH100 inference node, served until Ctrl-C with the next steps to run against it.
demo: $(STAMP)
	$(BIN)/gpuattr demo --simulate scenarios/h200-mps-node.yaml --run-for 0 --listen 127.0.0.1:0
	@echo
	$(BIN)/gpuattr demo

lint: $(STAMP)
	$(BIN)/ruff check $(SRC)
	$(BIN)/ruff format --check $(SRC)

typecheck: $(STAMP) proto
	$(BIN)/mypy

check-generated: $(STAMP)
	$(BIN)/gpuattr docs --check
	$(BIN)/gpuattr alerts --check
	$(BIN)/gpuattr dashboards --check

# Render every kustomization and validate it offline against the Kubernetes schemas; lint the Dockerfile.
deploy-check: $(STAMP)
	bash deploy/validate.sh

unit: $(STAMP) system-deps proto deploy-check
	$(BIN)/pytest -q -p no:cacheprovider

test: system-deps $(STAMP) lint typecheck check-generated deploy-check unit

bench: $(STAMP)
	$(BIN)/python bench/bench_exporter.py

# Many concurrent scrapers (wrk, from Debian: apt-get install wrk) on loopback; does the sampler keep its interval?
.PHONY: bench-scrape-load
bench-scrape-load: $(STAMP)
	$(BIN)/python bench/scrape_load.py

# docs/img/attribution.png and docs/img/review.png: both HTML reports made from backfilled histories, in headless Chromium.
screenshots: $(STAMP) system-deps
	$(BIN)/python bench/screenshots.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
