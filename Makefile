# asd-edge: set-up and everyday commands. Every target installs what it needs.
#   make demo   a synthetic machine, its anomalies, the daemon and its MQTT alerts
#   make test   the whole test suite
#   make run    the daemon on the default input with config/asd-edge.yaml
# Other targets: make help

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= config/asd-edge.yaml
# Installed before the training extra so that pip keeps this CPU build
# instead of fetching a CUDA one. Where pip would find torch only on the public
# index (which serves the CUDA build for Linux), point TORCH_PIP_ARGS at PyTorch's
# CPU wheel index, e.g. make test TORCH_PIP_ARGS="--index-url <cpu index>".
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
APT_PACKAGES := libportaudio2 libasound2-plugins pulseaudio pulseaudio-utils \
                mosquitto mosquitto-clients ffmpeg python3-venv
# make dev (and so make test) also installs a real browser for the dashboard's tests.
DEV_APT_PACKAGES := chromium chromium-driver
PIP := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: help system venv dev run web test lint typecheck bench models demo clean

help:
	@echo "make run        run the daemon on the default input ($(CONFIG))"
	@echo "make test       install everything needed; ruff, mypy and the test suite"
	@echo "make system     install the system packages (apt; as root or with sudo)"
	@echo "make venv       $(VENV) with the daemon's dependencies only"
	@echo "make dev        $(VENV) with the training stack, the dashboard and developer tools"
	@echo "                (and Debian's chromium and chromium-driver for the browser tests)"
	@echo "make web        the web dashboard on 127.0.0.1:8080 with $(CONFIG) (asd-edge web)"
	@echo "make lint       ruff;  make typecheck: mypy --strict on asd_edge"
	@echo "make bench      the benchmarks in benchmarks/ (results/*.jsonl)"
	@echo "make models     rebuild models/level.onnx and models/demo.onnx"
	@echo "make demo       hear a synthetic machine, see its alerts over MQTT (demo-output/)"
	@echo "make install    (root) the daemon as a systemd service: user asd-edge, /opt/asd-edge,"
	@echo "                /etc/asd-edge/config.yaml (kept if present), unit enabled; START=1 starts it"
	@echo "make uninstall  (root) remove it; keeps /var/lib/asd-edge and /etc/asd-edge unless PURGE=1"

system:
	@missing=""; for p in $(APT_PACKAGES) $(SYSTEM_EXTRA); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null; then \
	  echo "not a Debian/Ubuntu system: install the equivalents of:$$missing" >&2; exit 1; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=""; \
	elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo"; \
	else echo "missing system packages; run:  sudo apt-get install -y$$missing" >&2; exit 1; fi; \
	echo "installing system packages:$$missing"; \
	$$SUDO apt-get update -qq && \
	DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
	  echo "asd-edge needs Python 3.11 or newer; $(PYTHON) is $$($(PYTHON) -V 2>&1)." \
	       "Run make with PYTHON=python3.11 (or newer)." >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(VENV)/.daemon-installed: pyproject.toml | $(BIN)/python
	@echo "installing the daemon's dependencies into $(VENV) (numpy, scipy, onnxruntime," \
	  "paho-mqtt, ...: about 400 MB; a minute or more the first time)"
	$(PIP) install -e .
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(PIP) install $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(PIP) install -e ".[train,dev,web]"
	touch $@ $(VENV)/.daemon-installed

venv: system $(VENV)/.daemon-installed
dev: SYSTEM_EXTRA = $(DEV_APT_PACKAGES)
dev: system $(VENV)/.dev-installed

run: venv
	$(BIN)/asd-edge run --config $(CONFIG)

$(VENV)/.web-installed: pyproject.toml | $(BIN)/python
	$(PIP) install -e ".[web]"
	touch $@

web: venv $(VENV)/.web-installed
	$(BIN)/asd-edge web --config $(CONFIG)

test: dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest

lint: dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: dev
	$(BIN)/mypy


bench: dev
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

models: dev
	$(BIN)/python -m training.level --out models/level.onnx
	models/build_demo.sh

# The demo runs on the daemon's own dependencies (the synthetic machine is numpy and
# scipy): no torch, no developer tools.
demo: venv
	$(BIN)/python -m devkit.demo

# The service: scripts/service.sh --help says what they do and which variables
# (DESTDIR, START, PURGE, PYTHON, VENV_ARGS, PIP_ARGS, APT) they take.
.PHONY: install uninstall
SERVICE_ENV = DESTDIR="$(DESTDIR)" START="$(START)" PURGE="$(PURGE)" PYTHON="$(PYTHON)" \
              VENV_ARGS="$(VENV_ARGS)" PIP_ARGS="$(PIP_ARGS)" APT="$(APT)"

install:
	@$(SERVICE_ENV) scripts/service.sh install

uninstall:
	@$(SERVICE_ENV) scripts/service.sh uninstall

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
