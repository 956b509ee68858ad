# One Makefile for everything; CI runs the same targets (.ci/run calls `make test`).
# Each target builds the virtualenv it needs, so a fresh clone needs nothing but python3 >= 3.11.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   := .demo
BENCH  := .bench

.PHONY: demo test lint bench reliability reliability-fast clean help

help:
	@echo "make demo   sample traffic -> embedded broker -> live worker (live summary) -> decision log;"
	@echo "            then the same file through the offline replay"
	@echo "make test   run the whole test suite (unit, rule-file cases, properties, Kafka, SQL);"
	@echo "            starts a local PostgreSQL with scripts/postgres.sh (root: installs it) unless"
	@echo "            OUTREACH_TEST_POSTGRES_URL is set; Kafka: Docker if reachable, else embedded"
	@echo "make lint   ruff, ruff format --check, mypy --strict"
	@echo "make bench  replay throughput and peak memory on outreach sample --customers 20000 --days 30;"
	@echo "            then the live engine on one embedded broker: raw consume ceiling, worker and"
	@echo "            Faust throughput, p50/p99 event->decision latency at 1,000 events/s, peak RSS"
	@echo "make reliability  the reliability suite (docs/reliability.md): hostile input, SIGKILLs of"
	@echo "            worker and scheduler, broker hang and restart, database and provider outages, load;"
	@echo "            prints what was tried and what held (~15 min; ARGS='--only load' to pick)"
	@echo "make reliability-fast  every scenario at a small scale (CI; ~5 min; same as FAST=1)"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is needed; set PYTHON=/path/to/python3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	@rm -rf $(DEMO) && mkdir -p $(DEMO)
	$(BIN)/outreach sample --customers 2000 --days 30 --seed 7 --out $(DEMO)/events.jsonl
	$(BIN)/outreach worker --publish $(DEMO)/events.jsonl --until-idle --export \
	    --data-dir $(DEMO)/live --database-url sqlite:///$(DEMO)/live/outreach.db
	$(BIN)/outreach replay $(DEMO)/events.jsonl --rules rules --out $(DEMO)/replay
	@echo ""
	@echo "Live run: store $(DEMO)/live/outreach.db (customer state, effects outbox, positions),"
	@echo "          decision log $(DEMO)/live/decisions/, performed effects $(DEMO)/live/effects.jsonl,"
	@echo "          sent messages $(DEMO)/live/messages.jsonl"
	@echo "Backtest of the same file: $(DEMO)/replay/ (the same decisions, by construction)"

test: $(STAMP)
	$(BIN)/outreach rules check rules
	@if [ -z "$${OUTREACH_TEST_POSTGRES_URL:-}" ]; then \
	    OUTREACH_TEST_POSTGRES_URL="$$(bash scripts/postgres.sh)" || exit $$?; \
	    export OUTREACH_TEST_POSTGRES_URL; \
	fi; \
	if [ -z "$${OUTREACH_PROMTOOL:-}" ]; then \
	    OUTREACH_PROMTOOL="$$(bash scripts/promtool.sh)" || true; \
	    export OUTREACH_PROMTOOL; \
	fi; \
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check outreach tests bench reliability
	$(BIN)/ruff format --check outreach tests bench reliability
	$(BIN)/mypy
	bash deploy/audit.sh $(BIN)/pip-audit

bench: $(STAMP)
	$(BIN)/python bench/replay_bench.py --workdir $(BENCH)
	$(BIN)/python bench/live_bench.py --workdir $(BENCH)

# PostgreSQL as for `make test` (the database outage needs it; the faults run on it too)
reliability: $(STAMP)
	@if [ -z "$${OUTREACH_TEST_POSTGRES_URL:-}" ]; then \
	    OUTREACH_TEST_POSTGRES_URL="$$(bash scripts/postgres.sh)" || exit $$?; \
	    export OUTREACH_TEST_POSTGRES_URL; \
	fi; \
	$(BIN)/python -m reliability $(if $(FAST),--fast) $(ARGS)

reliability-fast:
	@$(MAKE) --no-print-directory reliability FAST=1

clean:
	rm -rf $(VENV) $(DEMO) $(BENCH) .reliability .pytest_cache .mypy_cache .ruff_cache *.egg-info
