# One venv, made from pyproject.toml; every target below sets it up on its own.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTOS := $(wildcard protos/rotor/v1/*.proto)
GEN_DIR := clients/python
# the protos with their comments, for reflection (grpcurl describe shows them)
DESCRIPTORS := rotor/v1/descriptors.binpb

.PHONY: client-check dist system-packages run test acceptance acceptance-postgres bench bench-peer bench-profile bench-smoke check proto proto-check lint types fmt ci clean

$(STAMP): pyproject.toml clients/python/pyproject.toml hatch_build.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	# the client (and the stubs) editable too, over the copy the server's dependency installed
	$(BIN)/pip install -q --no-deps -e ./clients/python
	touch $@

# Debian packages some tests need (each such test skips outside CI naming its package,
# and fails in CI without it). One `SYSTEM_PACKAGES += NAME` line per package, with why.
SYSTEM_PACKAGES :=
SYSTEM_PACKAGES += curl  # the README's "Getting tokens over HTTP" lines, run as pasted (tests/e2e/test_readme.py)
SYSTEM_PACKAGES += chromium  # the status page test drives a real headless browser (DevTools protocol)
SYSTEM_PACKAGES += softhsm2  # keys on a PKCS#11 token: the HSM tests run against a SoftHSM2 token (tests/softhsm.py)
SYSTEM_PACKAGES += wrk  # make bench drives Rotor's /oauth2/token and oidc-provider's /token with the same load generator

## system-packages: install the Debian packages the tests need (apt-get, as root; CI runs it)
system-packages:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing >/dev/null; \
	else echo "system packages present: $(or $(strip $(SYSTEM_PACKAGES)),none needed)"; fi

## run: the dev server (SQLite under ./data, 127.0.0.1:50051, a demo client)
run: $(STAMP)
	$(BIN)/rotor serve --dev

## test: the project's own tests, over TEST_WORKERS pytest-xdist workers (TEST_WORKERS=0: one process)
# They mostly wait on servers and timers: on 2 cores 4 workers took 5.5 min, one process 12, and 8 workers
# were slower than 4 (CPU-bound). worksteal, not loadfile: test_crash.py alone is 2.5 min of three tests.
TEST_WORKERS ?= 4
test: $(STAMP)
	$(BIN)/pytest -n $(TEST_WORKERS) --dist worksteal tests $(TEST_ARGS)

## client-check: rotor-client alone in a fresh virtualenv (none of the server's dependencies), its tests against a server from .venv
client-check: $(STAMP)
	PYTHON=$(PYTHON) tools/client-check.sh

## dist: wheels and sdists of rotor and rotor-client in dist/, checked by twine (one version: clients/python/rotor_client/_version.py)
dist: $(STAMP)
	rm -rf dist
	$(BIN)/python -m build --outdir dist clients/python
	ROTOR_DIST=1 $(BIN)/python -m build --outdir dist .  # requires rotor-client==VERSION, not a path
	$(BIN)/twine check --strict dist/*

## acceptance: the shared black-box suite for the contract
acceptance: $(STAMP)
	$(BIN)/pytest ../shared/acceptance $(ACCEPTANCE_ARGS)

## acceptance-postgres: the same suite with every server on PostgreSQL (127.0.0.1:5432, database test)
acceptance-postgres: $(STAMP)
	PYTHONPATH=tests $(BIN)/pytest ../shared/acceptance -p acceptance_postgres $(ACCEPTANCE_ARGS)

## bench: performance figures, as ratios to baselines measured in the same run (~10 min; writes docs/benchmarks.md)
bench: $(STAMP) bench-peer
	$(BIN)/python bench/run.py $(BENCH_ARGS)

## bench-profile: server CPU per call by stage, each RPC under load with py-spy attached (rewrites docs/benchmarks.md, keeping the other parts' figures)
bench-profile: $(STAMP)
	$(BIN)/python bench/run.py --parts profile $(BENCH_ARGS)

## bench-smoke: the whole benchmark in seconds, so the harness cannot rot (CI runs it; writes bench/results/smoke*)
bench-smoke: $(STAMP) bench-peer
	$(BIN)/python bench/run.py --smoke $(BENCH_ARGS)

## bench-peer: the benchmark's real peer, node oidc-provider, into bench/peer/node_modules (npm ci, pinned by package-lock.json)
PEER_STAMP := bench/peer/node_modules/.installed
bench-peer: $(PEER_STAMP)
$(PEER_STAMP): bench/peer/package.json bench/peer/package-lock.json
	cd bench/peer && npm ci --no-audit --no-fund --loglevel=error
	touch $@

## proto: regenerate the stubs in clients/python/rotor/v1 (shipped by rotor-client) from protos/
proto: $(STAMP)
	PATH=$(BIN):$$PATH $(BIN)/python -m grpc_tools.protoc -Iprotos \
		--python_out=$(GEN_DIR) --grpc_python_out=$(GEN_DIR) \
		--mypy_out=$(GEN_DIR) --mypy_grpc_out=$(GEN_DIR) \
		--include_source_info --descriptor_set_out=$(GEN_DIR)/$(DESCRIPTORS) $(PROTOS)

## proto-check: fail when the committed stubs differ from what protos/ generates
proto-check: $(STAMP)
	@tmp=$$(mktemp -d) && export PATH=$(BIN):$$PATH && \
	PATH=$(BIN):$$PATH $(BIN)/python -m grpc_tools.protoc -Iprotos \
		--python_out=$$tmp --grpc_python_out=$$tmp \
		--mypy_out=$$tmp --mypy_grpc_out=$$tmp \
		--include_source_info --descriptor_set_out=$$tmp/$(DESCRIPTORS) $(PROTOS) && \
	for f in $$tmp/rotor/v1/*; do \
		cmp -s $$f $(GEN_DIR)/rotor/v1/$$(basename $$f) || { echo "stale: $(GEN_DIR)/rotor/v1/$$(basename $$f) (run make proto)"; rm -rf $$tmp; exit 1; }; \
	done; rm -rf $$tmp; echo "stubs are up to date"

lint: $(STAMP)
	$(BIN)/ruff check service clients tests examples bench
	$(BIN)/ruff format --check service clients tests examples bench

types: $(STAMP)
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff format service clients tests examples bench
	$(BIN)/ruff check --fix service clients tests examples bench

## buf: proto lint, and breaking changes against HEAD~1 (buf pinned in tools/buf; needs npm)
.PHONY: buf
buf:
	tools/buf/check.sh

## check: lint, types, stale stubs and proto lint
check: lint types proto-check buf

clean:
	rm -rf $(VENV) build dist *.egg-info
