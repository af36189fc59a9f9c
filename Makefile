# Two commands: `make run` (venv, install, start the app) and `make test` (same venv, all tests but the
# concurrent-load test, which `make test-load` runs on its own).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PORT ?= 8501
# Listen address: loopback unless you say otherwise.  `make run ADDRESS=0.0.0.0` serves a room and
# needs WILDID_ACCESS_SECRET (the launcher refuses without it).  Env WILDID_ADDRESS works too.
ADDRESS ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test test-load install chromium bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "wildid needs Python >= 3.11"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The browser test drives Debian's Chromium; Playwright's own browser download cannot work offline.
chromium:
	@test -x /usr/bin/chromium || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium >/dev/null)

run: install
	$(PY) -m wildid.serve --port $(PORT) $(if $(ADDRESS),--address $(ADDRESS))

test: install chromium
	$(PY) -m pytest

# 20 concurrent browser sessions against one app server; prints latency as a ratio to one session alone.
test-load: install chromium
	$(PY) -m pytest -m load -s tests/browser/test_load_concurrent.py

bench: install
	$(PY) bench/predict.py

clean:
	rm -rf $(VENV) .pytest_cache
