# Two commands set everything up on a fresh Debian machine with Python 3.11:
#   make run   - install what is missing, start the whole stack on the embedded default model
#   make test  - install what is missing, check style (make lint), run the test suite
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= configs/serve_config.yaml
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := prometheus prometheus-alertmanager chromium
# Ray's CLI and dashboard need the cluster token; Ray writes it to ~/.ray/auth_token on first start.
export RAY_AUTH_MODE := token

.PHONY: run test lint unit integration bench bench-hops profile stack stack-down loadtest soak loadtest-sim backtest backtest-suite traces install system-deps clean-cache config-doc cluster-demo kuberay-manifest

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Debian packages for the monitoring stack and the browser tests; skipped when already present.
system-deps:
	@missing=""; \
	command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	command -v prometheus-alertmanager >/dev/null || command -v alertmanager >/dev/null || missing="$$missing prometheus-alertmanager"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# exec: no shell between make and recserve up. make passes SIGTERM on to it; SIGINT and SIGHUP
# sent to make's PID alone it keeps, and recserve up notices them (docs/RELIABILITY.md).
run: install system-deps
	exec $(BIN)/recserve up --config $(CONFIG)

# The overload and stop-signal tests each get a Serve of their own: the first needs a replica that
# only its traffic loads, the second starts a whole second stack and wants the cores to itself.
# The cluster test starts a two-node Ray cluster of its own, which must not share the cores with
# the session's Serve.
# The fault tests start a Serve of their own and size their load by the capacity they measure:
# nothing else may load the cores meanwhile.
# The overload test's Serve starts only the model it drives (RECSERVE_TEST_MODELS,
# tests/integration/ports.py): one Recognizer instead of the test config's seven.
OVERLOAD_TEST := tests/integration/test_overload_live.py
ISOLATED := tests/integration/test_stop_signals_live.py tests/integration/test_cluster_live.py \
	tests/integration/test_faults_live.py
# The unit tests on both cores (pytest-xdist); the live tests one at a time, on the session's Serve.
test: install system-deps lint
	$(BIN)/python -m pytest -q -n 2 tests/unit
	$(BIN)/python -m pytest -q --durations=12 tests/integration $(addprefix --ignore=,$(OVERLOAD_TEST) $(ISOLATED))
	RECSERVE_TEST_MODELS=lite0_overload $(BIN)/python -m pytest -q $(OVERLOAD_TEST)
	for t in $(ISOLATED); do $(BIN)/python -m pytest -q $$t || exit 1; done

# ruff as configured in pyproject.toml: lint rules, then formatting (checked, nothing rewritten).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

unit: install
	$(BIN)/python -m pytest -q -n 2 tests/unit

integration: install system-deps
	$(BIN)/python -m pytest -q tests/integration

# e.g. make bench BENCH_OUT=docs/bench/run-X BENCH_ARGS="--proxies haproxy --seconds 12"
BENCH_OUT ?= docs/bench
BENCH_ARGS ?=
bench: install
	$(BIN)/python -m serve_app.devtools.bench --out $(BENCH_OUT) $(BENCH_ARGS)
	$(BIN)/recserve quantize --model efficientnet_lite0 --out $(BENCH_OUT)

# The hop between deployments under each transport and Serve knob (docs/PERFORMANCE.md)
HOPS_OUT ?= docs/bench/hops
bench-hops: install
	$(BIN)/python -m serve_app.devtools.hop_bench --out $(HOPS_OUT)

# The backtest's CPU latency curve (lab/profiles/cpu.csv), remeasured in-process; the run that made it
# stays in docs/bench/profile-run/ (results.json keeps the curve it replaced).
profile: install
	$(BIN)/python -m serve_app.devtools.bench --skip-served --update-profile --out docs/bench/profile-run $(PROFILE_ARGS)

stack: install system-deps
	$(BIN)/recserve stack up

stack-down: install
	$(BIN)/recserve stack down

SCENARIO ?= steady
DURATION ?= 120
loadtest: install system-deps
	$(BIN)/recserve loadtest $(SCENARIO) --duration $(DURATION) --out out/loadtest-$(SCENARIO)

# Against a running service (make run): half of CAPACITY_RPS (what its replicas sustain together,
# `recserve capacity`) for SOAK_DURATION; fails on < 99.9 % success or a replica's RSS +10 %.
SOAK_DURATION ?= 30m
soak: install
	@test -n "$(CAPACITY_RPS)" || { echo "make soak CAPACITY_RPS=<rps> (recserve capacity)"; exit 2; }
	$(BIN)/recserve soak --duration $(SOAK_DURATION) --capacity-rps $(CAPACITY_RPS) --out out/soak

# The recorded run replayed in the autoscaling simulator: real against simulated replicas.
loadtest-sim: install
	$(BIN)/recserve loadtest-sim out/loadtest-$(SCENARIO)

backtest: install
	$(BIN)/recserve backtest --trace lab/traces/diurnal_2w.csv --out out/backtest
	cp out/backtest/backtest.png docs/img/backtest.png

# The robustness matrix documented in docs/AUTOSCALING.md (about 10 minutes on 2 cores).
# The real demand trace is read from pmdarima's files, never imported: --no-deps keeps its
# compiled dependencies out.
backtest-suite: install
	$(BIN)/pip install --quiet --no-deps pmdarima==2.1.1
	$(BIN)/recserve backtest-suite --out docs/autoscaling-matrix --workers 2

traces: install
	$(BIN)/recserve gen-traces

# A head and a worker on this machine, the cluster config deployed, a node and a replica killed
# under load; a short report (docs/DEPLOYMENT.md). CLUSTER_PORT_BASE: 1000 ports from there.
CLUSTER_PORT_BASE ?= 35000
cluster-demo: install
	$(BIN)/python -m serve_app.devtools.cluster_demo --base-port $(CLUSTER_PORT_BASE) --out docs/cluster/cluster_demo.json

# deploy/ (RayService, volume, monitoring ConfigMaps) rendered from configs/serve_config.cluster.yaml.
kuberay-manifest: install
	$(BIN)/python -m serve_app.devtools.kuberay

config-doc: install
	$(BIN)/recserve config-doc > docs/CONFIG.md

clean-cache:
	rm -rf $(HOME)/.cache/recognition-serve
