# Two entry points for a fresh machine (Debian/Ubuntu): `make demo` and `make test`.
# Each installs what is missing: Debian packages, a virtual environment, the package and extras.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := build-essential cmake pkg-config libssl-dev libipsec-mb-dev nodejs

.PHONY: demo test setup system-deps ctest pytest bench bench-full asv-smoke clean

demo: setup
	$(BIN)/crypto-engine demo

test: setup ctest pytest asv-smoke
	$(BIN)/python -m bench.compare --quick
	$(BIN)/python -m bench.bench_service --quick
	$(BIN)/python -m bench.bench_vault --quick

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; fi

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

setup: system-deps $(BIN)/python
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -e '.[test,bench]'

# The C known-answer tests, for each backend that is built (libsodium-style, through ctest).
ctest:
	cmake -S . -B build/ctest -DENGINE_BUILD_PYTHON=OFF -DCMAKE_BUILD_TYPE=Release >/dev/null
	cmake --build build/ctest -j2 >/dev/null
	ctest --test-dir build/ctest --output-on-failure

# The whole Python suite, once per backend.
pytest:
	@if $(BIN)/python -c "import sys, engine._native as n; sys.exit(not n.backend_available('ipsec-mb'))"; then \
	  ENGINE_BACKEND=ipsec-mb $(BIN)/python -m pytest; \
	else echo "*** ipsec-mb backend not available on this machine: testing OpenSSL only ***"; fi
	ENGINE_BACKEND=openssl $(BIN)/python -m pytest

# asv: check the benchmarks import and run once each against the installed package.
asv-smoke:
	$(BIN)/asv machine --yes >/dev/null
	$(BIN)/asv run --python=same --quick --dry-run --show-stderr

bench:
	$(BIN)/python -m bench.compare --chart bench/compare.png --json bench/compare.json

clean:
	rm -rf build .asv
