# Two entry points for a fresh machine (Debian/Ubuntu): `make demo` and `make test`.
# Each installs what is missing: Debian packages, a virtual environment, the package and extras.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := build-essential cmake pkg-config libssl-dev libipsec-mb-dev nodejs postgresql \
	prometheus prometheus-pushgateway

.PHONY: demo test test-asan test-vault-ha setup system-deps ctest ctest-ipsecmb2 pytest lint bench \
	bench-check bench-gate bench-gate-short bench-history asv-run clean wheel wheel-check

demo: setup
	$(BIN)/crypto-engine demo

test: setup lint ctest pytest

# The benchmarks' own checks, run by .ci/run after make test: asv builds and runs every benchmark
# once, the short regression gate must pass (and must fail on the slower backend), and each
# comparison benchmark runs its quick form.
bench-check: setup asv-run bench-gate-short
	$(BIN)/python -m bench.compare --quick
	$(BIN)/python -m bench.bench_service --quick
	$(BIN)/python -m bench.bench_vault --quick
	$(BIN)/python -m bench.bench_files --quick
	$(BIN)/python -m bench.bench_index --quick
	$(BIN)/python -m bench.bench_reencrypt --quick
	$(BIN)/python -m bench.bench_datasets --quick
	$(BIN)/python -m bench.bench_pme --quick
	$(BIN)/python -m bench.bench_tables --rows 20000 --rounds 1
	$(BIN)/python -m bench.bench_column_types --quick

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

# The C core against Debian 13's ipsec-mb 2.0 too (its API dropped IMB_ARCH_AVX): apt fetches
# the package from trixie, from the Debian mirror the system's own apt sources name, into build/
# (signature and hash checked by apt, nothing installed), and the KATs run against its static
# library. Debian 12 ships 1.3, which `ctest` above uses. It needs the network, so `make test`
# leaves it out; .ci/run runs it, and when the download itself fails it says so and stops there.
IMB2 := build/ipsecmb2
IMB2_APT := -o Dir::Etc::SourceList=$(CURDIR)/$(IMB2)/sources.list -o Dir::Etc::SourceParts=/nonexistent \
	-o Dir::State::Lists=$(CURDIR)/$(IMB2)/lists -o Dir::Cache=$(CURDIR)/$(IMB2)/cache \
	-o APT::Architectures::=amd64 -o Acquire::Languages=none -o APT::Sandbox::User=root
ctest-ipsecmb2:
	@if [ "$$(dpkg --print-architecture)" != amd64 ]; then echo "ipsec-mb is x86-64 only"; exit 0; fi; \
	set -e; rm -rf $(IMB2); mkdir -p $(IMB2)/lists/partial $(IMB2)/cache/archives/partial $(IMB2)/deb; \
	mirror=$$(apt-get indextargets --format '$$(URI)' 'Created-By: Packages' | sed -n 's#^\(.*/debian\)/dists/.*#\1#p' | head -1); \
	if [ -z "$$mirror" ]; then echo "*** ctest-ipsecmb2 skipped: the system's apt sources name no Debian mirror ***"; exit 0; fi; \
	echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $$mirror trixie main" > $(IMB2)/sources.list; \
	if ! timeout 120 apt-get $(IMB2_APT) -qq update || \
	   ! (cd $(IMB2)/deb && timeout 120 apt-get $(IMB2_APT) -qq download libipsec-mb-dev); then \
	  echo "*** ctest-ipsecmb2 skipped: Debian 13's ipsec-mb 2.0 could not be fetched from $$mirror ***"; exit 0; fi; \
	dpkg -x $(IMB2)/deb/libipsec-mb-dev_*.deb $(IMB2)/root; \
	cmake -S . -B $(IMB2)/build -DENGINE_BUILD_PYTHON=OFF -DCMAKE_BUILD_TYPE=Release \
	  -DIPSECMB_INCLUDE_DIR=$(CURDIR)/$(IMB2)/root/usr/include \
	  -DIPSECMB_LIBRARY=$(CURDIR)/$(IMB2)/root/usr/lib/x86_64-linux-gnu/libIPSec_MB.a >/dev/null; \
	cmake --build $(IMB2)/build -j2 >/dev/null; \
	$(IMB2)/build/test_gcm_single_use; \
	out=$$($(IMB2)/build/test_kat ipsec-mb); echo "$$out"; echo "$$out" | grep -q "^ipsec-mb (2\\..*all KATs pass"

