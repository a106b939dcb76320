# Two commands on a fresh clone: `make run` and `make test`. Both build .venv from the lock file.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9

.PHONY: run test lint format lock loadtest bench clean

$(BIN)/delineate: requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "uv==$(UV_VERSION)"
	VIRTUAL_ENV=$(VENV) $(BIN)/uv pip sync -q requirements.lock
	VIRTUAL_ENV=$(VENV) $(BIN)/uv pip install -q --no-deps -e .
	touch $(BIN)/delineate

run: $(BIN)/delineate
	$(BIN)/delineate dev

test: $(BIN)/delineate
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

lint: $(BIN)/delineate
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(BIN)/delineate
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

lock:
	uv pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache
