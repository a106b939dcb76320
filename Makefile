# Two commands on a fresh clone: `make run` and `make test`. Both build .venv from the lock file.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9

.PHONY: run test test-fast lint format lock monitoring loadtest bench capacity clean

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
	$(BIN)/pytest -q -n 2 --dist loadfile  # two workers, each test file on one (fixtures stay per file)

# For local iteration: stops at the first failure, skips the slow drills and the browser tests.
test-fast: $(BIN)/delineate
	$(BIN)/pytest -q -x -m "not slow and not browser"

lint: $(BIN)/delineate
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(BIN)/delineate
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

lock: $(BIN)/delineate
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements.lock

# After editing observability/mixin/: the shipped rules and dashboards, then their Kubernetes copies.
monitoring: $(BIN)/delineate
	$(BIN)/python -m observability.mixin
	$(BIN)/delineate proxy render ingress-nginx --profiles deploy/kubernetes/profiles.toml --out deploy/kubernetes
	$(BIN)/delineate proxy render aws-alb --profiles deploy/kubernetes/profiles.toml --out deploy/kubernetes

# A short headless Locust run against URL (default: `make run` on port 3000), judged against
# PROFILE's proxy timeout. `make run` needs a larger budget: RATE_LIMIT_MAX_REQUESTS=1000000 make run
URL ?= http://127.0.0.1:3000
PROFILE ?= nginx
loadtest: $(BIN)/delineate
	mkdir -p loadtest/results
	$(BIN)/locust -f loadtest/locustfile.py --headless -H $(URL) -u 20 -r 10 -t 30s --stop-timeout 60 \
		--proxy-profile $(PROFILE) --csv loadtest/results/locust --html loadtest/results/locust.html \
		--report-dir loadtest/results

# Benchmarks (scripts, not tests: figures and ratios measured side by side in one run).
bench: $(BIN)/delineate
	$(BIN)/python loadtest/bench_api.py
	$(BIN)/python loadtest/bench_sse.py
	$(BIN)/python loadtest/bench_redis_memory.py
	$(BIN)/python loadtest/bench_claim.py

# 1,000 concurrent 60 s+ downloads on this box, judged against the capacity aims (about 3 min).
capacity: $(BIN)/delineate
	$(BIN)/python loadtest/capacity.py --workers 2 --concurrency 512 --users 1000 --out loadtest/results/capacity

clean:
	rm -rf $(VENV) .pytest_cache
