# Two entry points (see README): `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test lint typecheck tools unit bench fuzz clean

$(STAMP): pyproject.toml
	@echo "== setting up $(VENV): a virtual environment with scorer and what its demo, tests and tools need (pip, a few minutes the first time)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/scorer demo

lint: $(STAMP)
	@echo "== ruff (lint and format), mypy --strict"
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy --strict scorer

# Tools the tests use beside Python: promtool (alert rules, dashboard queries; Debian package prometheus),
# docker-compose (`docker-compose config` on deploy/compose.yaml), chromium (the console's browser test drives
# Debian's Chromium with Playwright: Playwright's own browser download is not used), dockerfilelint (npm, into
# .tools/) and kubectl (`kubectl kustomize` renders deploy/k8s; on the machine image, not installed here).
tools: .tools/node_modules/.bin/dockerfilelint
	@command -v kubectl >/dev/null || { echo "the tests need kubectl (kubectl kustomize renders deploy/k8s)"; exit 1; }
	@command -v promtool >/dev/null && command -v docker-compose >/dev/null && command -v chromium >/dev/null || { \
	  echo "== installing promtool, docker-compose and chromium (Debian packages prometheus, docker-compose, chromium) with apt-get$(if $(SUDO), through sudo,): the tests check deploy/'s alert rules, dashboard and compose file with the first two, and use the analysts' console in a real browser with the third"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends prometheus docker-compose chromium >/dev/null; } \
	  || { echo "the tests need promtool, docker-compose and chromium: install the Debian packages prometheus, docker-compose and chromium"; exit 1; }

.tools/node_modules/.bin/dockerfilelint:
	@echo "== installing dockerfilelint (npm, into .tools/ of this checkout only): the tests lint deploy/Dockerfile with it"
	npm install --silent --no-audit --no-fund --prefix .tools dockerfilelint@1.8.0

# Two phases, so progress shows: the fast tests (a dot each), then the integration tests on the embedded broker
# (a line each, by name: each takes seconds). pytest exits 5 when it collects no test: a failure, not a pass.
test: lint typecheck tools
	@echo "== unit and property tests (no broker; about 3 minutes on 2 cores)"
	@$(BIN)/pytest -q -p no:cacheprovider -m "not integration"; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; [ $$rc -eq 0 ] || exit $$rc
	@echo "== integration tests (the embedded tansu broker and PostgreSQL, scorer processes, a browser; about 25 minutes, a line per test)"
	@$(BIN)/pytest -p no:cacheprovider -m integration -v --no-header -o console_output_style=count; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

# The side-by-side benchmark (about 15 minutes at the defaults); results go to benchmarks/results/.
bench: $(STAMP)
	$(BIN)/python -m benchmarks $(ARGS)

# The adversarial corpus at full size (100,000 records, 6 over 1 MiB) through `scorer run`; the suite runs 20,000.
fuzz: $(STAMP)
	$(BIN)/python -m benchmarks.fuzz $(ARGS)

unit: $(STAMP) tools
	$(BIN)/pytest -q -m "not integration"

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
