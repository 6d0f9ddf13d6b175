# Two commands: `make serve` and `make test`. Both set up .venv first (quick when done).
# `make lint` runs the static checks CI runs before the tests (ruff + mypy).
# Flags go through ARGS (make serve ARGS="--port 9000"); FLINTLM_* variables work as well.
PY := .venv/bin/python
ARGS ?=

.PHONY: setup serve test test-api lint

setup:
	@bash scripts/setup.sh

serve: setup
	$(PY) -m flintlm serve $(ARGS)

# The suite runs in TEST_WORKERS pytest-xdist workers, a test module to a worker (module-scoped
# servers start once): on 2 cores, one worker's Python (client, imports, server start-up) runs
# while the other's engine computes. TEST_WORKERS=0 runs it in this process (pdb, -s).
# pytest exits 5 when it collected no test: that is a failure here, never a silent pass.
TEST_WORKERS ?= 2

test: setup
	@$(PY) -m pytest -n $(TEST_WORKERS) --dist loadscope $(ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: no tests were collected" >&2; exit 1; fi; \
	exit $$rc

test-api: setup
	@$(PY) -m pytest -n $(TEST_WORKERS) --dist loadscope tests/api $(ARGS)

# ruff and mypy, as CI runs them (scripts/lint.sh).
lint: setup
	@bash scripts/lint.sh
