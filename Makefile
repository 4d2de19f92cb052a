# Two commands on a fresh machine with Python 3.11+: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

# The locks serve every platform and Python 3.11 or newer; --upgrade (make lock LOCK_ARGS=--upgrade)
# moves every package to its newest version, else the versions already locked are kept.
LOCK := $(BIN)/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes --custom-compile-command "make lock" $(LOCK_ARGS)

.PHONY: run test lint migrate lock image bench clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed: make PYTHON=python3.11 ...")'
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime: requirements.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $@

$(VENV)/.dev: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $@ $(VENV)/.runtime

## migrate: bring the database (DATABASE_URL, default ./auth.db) to the latest schema
migrate: $(VENV)/.runtime
	$(BIN)/python -m auth_service migrate

## run: install, migrate, and serve on http://$(HOST):$(PORT) (Swagger at /docs)
run: migrate
	$(BIN)/uvicorn --factory auth_service.main:create_app --host $(HOST) --port $(PORT) --no-proxy-headers --no-access-log --http h11

## test: the suite on SQLite, and on PostgreSQL too when TEST_DATABASE_URL is set
test: $(VENV)/.dev
	$(BIN)/python -m pytest -n auto --dist loadgroup $(PYTEST_ARGS)

## lint: ruff (lint and format) and mypy
lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## lock: compile requirements.in and requirements-dev.in into the hashed requirements*.txt
lock: $(VENV)/.dev
	$(LOCK) requirements.in -o requirements.txt
	$(LOCK) requirements-dev.in -o requirements-dev.txt

## image: build the container image (DOCKER=podman adds --format docker, which keeps the HEALTHCHECK)
DOCKER ?= docker
image:
	$(DOCKER) build $(if $(findstring podman,$(DOCKER)),--format docker) -t auth_service .

## bench: the service beside two bare FastAPI references, on PostgreSQL (BENCH_DATABASE_URL), with wrk (README: Performance)
bench: $(VENV)/.dev
	$(BIN)/python -m tests.bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
