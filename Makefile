# The two commands: `make demo` and `make test`. Both create .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# make demo AS=hydra: Ory Hydra instead of Keycloak
AS ?= keycloak

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test,dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	AS=$(AS) bash scripts/demo.sh

test: $(STAMP)
	$(PY) -m pytest -p no:cacheprovider -q -ra tests

lint: $(STAMP)
	$(VENV)/bin/ruff check gateway tests scripts bench
	$(VENV)/bin/mypy gateway

bench: $(STAMP)
	bash bench/run.sh

clean:
	rm -rf $(VENV) build *.egg-info
