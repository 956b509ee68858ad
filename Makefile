# One Makefile for everything; CI runs the same targets (.ci/run calls `make test`).
# Each target builds the virtualenv it needs, so a fresh clone needs nothing but python3 >= 3.11.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   := .demo
BENCH  := .bench

.PHONY: demo test lint bench clean help

help:
	@echo "make demo   generate sample traffic, replay it through the default playbook, print the summary"
	@echo "make test   run the whole test suite (unit, rule-file cases, properties)"
	@echo "make lint   ruff, ruff format --check, mypy --strict"
	@echo "make bench  replay throughput and peak memory on outreach sample --customers 20000 --days 30"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is needed; set PYTHON=/path/to/python3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	@mkdir -p $(DEMO)
	$(BIN)/outreach sample --customers 2000 --days 30 --seed 7 --out $(DEMO)/events.jsonl
	$(BIN)/outreach replay $(DEMO)/events.jsonl --rules rules --out $(DEMO)/decisions
	@echo ""
	@echo "Decision log: $(DEMO)/decisions/ (signals, actions, messages, dlq, errors .jsonl + summary.json)"

test: $(STAMP)
	$(BIN)/outreach rules check rules
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check outreach tests bench
	$(BIN)/ruff format --check outreach tests bench
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/replay_bench.py --workdir $(BENCH)

clean:
	rm -rf $(VENV) $(DEMO) $(BENCH) .pytest_cache .mypy_cache .ruff_cache *.egg-info
