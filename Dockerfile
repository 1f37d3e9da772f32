# Two images from one file; docker-compose.yml and deploy/k8s/ use both.
#   docker build --target api -t midiffusion-api .        the gateway: no torch
#   docker build --target worker -t midiffusion-worker .  a worker: torch with CUDA (PyPI's
#                                                          Linux wheel bundles it)
#   docker build --target worker --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
#                                                          a smaller CPU-only worker
# Not built in this repository's CI: the development machine has no Docker engine.
ARG PYTHON_IMAGE=python:3.11-slim

# The project's packages (pyproject's packages.find), copied once for both images.
FROM scratch AS source
COPY midiffusion /src/midiffusion
COPY model_store /src/model_store
COPY jobs /src/jobs
COPY service /src/service
COPY worker /src/worker

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MIDIFF_STORAGE_DIR=/data
RUN useradd --create-home --uid 10001 midiff && mkdir -p /data && chown midiff /data
WORKDIR /app
COPY pyproject.toml README.md ./
COPY deploy/requirements.py /usr/local/lib/midiff-requirements.py

# --- the gateway ---------------------------------------------------------------------------
FROM base AS api
# Dependencies first (a layer that survives code edits), without what only workers import.
RUN python /usr/local/lib/midiff-requirements.py --without torch safetensors matplotlib \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt
COPY --from=source /src ./
RUN pip install --no-deps . && rm -rf /app/build
USER midiff
WORKDIR /home/midiff
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=10s --start-period=30s --retries=5 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/health/ready', timeout=5)"]
# Needs MIDIFF_REDIS_URL: without torch this image cannot run the embedded worker.
CMD ["midiffusion", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]

# --- a worker (one per GPU) --------------------------------------------------------------------
FROM base AS worker
# Empty: torch from PyPI (CUDA bundled). A download.pytorch.org index picks CPU or a CUDA version.
ARG TORCH_INDEX_URL=""
RUN python /usr/local/lib/midiff-requirements.py > /tmp/requirements.txt \
    && if [ -n "$TORCH_INDEX_URL" ]; then \
           pip install --extra-index-url "$TORCH_INDEX_URL" -r /tmp/requirements.txt; \
       else \
           pip install -r /tmp/requirements.txt; \
       fi
COPY --from=source /src ./
RUN pip install --no-deps . && rm -rf /app/build
USER midiff
WORKDIR /home/midiff
ENV MIDIFF_WORKER_METRICS_PORT=9100 \
    MIDIFF_DEVICE=auto \
    OMP_WAIT_POLICY=PASSIVE
VOLUME ["/data"]
EXPOSE 9100
# The exporter answers from its own thread, also while a job runs (a solo pool is busy then).
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:9100/metrics', timeout=5)"]
CMD ["celery", "-A", "worker.app", "worker", "-P", "solo", "-l", "info"]
