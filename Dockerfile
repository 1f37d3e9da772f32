# One image for the gateway and the workers; the command picks the role (docker-compose.yml).
# Not built in this repository's CI: the development machine has no Docker engine.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# torch comes from PyPI by default (its Linux wheel bundles CUDA). For a smaller CPU-only image:
#   docker build --build-arg PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu .
ARG PIP_EXTRA_INDEX_URL=""
ENV PIP_EXTRA_INDEX_URL=${PIP_EXTRA_INDEX_URL}

WORKDIR /app
# Dependencies first (a layer that survives code edits): install the pinned list from
# pyproject.toml, then the project itself without re-resolving.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml','rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

COPY midiffusion ./midiffusion
COPY model_store ./model_store
COPY jobs ./jobs
COPY service ./service
COPY worker ./worker
RUN pip install --no-deps .

RUN useradd --create-home --uid 10001 midiff && mkdir -p /data && chown midiff /data
USER midiff
WORKDIR /home/midiff

ENV MIDIFF_STORAGE_DIR=/data
VOLUME ["/data"]
EXPOSE 8000 9100

# The gateway; workers run `celery -A worker.app worker -P solo` with the same image.
CMD ["midiffusion", "serve", "--host", "0.0.0.0", "--port", "8000"]
