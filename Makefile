# genir: two set-up commands on a fresh Debian machine.
#   make demo   install everything, then run the bundled demo and print the results table
#   make test   install everything, then run the whole test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := dataset-fashion-mnist openclipart-png openclipart-svg wordnet-base
STAMP  := $(VENV)/.genir-installed

BROWSER_PACKAGES := chromium

.PHONY: demo test test-fast test-isa install install-python install-data install-browser lint clean

demo: install
	$(VENV)/bin/genir demo

test: install install-browser
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy src
	$(PY) -m pytest

# Hermetic tests only (no Debian data, no slow marker): the inner loop while developing.
test-fast: install-python
	$(PY) -m pytest -m "not slow"

# The suite with MKL's and numba's CPU dispatch held to narrower instruction sets than this
# CPU has, one setting after another: results must not depend on the CPU a user has.
ISA_SETTINGS := MKL_ENABLE_INSTRUCTIONS=AVX2 MKL_ENABLE_INSTRUCTIONS=SSE4_2 NUMBA_CPU_NAME=generic
test-isa: install install-browser
	@for setting in $(ISA_SETTINGS); do \
	  echo "== $$setting"; env $$setting $(PY) -m pytest -q -p no:cacheprovider || exit 1; \
	done

install: install-python install-data
	$(VENV)/bin/genir compile

# torch is pinned to 2.13.0 in pyproject.toml: on this machine pip takes the CPU wheel from
# local disk; elsewhere it comes from PyPI.
install-python: $(STAMP)
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,clip,serve,bench,tables,datasets]'
	touch $(STAMP)

# apt-get install the Debian packages $(1) unless dpkg already has them all
define apt_install
	@if dpkg -s $(1) >/dev/null 2>&1; then \
	  echo "Debian packages already installed: $(1)"; \
	else \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(1); \
	fi
endef

install-data:
	$(call apt_install,$(APT_PACKAGES))

# Debian's Chromium, driven by Playwright (pip) in tests/test_browser.py; Playwright's own
# browser download is not used (the test launches /usr/bin/chromium).
install-browser:
	$(call apt_install,$(BROWSER_PACKAGES))

lint: install-python
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy src

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
