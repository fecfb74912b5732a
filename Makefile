# Two commands on a fresh clone: `make demo` and `make test`. Both install into .venv first (idempotent) and
# nothing system-wide; `make browser` (Chromium, for the report-rendering tests) is separate.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo bench lint clean browser

install: $(STAMP)

# Reinstall only when the declared dependencies or their pins change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
	touch $(STAMP)

# Chromium for the tests that render report.html in a headless browser (Debian's package, installed system-wide:
# run it as root, as CI does). `make test` never installs it; without it those tests are skipped, saying so.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } ; } || \
		echo "warning: chromium is not installed (that needs root and apt-get); the report-rendering tests will be skipped"

lint: install
	$(BIN)/ruff check .

# One BLAS/OpenMP thread per process: the suite runs many tiny models and 2-process DDP tests on 2 cores, where
# thread oversubscription costs far more than the parallelism gains.
test: install lint
	WANDB_MODE=disabled OMP_NUM_THREADS=1 $(BIN)/python -m pytest

# `make demo DEMO_ARGS="--overwrite true"` replaces an earlier run; any `lit_attr demo` option goes there.
DEMO_ARGS ?=
demo: install
	WANDB_MODE=offline $(BIN)/lit_attr demo $(DEMO_ARGS)

bench: install
	set -e; for script in benchmarks/*.py; do echo "== $$script"; $(BIN)/python $$script; done

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
