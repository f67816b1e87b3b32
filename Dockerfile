# syntax=docker/dockerfile:1
# modelserve: the FastAPI service with the shipped models baked in.
#
#   docker build -t modelserve .                       # CPU wheels of torch (default)
#   docker build -t modelserve:cuda \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130 .   # CUDA wheels
#   docker build -t modelserve:train --target train .  # + the `train` extra, for python -m training
#
# Stages: builder (a venv with every dependency and the project, non-editable) -> base (slim
# runtime, non-root user) -> train (venv with the train extra) / runtime (the default, last).
#
# Settings are environment variables with the MODELSERVE_ prefix (app/settings.py; the README's
# settings table lists them all), e.g. MODELSERVE_MODEL_DIR (default: the models baked into the
# image), MODELSERVE_DEVICE (auto|cpu|cuda), MODELSERVE_TORCH_THREADS, MODELSERVE_INFERENCE_LANES,
# MODELSERVE_MAX_BATCH_SIZE, MODELSERVE_BATCH_TIMEOUT_MS, MODELSERVE_LOG_LEVEL,
# MODELSERVE_LOG_FORMAT (text|json), MODELSERVE_API_KEY.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
# Where torch/torchvision come from: the CPU-only index keeps the image several GB smaller (with
# the CUDA 13.0 wheels it is 6.0 GB, 4.1 GB of it nvidia-* and triton; docs/deploy.md); point it
# at a CUDA index (…/whl/cu126, cu128, cu130: whichever the PyTorch index offers for the pinned
# version) for a GPU image. The versions themselves are pinned by constraints.txt.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
COPY constraints.txt ./
# torch first, in its own layer: the largest download changes only when constraints.txt does.
RUN pip install --index-url "${TORCH_INDEX_URL}" -c constraints.txt torch torchvision
# The client package first: the project depends on it (its wire schemas) and no index has it.
COPY clients/python/ clients/python/
RUN pip install -c constraints.txt ./clients/python
COPY pyproject.toml README.md LICENSE ./
COPY app/ app/
COPY models/ models/
COPY training/ training/
# Non-editable: the venv holds everything (the shipped checkpoints are package data of
# `models`), so the runtime stage copies only /opt/venv and no source tree.
RUN pip install -c constraints.txt .

FROM builder AS builder-train
RUN pip install -c constraints.txt ".[train]"

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HOME=/home/app \
    XDG_CACHE_HOME=/tmp/.cache
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /home/app --create-home app
WORKDIR /home/app

FROM base AS train
COPY --from=builder-train /opt/venv /opt/venv
USER 10001:10001
ENTRYPOINT ["python", "-m", "training"]
CMD ["--help"]

FROM base AS runtime
COPY --from=builder /opt/venv /opt/venv
USER 10001:10001
ENV MODELSERVE_LOG_FORMAT=json
EXPOSE 8000
# /readyz is 503 while the models load and warm up, 200 once done with at least one loaded;
# urlopen raises (exit 1) on any error status or a refused connection. The check reads the
# container's own settings: the port from MODELSERVE_PORT, and the X-API-Key header whenever
# MODELSERVE_API_KEY is set (needed with MODELSERVE_OPEN_PROBES=false, ignored otherwise).
# python rather than curl: curl is not in the slim image. docker-compose.yml has the same test.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as r; k = os.environ.get('MODELSERVE_API_KEY', ''); r.urlopen(r.Request('http://127.0.0.1:%s/readyz' % (os.environ.get('MODELSERVE_PORT') or 8000), headers={'X-API-Key': k} if k.strip() else {}), timeout=4)"]
# python -m app drains in-flight requests on SIGTERM and exits 0 (bare uvicorn exits 143)
ENV MODELSERVE_HOST=0.0.0.0 MODELSERVE_PORT=8000
CMD ["python", "-m", "app"]
