# The two commands of the README: `make demo` and `make test`.
# Everything they need is installed by the targets below, on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-all bench setup system-deps lint lock clean

demo: setup
	$(BIN)/rowcast demo

test: setup
	$(BIN)/pytest

# every tier, including fault injection, soak and the Debezium comparison
test-all: setup
	$(BIN)/pytest -m ''

# throughput and latency against the baselines, printed as JSON (a few minutes)
bench: setup
	@bash scripts/install-system-deps.sh --bench
	$(BIN)/python -m bench.e2e $(BENCH_ARGS)

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
