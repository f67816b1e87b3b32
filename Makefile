# Two commands on a fresh machine: `make serve` and `make test`.
# Both create .venv with every dependency on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= $(or $(MODELSERVE_HOST),0.0.0.0)
PORT ?= $(or $(MODELSERVE_PORT),8000)

.PHONY: venv serve test lint typecheck check train-vae train-alexnet clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# python -m app: uvicorn with the MODELSERVE_* settings; drains and exits 0 on SIGTERM
serve: $(STAMP)
	MODELSERVE_HOST=$(HOST) MODELSERVE_PORT=$(PORT) $(BIN)/python -m app

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy app models training

check: lint typecheck test

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
