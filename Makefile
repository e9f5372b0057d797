# Two entry points (see README): `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test lint typecheck tools unit bench fuzz clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/scorer demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy --strict scorer

# Tools the tests use beside Python: promtool (alert rules, dashboard queries; Debian package prometheus),
# docker-compose (`docker-compose config` on deploy/compose.yaml), dockerfilelint (npm, into .tools/) and
# kubectl (`kubectl kustomize` renders deploy/k8s; on the machine image, not installed here).
tools: .tools/node_modules/.bin/dockerfilelint
	@command -v kubectl >/dev/null || { echo "the tests need kubectl (kubectl kustomize renders deploy/k8s)"; exit 1; }
	@command -v promtool >/dev/null && command -v docker-compose >/dev/null || { export DEBIAN_FRONTEND=noninteractive; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends prometheus docker-compose >/dev/null; } \
	  || { echo "the tests need promtool and docker-compose: install the Debian packages prometheus and docker-compose"; exit 1; }

.tools/node_modules/.bin/dockerfilelint:
	npm install --silent --no-audit --no-fund --prefix .tools dockerfilelint@1.8.0

# pytest exits 5 when it collects no test: that is a failure of the suite, not a pass.
test: lint typecheck tools
	$(BIN)/pytest -q -p no:cacheprovider; rc=$$?; \
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
