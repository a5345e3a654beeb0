# The README's two commands are `make demo` and `make test`; everything else supports them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: demo test test-slow lint bench down clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev,train]'
	rm -f $(VENV)/.installed-*
	touch $@

## Set up, start the local stack (S3, Prefect, Ray, API) and run the demo job on sample data.
demo: $(STAMP)
	$(BIN)/mrdiff demo

## Set up, then lint, type-check and run the default (fast) test suite.
test: $(STAMP)
	$(BIN)/ruff check services pipelines tests scripts
	$(BIN)/ruff format --check services pipelines tests scripts
	$(BIN)/mypy
	$(BIN)/pytest -q

## Long tests (training smoke runs, full-size sampling, the viewer in headless Chromium,
## schemathesis); not part of CI's default suite. Needs Debian chromium for the viewer test.
test-slow: $(STAMP)
	@command -v chromium >/dev/null 2>&1 || { echo "make test-slow: chromium is missing (the viewer test needs it); install it with: apt-get install -y chromium" >&2; exit 2; }
	$(BIN)/pytest -q -m slow

down: $(STAMP)
	$(BIN)/mrdiff down

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
