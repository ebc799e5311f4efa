# `make demo`, `make test` and `make docs` each build .venv when it is missing, then run.
# On this kind of machine the CPU build of torch 2.13.0 lies on disk; pinning it here (and only
# here) keeps pip from pulling a multi-GB CUDA build. The package itself asks for a range.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_PIN ?= torch==2.13.0

.PHONY: demo test test-fast lint-imports docs package-check venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

demo: venv
	$(VENV)/bin/landscape demo --out demo-output

# The import contracts (.importlinter: the layers of docs/architecture.md), the tests (they also
# run every example of README.md and docs/ and build the site), then the installed-wheel check.
test: venv lint-imports
	$(PY) -m pytest
	$(MAKE) --no-print-directory package-check

# The tests not marked slow (pytest -m "not slow"): under 2 minutes, for the edit-test loop.
test-fast: venv lint-imports
	$(PY) -m pytest -m "not slow"

lint-imports: venv
	$(VENV)/bin/lint-imports --config .importlinter

# Wheel and sdist built, the wheel installed into a fresh venv outside the repository and used.
package-check: venv
	PYTHON="$(PYTHON)" BUILD_PY="$(PY)" TORCH_PIN="$(TORCH_PIN)" bash scripts/check_install.sh

# The documentation site into site/, warnings as errors.
docs: venv
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) demo-output site dist build
