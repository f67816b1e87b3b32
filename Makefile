# Two commands on a fresh machine: `make serve` and `make test`.
# Both create .venv with every dependency on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= $(or $(MODELSERVE_HOST),0.0.0.0)
PORT ?= $(or $(MODELSERVE_PORT),8000)

.PHONY: venv serve test lint typecheck check wheelhouse figures clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt clients/python/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ./clients/python
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
	$(BIN)/mypy app models training clients/python/src/modelserve_client

check: lint typecheck test

# Wheels of the dependencies (serve, train, bench, tests) for an offline machine that already
# has torch, e.g. a GPU node; WHEEL_SKIP names packages it has too. Copy .whl/ there, then
#   python3 -m pip install --no-index --find-links .whl -e ./clients/python -e '.[train,bench]' pytest-asyncio schemathesis
WHEEL_PYTHON ?= 3.12
WHEEL_SKIP ?= torch torchvision
WHEEL_PLATFORMS := manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 any
wheelhouse: $(STAMP)
	$(BIN)/python -c 'import re, sys, tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
	  reqs = p["dependencies"] + [r for e in ("train", "bench", "dev") for r in p["optional-dependencies"][e]]; \
	  skip = set(sys.argv[1:]) | {"modelserve", "modelserve-client", "ruff", "mypy"}; \
	  print("\n".join(r for r in reqs if re.split(r"[<>=!~;\[ ]", r)[0] not in skip))' $(WHEEL_SKIP) \
	| xargs -d '\n' $(BIN)/python -m pip download --quiet --only-binary=:all: --dest .whl \
		--python-version $(WHEEL_PYTHON) $(addprefix --platform ,$(WHEEL_PLATFORMS))
	du -sh .whl

# The README's figures of a shipped model are the ones its training run drew (curves, samples,
# reconstructions, confusion matrix): `make figures MODEL=vae-mnist RUN=runs/vae-mnist` copies
# them into docs/figures/$(MODEL)/.
figures:
	@test -n "$(MODEL)" -a -n "$(RUN)" || { echo "usage: make figures MODEL=<name> RUN=<run dir>"; exit 2; }
	@ls $(RUN)/*.png >/dev/null || { echo "no figures in $(RUN)"; exit 2; }
	mkdir -p docs/figures/$(MODEL)
	cp $(RUN)/*.png docs/figures/$(MODEL)/

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# What `python -m training.gpu_run run` needs on an offline GPU machine (docs/training.md): the
# data bundle (CIFAR-10 pack, xz; MNIST idx, gzip) in data/gpu and the wheels it lacks in .whl.
DATA_DIR ?= ../shared/datasets
.PHONY: gpu-bundle
gpu-bundle: $(STAMP)
	$(BIN)/python -m training.gpu_run prepare --data-dir $(DATA_DIR) --out data/gpu --wheels .whl
	du -sh data/gpu .whl

# Build the image and check it as deployed (minutes; needs a Docker engine; not part of `test`):
# compose's hardening, healthy, the README's curl examples, SIGTERM drain, compose + Prometheus.
# deploy/docker_smoke.py lists its steps and options, e.g. SMOKE_ARGS="--keep".
.PHONY: docker-smoke
docker-smoke: $(STAMP)
	$(BIN)/python deploy/docker_smoke.py $(SMOKE_ARGS)
