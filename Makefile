# The two commands: `make demo` and `make test`. Both create .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# make demo AS=hydra: Ory Hydra instead of Keycloak
AS ?= keycloak

.PHONY: demo test lint bench clean lock audit fuzz

# Dependencies come from the hash-checked lock (requirements-ci.lock); the project itself on top.
$(STAMP): pyproject.toml setup.py gateway/_precheck.pyx requirements-ci.lock
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q --require-hashes -r requirements-ci.lock
	$(VENV)/bin/pip install -q --no-deps -e .
	touch $(STAMP)

# Re-resolve both locks after a change of pyproject.toml (uv comes with the dev tools: pip install uv).
LOCK_FLAGS := --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 -q
lock:
	$(VENV)/bin/uv pip compile pyproject.toml $(LOCK_FLAGS) -o requirements.lock
	$(VENV)/bin/uv pip compile pyproject.toml --extra test --extra dev --extra fuzz $(LOCK_FLAGS) -o requirements-ci.lock

# Coverage-guided fuzzing (atheris) of the listener and the pre-signature pipeline, bounded in time.
FUZZ_SECONDS ?= 60
fuzz: $(STAMP)
	$(PY) fuzz/run.py --seconds $(FUZZ_SECONDS)

# Known advisories against the locks; says NOT AUDITED when the advisory data is unreachable.
audit: $(STAMP)
	$(PY) scripts/audit.py

venv: $(STAMP)

demo: $(STAMP)
	AS=$(AS) bash scripts/demo.sh

test: $(STAMP)
	$(PY) -m pytest -p no:cacheprovider -q -ra tests

lint: $(STAMP)
	$(VENV)/bin/ruff check gateway tests scripts bench fuzz
	$(VENV)/bin/mypy gateway
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	bash bench/run.sh

clean:
	rm -rf $(VENV) build *.egg-info
