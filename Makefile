# Turnout: the two commands for a fresh machine are `make run` and `make test`; both set everything up
# first (scripts/setup.sh, a quick no-op once done).
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
# Steps of one target run in the order written, even under `make -j`.
.NOTPARALLEL:

VENV := .venv
PY := $(VENV)/bin/python
# Extra arguments: `make run ARGS="--config my-fleet.yaml"`, `make test PYTEST_ARGS="-k store"`.
ARGS ?=
PYTEST_ARGS ?=

.PHONY: help setup run test lint proto check-proto bench clean distclean

help:
	@echo "make run     set up, then start turnout serve on the embedded default fleet (ARGS=...)"
	@echo "make test    set up, then check generated code, ruff, mypy and the whole pytest suite"
	@echo "make setup   create .venv, install -e .[dev], promtool/prometheus and PostgreSQL as needed"
	@echo "make lint    ruff check and mypy"
	@echo "make proto   regenerate turnout/v1 from proto/turnout/v1"
	@echo "make bench   run every bench/*.py (not the *_server.py they start)"
	@echo "make clean   remove caches and build output (distclean also removes .venv)"

setup:
	@scripts/setup.sh

run: setup
	exec $(VENV)/bin/turnout serve $(ARGS)

check-proto: setup
	scripts/check-proto.sh

lint: setup
	$(VENV)/bin/ruff check --output-format=concise .
	$(VENV)/bin/mypy

# Every check runs even when an earlier one fails, so one run reports everything; pytest runs last, so
# its summary line closes the output. Exit status: non-zero when any step failed; pytest's exit 5
# (nothing collected) counts as a failure.
test: setup
	@failed=""; \
	scripts/check-proto.sh || failed="$$failed check-proto"; \
	echo "ruff check ."; $(VENV)/bin/ruff check --output-format=concise . || failed="$$failed ruff"; \
	echo "mypy"; $(VENV)/bin/mypy || failed="$$failed mypy"; \
	if [ -n "$$failed" ]; then echo "make test: FAILED:$$failed (running pytest anyway)"; fi; \
	echo "pytest"; rc=0; $(VENV)/bin/pytest -q -rfEs $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: ERROR: pytest collected no tests"; fi; \
	if [ $$rc -ne 0 ]; then exit $$rc; fi; \
	if [ -n "$$failed" ]; then echo "make test: FAILED:$$failed"; exit 1; fi

proto: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" PYTHON=$(PY) scripts/gen-proto.sh

bench: setup
	@found=0; for f in bench/*.py; do \
	  [ -e "$$f" ] || continue; case "$$f" in *_server.py) continue;; esac; found=1; \
	  echo "== $$f"; $(PY) "$$f"; \
	done; \
	if [ $$found -eq 0 ]; then echo "make bench: no bench/*.py yet"; fi

clean:
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist out .tmp *.egg-info

distclean: clean
	rm -rf $(VENV)
