# ava-vdev: `make demo` runs the main job, `make test` runs the whole suite.
# Both install what they need on a fresh Debian 12/13 machine (root):
# system packages with apt, Python packages into .venv, and the QEMU lab.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# System packages the host needs (the lab's QEMU lives in its own trixie root).
HOST_PACKAGES := python3 python3-venv python3-dev gcc make libc6-dev pkg-config \
	ocl-icd-libopencl1 ocl-icd-opencl-dev opencl-c-headers pocl-opencl-icd clinfo \
	mmdebstrap pciutils busybox-static cpio
PYTEST_ARGS ?=

.PHONY: all host-deps venv lab lint test test-fast demo clean
all: venv

host-deps:
	@missing=$$(for p in $(HOST_PACKAGES); do \
		dpkg-query -W -f='$${db:Status-Abbrev}' $$p 2>/dev/null | grep -q '^ii' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo ">> apt: installing $$missing"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -q && apt-get install -y -q --no-install-recommends $$missing; \
	else echo ">> apt: host packages present"; fi

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

venv: host-deps $(VENV)/.installed

lab: venv
	$(PY) -m qemu lab build

# ruff (pyflakes, imports, bugbear, ...) and mypy (strict for protocols/ and vdev/);
# both configured in pyproject.toml.
lint: venv
	$(PY) -m ruff check .
	$(PY) -m mypy

test: lint lab
	$(PY) -m pytest $(PYTEST_ARGS)

# The fast loop: lint and everything but the in-VM tests.
test-fast: lint
	$(PY) -m pytest -m 'not vm' $(PYTEST_ARGS)

demo: venv lab
	$(PY) -m qemu demo

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
