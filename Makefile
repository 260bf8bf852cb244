# The commands the README shows. `make run` installs and starts Tuneyard; `make test` installs
# (with Debian's chromium for the console's browser tests) and runs every test on SQLite and
# again on PostgreSQL.

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
PG_TEST_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/test
# The slowest tests, listed after each run: where CI's time goes.
DURATIONS ?= --durations=15

.PHONY: run install install-dev browser serve demo test test-sqlite test-postgres test-fast lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[train,embed,llama,images,demo]'

install-dev: $(BIN)/python browser
	$(BIN)/pip install --quiet -e '.[train,embed,llama,images,demo,cluster,dev]'

## Debian's chromium, which the console's browser tests drive.
browser:
	bash scripts/ensure-chromium.sh

## The data dir, its database and first admin, and the demo base model (imported here).
demo:
	$(BIN)/tuneyard init --demo

serve:
	$(BIN)/tuneyard serve

## Install, register the demo model, and serve the console and API on 127.0.0.1:8000.
# One person on their own machine is the project's admin and the server's operator, so code
# uploads (custom training methods, GRPO reward files) are on; a team's server decides itself.
run: install demo
	@echo "make run: code uploads are on (TUNEYARD_ALLOW_CODE_UPLOADS=true); you are this server's operator."
	TUNEYARD_ALLOW_CODE_UPLOADS=true $(BIN)/tuneyard serve

## Install, then run the whole suite on SQLite and on PostgreSQL.
# The two passes run side by side (each its own databases and temporary folders): much of a
# test's time is spent waiting on job processes, servers and the browser, so together they take
# about the time of the longer one. Each pass's output is printed whole when it ends.
test: install-dev lint
	$(MAKE) --no-print-directory --output-sync=target -j2 test-sqlite test-postgres

# A team's processes started together (`team`) run on PostgreSQL's pass, as teams run them.
test-sqlite:
	$(BIN)/python -m pytest -q $(DURATIONS) -m "not team"

# Every test whose outcome can depend on the database runs again on PostgreSQL. Tests marked
# `nodb` (export, merge, inference numerics; the database is out of their reach) or
# `backend_free` (numerics of training, merges and generation, a cluster's placement: they go
# through the API, but what they check does not depend on the database) ran on SQLite's pass.
# The console's pages call the same services the API tests run here; of the browser tests, the
# new user's journey runs here too (the rest run on SQLite), which keeps CI short.
test-postgres:
	bash scripts/ensure-postgres.sh
	TUNEYARD_TEST_DATABASE_URL=$(PG_TEST_URL) $(BIN)/python -m pytest -q $(DURATIONS) \
		-m "not nodb and not backend_free and (not console or journey)"

## The quick loop while developing: SQLite, none of the tests marked slow (real models, training).
test-fast:
	$(BIN)/python -m pytest -q -m "not slow"

lint:
	$(BIN)/ruff check tuneyard tests benchmarks
	$(BIN)/ruff format --check tuneyard tests benchmarks
	$(BIN)/mypy
	TUNEYARD_DATA_DIR=$$(mktemp -d) $(BIN)/tuneyard db check

clean:
	rm -rf $(VENV) tuneyard-data
