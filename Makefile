# KernelCube: `make run` starts the gateway, `make test` runs the whole suite. Each installs what
# it needs and is missing first (system packages when running as root, then the virtualenvs):
# `make run` only what running needs; `make test`, `make lint` and `make bench` add the dev tools,
# and `make bench` the baselines it measures against (the stock Kernel Gateway, nbclient).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The sandboxes' own Python (kernel, PicoD, numpy/pandas/matplotlib), apart from the gateway's.
SANDBOX_VENV ?= .sandbox-venv
HOST ?= 127.0.0.1
PORT ?= 8888
PYTEST_ARGS ?=
# helm for the chart tests (tests/charts): a pinned static binary unpacked from a PyPI wheel.
HELM ?= .cache/helm/helm
# `make bench BENCH="picod_vs_go"` runs only the named benchmarks (bench/bench_<name>.py).
BENCH ?=
# The PicoD benchmark measures ours beside AgentCube's Go PicoD, built once into .cache/picod-go
# from an agentcube checkout (AGENTCUBE_SRC; needs Go 1.26) or taken as built
# (AGENTCUBE_PICOD_BINARY); with neither it measures ours alone and says so. PICOD_COMPARE_REF
# (a git ref) adds our PicoD as of that commit, to compare a change with its base in one run.
AGENTCUBE_SRC ?=
AGENTCUBE_PICOD_BINARY ?=
PICOD_COMPARE_REF ?=
export AGENTCUBE_SRC AGENTCUBE_PICOD_BINARY PICOD_COMPARE_REF

.PHONY: install install-run install-dev install-bench system-deps-run system-deps-dev run test test-k8s k8s-control-plane bench bench-k8s lint clean

# Everything: what running needs, plus the tests' and the linters' dependencies.
install: install-dev

install-run: system-deps-run $(VENV)/.installed-run $(SANDBOX_VENV)/.installed

install-dev: install-run system-deps-dev $(VENV)/.installed-dev $(HELM)

install-bench: install-dev $(VENV)/.installed-bench

# apt packages, installed only when missing and we are root: sandboxes need bubblewrap; the
# tests also need redis-server (a real one, for the Redis session store) and Chromium with its
# chromedriver (JupyterLab in a headless browser; Selenium never downloads a driver).
system-deps-run:
	@$(MAKE) --no-print-directory _apt COMMANDS="bwrap:bubblewrap"

system-deps-dev:
	@$(MAKE) --no-print-directory _apt COMMANDS="bwrap:bubblewrap redis-server:redis-server chromium:chromium chromedriver:chromium-driver"

_apt:
	@missing=""; \
	for pair in $(COMMANDS); do \
		command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair##*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing system packages:$$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
		else \
			echo "missing system packages:$$missing (install them, e.g. sudo apt-get install$$missing)"; \
		fi; \
	fi

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.installed-run: setup.cfg pyproject.toml | $(PY)
	$(PY) -m pip install -q -e .
	@touch $@

$(VENV)/.installed-dev: $(VENV)/.installed-run setup.cfg pyproject.toml
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

$(HELM): .ci/get_helm.py .ci/helm-requirements.txt | $(PY)
	$(PY) .ci/get_helm.py $@

$(VENV)/.installed-bench: $(VENV)/.installed-dev setup.cfg pyproject.toml
	$(PY) -m pip install -q -e '.[bench]'
	@touch $@

$(SANDBOX_VENV)/.installed: sandbox-requirements.txt
	@test -x $(SANDBOX_VENV)/bin/python || $(PYTHON) -m venv $(SANDBOX_VENV)
	$(SANDBOX_VENV)/bin/python -m pip install -q --upgrade pip
	$(SANDBOX_VENV)/bin/python -m pip install -q -r sandbox-requirements.txt
	@touch $@

run: install-run
	$(VENV)/bin/kernelcube --ip $(HOST) --port $(PORT)

test: install-dev
	$(PY) -m pytest $(PYTEST_ARGS)

# End to end on a real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager)
# built from Go modules into .cache/k8s: ~13 min on 2 cores the first time, seconds afterwards.
# Needs Go 1.26 or newer (on PATH, or where the Go release tarball installs it).
k8s-control-plane: install-dev
	$(PY) -m tests.e2e.build_control_plane

test-k8s: install-dev k8s-control-plane
	KERNELCUBE_E2E=1 $(PY) -m pytest tests/e2e -o timeout=600 -s $(PYTEST_ARGS)

bench: install-bench
	$(PY) -m bench $(BENCH)

# Sessions on the real control plane at scale (issue 11): the gateway's fast path against
# SandboxClaims, 100 concurrent clients, a pool of 50 refilled; about 5 minutes on 2 cores.
bench-k8s: install-bench k8s-control-plane
	$(PY) -m bench real_cluster

lint: install-dev
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) $(SANDBOX_VENV) build *.egg-info .pytest_cache .cache
