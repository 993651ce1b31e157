# pbxbrain: `make run` brings up the Asterisk sandbox and the daemon; `make test` proves it.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
CONFIG ?= config.example.yaml
STATE ?= $(CURDIR)/var
# Debian packages the project needs on the host (the sandbox brings Asterisk and SIPp).
DEB_PACKAGES := debootstrap postgresql curl python3-venv

export PBXBRAIN_ARI_PASSWORD ?= pbxbrain-ari-secret
export PBXBRAIN_AMI_SECRET ?= pbxbrain-ami-secret

.PHONY: help deps venv sandbox sandbox-stop lint unit test run bench clean

help:
	@echo "make run    - install what is needed, start the Asterisk sandbox and pbxbrain"
	@echo "make test   - lint (ruff, mypy strict) and every test, on the real Asterisk"
	@echo "make lint | make unit | make sandbox | make sandbox-stop | make bench"

deps:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

sandbox: deps
	bash scripts/sandbox.sh start

sandbox-stop:
	bash scripts/sandbox.sh stop

lint: venv
	$(VENV)/bin/ruff check src tests migrations bench
	$(VENV)/bin/mypy

unit: venv
	$(VENV)/bin/pytest -q tests/unit

test: deps venv lint
	$(VENV)/bin/pytest -q
	bash scripts/sandbox.sh stop

run: deps venv sandbox
	mkdir -p $(STATE)/recordings
	@echo "pbxbrain: health at http://127.0.0.1:8090/v1/health; call the sandbox with"
	@echo "  bash scripts/sandbox.sh run sipp -sn uas -i 127.0.0.1 -p 5161 -m 1 &   # phone 101 answers"
	@echo "  bash scripts/sandbox.sh run sipp 127.0.0.1:5060 -sn uac -i 127.0.0.2 -s 74951234567 -m 1"
	PBXBRAIN_DATABASE=sqlite+aiosqlite:///$(STATE)/pbxbrain.db \
	PBXBRAIN_RECORDINGS_DIR=$(STATE)/recordings \
	PBXBRAIN_ASTERISK_SPOOL=$$(bash scripts/sandbox.sh root)/var/spool/asterisk/recording \
	  $(VENV)/bin/pbxbrain run --config $(CONFIG)

bench: deps venv
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(STATE) .mypy_cache .ruff_cache .pytest_cache
