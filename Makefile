PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv run test test-fast lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

## Fresh clone -> venv, migrate, demo data on SQLite, server on http://127.0.0.1:8000
run: $(STAMP)
	$(VENV)/bin/voucher db upgrade
	$(VENV)/bin/voucher demo
	$(VENV)/bin/voucher serve --host 127.0.0.1 --port 8000

## Whole suite. Set VOUCHER_TEST_DATABASE_URL to run it on PostgreSQL too.
test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) -m bench.ingest

clean:
	rm -rf $(VENV) var/*.db .pytest_cache
