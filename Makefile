# `make demo` and `make test` each build .venv when it is missing, then run.
# On this kind of machine the CPU build of torch 2.13.0 lies on disk; pinning it here (and only
# here) keeps pip from pulling a multi-GB CUDA build. The package itself asks for a range.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_PIN ?= torch==2.13.0

.PHONY: demo test venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

demo: venv
	$(VENV)/bin/landscape demo --out demo-output

test: venv
	$(PY) -m pytest

clean:
	rm -rf $(VENV) demo-output
