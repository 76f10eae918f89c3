# Two commands do everything on a fresh Debian machine with Python 3.11:
#   make demo   set up, start a private broker if none is given, run the main job, print what it verified
#   make test   set up, lint, run the whole test suite (what CI runs)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RABBITMQ_SERVER := /usr/lib/rabbitmq/bin/rabbitmq-server
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# RabbitMQ 4.0: Debian 13's package (4.0.5 on Erlang 27) in a Debian 13 tree of the project's own,
# which the test harness runs with chroot beside the host's 3.10.
TRIXIE := .tools/trixie
RABBITMQ40_SERVER := $(TRIXIE)/usr/lib/rabbitmq/bin/rabbitmq-server
DEBIAN_MIRROR ?= http://deb.debian.org/debian

.PHONY: setup demo test test-fast lint bench acceptance soak fuzz clean

AZURITE := .tools/node_modules/.bin/azurite-blob
CHROMIUM := /usr/bin/chromium

setup: $(STAMP) $(RABBITMQ_SERVER) $(RABBITMQ40_SERVER) $(AZURITE) $(CHROMIUM)

$(RABBITMQ_SERVER):
	$(SUDO) apt-get update -q
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q rabbitmq-server

# Debian's Chromium: the tests look at `warren serve`'s page in it, headless.
$(CHROMIUM):
	$(SUDO) apt-get update -q
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends chromium

/usr/sbin/debootstrap:
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q debootstrap

# Built under a temporary name and moved into place last, so an interrupted set-up starts over.
# policy-rc.d keeps the package from starting a broker of its own inside the tree.
$(RABBITMQ40_SERVER): | /usr/sbin/debootstrap
	$(SUDO) rm -rf --one-file-system $(TRIXIE).partial
	mkdir -p $(dir $(TRIXIE))
	$(SUDO) debootstrap --variant=minbase trixie $(CURDIR)/$(TRIXIE).partial $(DEBIAN_MIRROR)
	printf '#!/bin/sh\nexit 101\n' | $(SUDO) tee $(TRIXIE).partial/usr/sbin/policy-rc.d >/dev/null
	$(SUDO) chmod +x $(TRIXIE).partial/usr/sbin/policy-rc.d
	$(SUDO) cp /etc/resolv.conf $(TRIXIE).partial/etc/resolv.conf
	$(SUDO) chroot $(TRIXIE).partial apt-get update -q
	DEBIAN_FRONTEND=noninteractive $(SUDO) chroot $(TRIXIE).partial \
		apt-get install -y -q --no-install-recommends rabbitmq-server
	$(SUDO) mv $(TRIXIE).partial $(TRIXIE)

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
	$(BIN)/mypy bridge protocol sinks

# Each RabbitMQ version's broker tests run in a worker of their own, side by side; the rest in a third.
PYTEST_WORKERS ?= 3
test: setup lint
	$(BIN)/pytest -q -n $(PYTEST_WORKERS) --dist loadgroup

test-fast: setup
	$(BIN)/pytest -q -n $(PYTEST_WORKERS) --dist loadgroup -m "not slow"

# The shared end-to-end scenarios (../shared/acceptance), on each RabbitMQ version, pika as the witness.
acceptance: setup
	$(BIN)/python tests/acceptance.py --rabbitmq 3.10
	$(BIN)/python tests/acceptance.py --rabbitmq 4.0

# The zero-loss fault scenarios run long (up to 20 injections each, both RabbitMQ versions), and their
# table; then the decoders' fuzzers, a minute each. Under 30 minutes in all on a 2-core host.
soak: setup
	$(BIN)/python tests/soak.py
	$(MAKE) fuzz FUZZ_SECONDS=60

FUZZ_SECONDS ?= 60
fuzz: setup
	$(BIN)/python tests/fuzz.py frames --seconds $(FUZZ_SECONDS)
	$(BIN)/python tests/fuzz.py segment --seconds $(FUZZ_SECONDS)
	$(BIN)/python tests/fuzz.py records --seconds $(FUZZ_SECONDS)

bench: setup
	$(BIN)/python bench/amqp_throughput.py

# Trees set up before the harness used mount namespaces may still have /proc mounted: unmount it, and never cross into a mount.
clean:
	-mountpoint -q $(TRIXIE)/proc && $(SUDO) umount $(TRIXIE)/proc
	$(SUDO) rm -rf --one-file-system $(VENV) .tools .pytest_cache .ruff_cache .hypothesis warren-archive
