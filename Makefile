# Two commands on a fresh machine:  `make studio` starts the studio on Tiny World, `make test` runs every test.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# the CPU build of torch (a plain `pip install torch` may pull a multi-GB CUDA build)
TORCH  ?= torch==2.13.0

.PHONY: studio test venv browser clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

venv: $(VENV)/.installed

# Debian's Chromium drives the browser tests (Playwright never downloads a browser here)
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

studio: venv
	$(PY) launch.py $(ARGS)

test: venv browser
	$(PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
