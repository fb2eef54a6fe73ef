# The README's two commands: `make demo` and `make test` (`make test-fast`: without the tests marked
# slow, for development). All create .venv if absent.
PYTHON ?= python3.11
TORCH ?= 2.13.0
# TORCH may be a version (2.13.0) or a full pip requirement (torch>=2.5).
TORCH_SPEC := $(if $(filter torch%,$(TORCH)),$(TORCH),torch==$(TORCH))
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.frameavg-installed

.PHONY: install demo test test-fast bench clean

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/frameavg train configs/rmd17_ethanol.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs build *.egg-info
