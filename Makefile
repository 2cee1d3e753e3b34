# KernelCube: `make run` starts the gateway, `make test` runs the whole suite. Both install
# what is missing first (system packages when running as root, then the virtualenv).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The sandboxes' own Python (kernel, PicoD, numpy/pandas/matplotlib), apart from the gateway's.
SANDBOX_VENV ?= .sandbox-venv
SYSTEM_PACKAGES := bubblewrap redis-server
HOST ?= 127.0.0.1
PORT ?= 8888
PYTEST_ARGS ?=

.PHONY: install system-deps run test bench lint clean

install: system-deps $(VENV)/.installed $(SANDBOX_VENV)/.installed

# apt packages the sandboxes and the tests need; installed only when missing and we are root.
system-deps:
	@missing=""; \
	command -v bwrap >/dev/null 2>&1 || missing="$$missing bubblewrap"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing system packages:$$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
		else \
			echo "missing system packages:$$missing (install them, e.g. sudo apt-get install$$missing)"; \
		fi; \
	fi

$(VENV)/.installed: setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

$(SANDBOX_VENV)/.installed: sandbox-requirements.txt
	@test -x $(SANDBOX_VENV)/bin/python || $(PYTHON) -m venv $(SANDBOX_VENV)
	$(SANDBOX_VENV)/bin/python -m pip install -q --upgrade pip
	$(SANDBOX_VENV)/bin/python -m pip install -q -r sandbox-requirements.txt
	@touch $@

run: install
	$(VENV)/bin/kernelcube --ip $(HOST) --port $(PORT)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

bench: install
	$(PY) -m bench

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) $(SANDBOX_VENV) build *.egg-info .pytest_cache
