# Two commands do everything on a fresh Debian machine with Python 3.11:
#   make demo   set up, start a private broker if none is given, run the main job, print what it verified
#   make test   set up, lint, run the whole test suite (what CI runs)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RABBITMQ_SERVER := /usr/lib/rabbitmq/bin/rabbitmq-server
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup demo test test-fast lint bench clean

AZURITE := .tools/node_modules/.bin/azurite-blob

setup: $(STAMP) $(RABBITMQ_SERVER) $(AZURITE)

$(RABBITMQ_SERVER):
	$(SUDO) apt-get update -q
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q rabbitmq-server

# Azurite, the Azure Blob Storage emulator the Azure sink's tests run against, from npm into .tools/
$(AZURITE):
	npm install --prefix .tools --no-audit --no-fund azurite@3.35.0

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

demo: setup
	$(BIN)/warren demo $(if $(BROKER),--broker $(BROKER))

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup lint
	$(BIN)/pytest -q

test-fast: setup
	$(BIN)/pytest -q -m "not slow"

bench: setup
	$(BIN)/python bench/amqp_throughput.py

clean:
	rm -rf $(VENV) .tools .pytest_cache .ruff_cache .hypothesis warren-archive