# Lint (pyproject.toml [tool.ruff]): pyflakes, pycodestyle, bugbear and import order.
lint: setup
	$(BIN)/ruff check engine bench tests
	$(BIN)/mypy

# The whole Python suite on the default backend (ipsec-mb), then the tests marked `native` (they
# exercise the native core's own paths) on OpenSSL; two processes each (pytest-xdist).
# PYTEST_ENV: variables for every run, the probe too; PYTEST_WORKERS: processes per run.
PYTEST_WORKERS ?= 2
pytest:
	@if $(PYTEST_ENV) $(BIN)/python -c "import sys, engine._native as n; sys.exit(not n.backend_available('ipsec-mb'))"; then \
	  ENGINE_BACKEND=ipsec-mb $(PYTEST_ENV) $(BIN)/python -m pytest -n $(PYTEST_WORKERS) && \
	  ENGINE_BACKEND=openssl $(PYTEST_ENV) $(BIN)/python -m pytest -n $(PYTEST_WORKERS) -m native; \
	else echo "*** ipsec-mb backend not available on this machine: the whole suite on OpenSSL ***"; \
	  ENGINE_BACKEND=openssl $(PYTEST_ENV) $(BIN)/python -m pytest -n $(PYTEST_WORKERS); fi

# Vault in HA (docs/vault-ha.md): minutes of leader kills on a three-node OpenBao Raft cluster
# (rotation under 24 kills, traffic under 10, a snapshot restore), marked vault_ha and so left
# out of make test; .ci/run runs it. One backend: nothing here depends on it. -s prints the
# figures (kills survived, values checked, time without service per election).
test-vault-ha: setup
	$(BIN)/python -m pytest -m vault_ha -s -p no:cacheprovider tests/test_vault_ha_slow.py

# Every C file (library, cffi and C-API modules, driver, KATs) built with AddressSanitizer and
# UndefinedBehaviorSanitizer in build/asan, with its own virtual environment (.venv is untouched):
# ctest (KATs and driver, both backends) with leak detection on, then the Python suite as make test
# runs it (the whole suite on ipsec-mb, the native modules on OpenSSL) with the ASan runtime preloaded into the uninstrumented interpreter. There, leak
# detection is off (the interpreter keeps its own allocations until exit, by design), and
# PYCRYPTODOME_DISABLE_DEEPBIND is set because the preloaded runtime refuses RTLD_DEEPBIND;
# libstdc++ is preloaded too, or ASan finds no real __cxa_throw for C++ extensions loaded later
# (matplotlib's, which the gate's tests draw with) and aborts on their first exception.
# pytest captures stderr, so ASan writes to log_path; UBSan ignores log_path when it shares a
# process with ASan under GCC (gcc.gnu.org/PR94328), so pytest leaves fd 2 alone (--capture=sys)
# and it goes to a file. Any report in either fails the target and is printed.
ASAN := build/asan
ASAN_VENV := $(ASAN)/venv
ASAN_REPORTS := $(CURDIR)/$(ASAN)/reports
UBSAN_ENV = UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
ASAN_C_ENV = ASAN_OPTIONS=detect_leaks=1 $(UBSAN_ENV)
ASAN_PY_ENV = LD_PRELOAD=$(shell $(CC) -print-file-name=libasan.so):$(shell $(CC) -print-file-name=libstdc++.so.6) \
	PYCRYPTODOME_DISABLE_DEEPBIND=1 \
	ASAN_OPTIONS=detect_leaks=0:log_path=$(ASAN_REPORTS)/asan $(UBSAN_ENV) PYTEST_ADDOPTS=--capture=sys

$(ASAN_VENV)/pyvenv.cfg:
	$(PYTHON) -m venv $(ASAN_VENV)

