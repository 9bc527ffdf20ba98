# One task runner for every check. Only GNU make, bash and Python 3.11+ are assumed.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test lint format typecheck check bench clean schemas

$(STAMP): pyproject.toml scripts/venv.sh
	bash scripts/venv.sh $(VENV)
	touch $(STAMP)

install: $(STAMP)

## The main job: Redis (embedded unless INTENT_REDIS_URL), services, worker, analyses, summary.
demo: install
	$(VENV)/bin/intent demo

## The tests: unit and integration (they start their own Valkey, services and workers).
test: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

typecheck: install
	$(VENV)/bin/mypy

check: lint typecheck test

bench: install
	$(PY) bench/pipeline.py
	$(PY) bench/pools.py
	$(PY) bench/breaker.py
	$(PY) bench/batch.py
	$(PY) bench/events.py
	$(PY) bench/fuzz.py
	$(PY) bench/outage.py
	$(PY) bench/capacity.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info

## The published JSON Schemas (schemas/*.json), written from the models.
schemas: install
	$(PY) -m intent.schemas schemas
