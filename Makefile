PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv lock run test test-fast lint check-deploy bench bench-ingest bench-quota bench-reconcile bench-redemptions bench-simulate clean

# Installs come from the lock (exact versions, hashes checked); pyproject.toml keeps the ranges.
LOCK     := requirements/dev.txt
LOCK_RT  := requirements/runtime.txt
LOCK_CMD := $(VENV)/bin/uv pip compile --quiet --generate-hashes --universal --python-version 3.11

$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --require-hashes -r $(LOCK)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

## Re-resolve requirements/*.txt from pyproject.toml's ranges (newest versions that fit), then
## reinstall. The runtime lock is resolved first and constrains the dev lock, so both agree.
lock: $(STAMP)
	$(LOCK_CMD) --upgrade pyproject.toml requirements/build.in -o $(LOCK_RT)
	$(LOCK_CMD) --upgrade pyproject.toml requirements/build.in --extra dev -c $(LOCK_RT) -o $(LOCK)
	$(MAKE) venv

## Fresh clone -> venv, migrate, demo data on SQLite, server on http://127.0.0.1:8000
run: $(STAMP)
	$(VENV)/bin/voucher db upgrade
	$(VENV)/bin/voucher demo
	$(VENV)/bin/voucher serve --host 127.0.0.1 --port 8000

## Whole suite. Set VOUCHER_TEST_DATABASE_URL to run it on PostgreSQL too.
test: $(STAMP)
	@# Real components the integration tests drive (Slurm, Prometheus, Chromium, LibreOffice):
	@# Debian packages installed when missing, quick when present.
	@for s in scripts/ensure-*.sh; do bash $$s || exit 1; done
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q $(PYTEST_ARGS)

## ruff, and the import contracts of pyproject.toml [tool.importlinter] (layers, no web below the edges)
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

## Deployment files without a Docker engine: compose schema, promtool checks and rule tests,
## Grafana and alert queries against the metrics the app exports.
check-deploy: $(STAMP)
	bash scripts/ensure-prometheus.sh
	$(PY) -m pytest -q tests/test_deploy_files.py

## Benchmarks on a fresh PostgreSQL database (VOUCHER_BENCH_DATABASE_URL, admin URL) and SQLite:
## results in bench/results/*.json and docs/BENCHMARKS.md. `python -m bench --list` names them.
bench: $(STAMP)
	$(PY) -m bench $(BENCH_ARGS)

bench-ingest: $(STAMP)
	$(PY) -m bench ingest $(BENCH_ARGS)

bench-quota: $(STAMP)
	$(PY) -m bench quota $(BENCH_ARGS)

bench-reconcile: $(STAMP)
	$(PY) -m bench reconcile $(BENCH_ARGS)

bench-redemptions: $(STAMP)
	$(PY) -m bench redemptions $(BENCH_ARGS)

bench-simulate: $(STAMP)
	$(PY) -m bench simulate $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var/*.db .pytest_cache