test-asan: system-deps $(ASAN_VENV)/pyvenv.cfg
	cmake -S . -B $(ASAN)/c -DENGINE_SANITIZE=ON -DENGINE_BUILD_PYTHON=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	cmake --build $(ASAN)/c -j2 >/dev/null
	$(ASAN_C_ENV) ctest --test-dir $(ASAN)/c --output-on-failure
	$(ASAN_VENV)/bin/pip install -q -C build-dir=$(ASAN)/python -C cmake.build-type=RelWithDebInfo \
	  -C cmake.define.ENGINE_SANITIZE=ON -e '.[test]'
	@rm -rf $(ASAN_REPORTS) && mkdir -p $(ASAN_REPORTS); status=0; \
	timeout 2700 $(MAKE) --no-print-directory pytest VENV=$(ASAN_VENV) PYTEST_ENV="$(ASAN_PY_ENV)" \
	  2>$(ASAN_REPORTS)/stderr || status=$$?; \
	if [ $$status = 124 ]; then echo "*** the Python suite under ASan did not finish in 45 minutes: a hang ***"; fi; \
	if ls $(ASAN_REPORTS)/asan.* >/dev/null 2>&1 || grep -q "runtime error:" $(ASAN_REPORTS)/stderr; then \
	  echo "*** sanitizer reports:"; cat $(ASAN_REPORTS)/asan.* $(ASAN_REPORTS)/stderr 2>/dev/null; exit 1; fi; \
	if [ $$status != 0 ]; then cat $(ASAN_REPORTS)/stderr; fi; \
	exit $$status

# asv in its own environment (asv.conf.json): builds HEAD's wheel into a virtualenv, installs it
# there and runs each benchmark once (asv exits 2 if one fails).
asv-run:
	$(BIN)/asv machine --yes >/dev/null
	$(BIN)/asv run --quick --show-stderr HEAD^!

# History (bench/README.md): asv over the last $(HISTORY) commits of $(BRANCH), each built for
# real, then the HTML pages in .asv/html (`asv preview` serves them).
HISTORY ?= 20
BRANCH ?= main
bench-history: setup
	$(BIN)/asv machine --yes >/dev/null
	mkdir -p .asv && git rev-list --first-parent -n $(HISTORY) $(BRANCH) > .asv/history-commits
	$(BIN)/asv run --skip-existing --show-stderr HASHFILE:.asv/history-commits || \
	  echo "(asv: some benchmarks failed; on older commits, cases whose API did not exist yet)"
	$(BIN)/asv publish

# The regression gate (bench/README.md): every case's ratio against bench/gate_baseline.json;
# exit 1 names the cases that regressed.
bench-gate: setup
	$(BIN)/python -m bench.gate --chart bench/gate.png

# The short gate that bench-check runs, judged against this machine's baseline (bench/README.md:
# baselines are kept per backend, instruction set, CPU and threads). On a machine the committed
# file has none for, a copy in build/ first records one (5 runs of the short cases), so the run
# still proves the gate: it must pass, and it must fail (exit 1, not 2) on the OpenSSL backend
# judged against ipsec-mb's baseline, about 2x slower on bulk data.
GATE_BASELINE := build/gate_baseline.json
bench-gate-short:
	@if $(BIN)/python -c "import sys, engine._native as n; sys.exit(not n.backend_available('ipsec-mb'))"; then \
	  mkdir -p build; cp bench/gate_baseline.json $(GATE_BASELINE); \
	  key=$$(ENGINE_BACKEND=ipsec-mb $(BIN)/python -m bench.gate --key); \
	  ENGINE_BACKEND=ipsec-mb $(BIN)/python -m bench.gate --short --baseline $(GATE_BASELINE) --calibrate-missing --runs 5 || exit 1; \
	  status=0; ENGINE_BACKEND=openssl $(BIN)/python -m bench.gate --short --baseline $(GATE_BASELINE) \
	    --against "$$key" > build/gate-openssl.txt || status=$$?; \
	  cat build/gate-openssl.txt; \
	  if [ $$status -ne 1 ] || ! grep -q "^REGRESSED: " build/gate-openssl.txt; then \
	    echo "*** the gate did not fail on the OpenSSL backend with a verdict (exit $$status) ***"; exit 1; fi; \
	  echo "the gate failed on the OpenSSL backend, as it must"; \
	else echo "*** ipsec-mb backend not available: the gate's experiment needs both backends, not run ***"; fi

# The portable manylinux wheel (ipsec-mb and libcrypto inside) and the sdist, both into
# build/wheel/dist; wheel-check also installs the wheel outside the checkout and runs it with the
# system's ipsec-mb and OpenSSL hidden (root: a mount namespace). docs/packaging.md.
wheel:
	PYTHON=$(PYTHON) .ci/wheel-check --build-only

wheel-check:
	PYTHON=$(PYTHON) .ci/wheel-check

bench:
	$(BIN)/python -m bench.compare --chart bench/compare.png --json bench/compare.json

clean:
	rm -rf build .asv
