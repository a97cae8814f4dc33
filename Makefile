# streamscore: `make demo` runs the pipeline on a local stack, `make test` runs the whole test suite.
# Both install what they need first (Debian packages, a virtualenv, Kafka jars from Maven Central).

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=
# make loadtest: Locust users, total score requests per second, how long, where the CSV/HTML reports go.
USERS ?= 20
RATE ?= 200
DURATION ?= 60s
OUT ?= loadtest/results
CLASSES ?= ScoreRequestUser

.PHONY: help install system-deps venv jars up down status test lint fmt demo bench soak loadtest clean

help:
	@echo "make install  - Debian packages, .venv with streamscore[dev,spark], Kafka jars"
	@echo "make up/down  - start/stop the local Kafka + Redis + Prometheus (data kept; 'make down WIPE=1' deletes it)"
	@echo "make test     - install, then the whole test suite against a real broker and Redis"
	@echo "make demo     - install, start the stack, then the whole loop: history -> train -> serve -> drift -> retrain"
	@echo "make loadtest - Locust through Kafka against running workers (USERS, RATE, DURATION)"
	@echo "make lint     - ruff + mypy"
	@echo "make bench    - benchmarks (results to paste into BENCHMARKS.md)"
	@echo "make soak     - the chaos soak: faults and bad input under load, then one verdict (DURATION=10m)"

install: system-deps venv jars

# Only what is missing; apt-get update runs once, and only if something must be installed. Debian starts its
# own Prometheus service on :9090 where systemd runs: stopped, `stack up` runs ours with the generated config.
system-deps:
	@missing=""; \
	command -v java >/dev/null || missing="$$missing default-jre-headless"; \
	command -v mvn >/dev/null || missing="$$missing maven"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	$(PYTHON) -c 'import ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	  case "$$missing" in *prometheus*) \
	    if [ -d /run/systemd/system ]; then $(SUDO) systemctl disable --now prometheus || true; fi;; \
	  esac; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python 3.11+ required"; exit 1; }
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,spark]'
	touch $@

jars: venv
	$(BIN)/streamscore stack fetch

up: install
	$(BIN)/streamscore stack up
	$(BIN)/streamscore topics create

down:
	@[ -x $(BIN)/streamscore ] && $(BIN)/streamscore stack down $(if $(WIPE),--wipe,) || true

status: venv
	$(BIN)/streamscore stack status

# The suite starts its own stack on separate ports and data (tests/conftest.py) and stops it at the end.
test: install
	$(BIN)/pytest $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check services tests loadtest feature_repo
	$(BIN)/ruff format --check services tests loadtest feature_repo
	$(BIN)/mypy

fmt: venv
	$(BIN)/ruff format services tests loadtest
	$(BIN)/ruff check --fix services tests loadtest

demo: up
	$(BIN)/streamscore demo
	@echo "The stack is still running: 'make status' to look, 'make down' to stop it."

# Against running workers (`make up`, then `streamscore inference run`); each user waits for its prediction,
# so USERS should be about RATE/10. CLASSES="ScoreRequestUser TransactionUser" adds raw transactions.
loadtest: venv
	$(BIN)/locust -f loadtest/locustfile.py --headless -u $(USERS) -r $(USERS) -t $(DURATION) --rate $(RATE) \
	  --csv $(OUT)/locust --html $(OUT)/locust.html --only-summary $(CLASSES)
	@echo "reports: $(OUT)/locust_stats.csv, $(OUT)/locust.html"

bench: install
	$(BIN)/python -m tests.benchmarks

# The chaos soak on its own stack (RELIABILITY.md) for DURATION (60s unless given; `make test` runs 60s too).
soak: install
	STREAMSCORE_SOAK_DURATION=$(DURATION) $(BIN)/pytest -s tests/soak

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis *.egg-info
