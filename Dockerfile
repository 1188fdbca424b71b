# syntax=docker/dockerfile:1
# One image for all three workloads (retrieval service, inference worker, ingest
# Jobs), entrypoint `raee`. It ships the serving packages only (no evaluation,
# benchmarks or tests). Build from the repository root, with docker or podman:
#   make image                                   # wheelhouse first, then the build below
#   podman build -t localhost/raee:dev .
#   podman build --build-arg BAKE_WEIGHTS=1 -t localhost/raee:dev-baked .
#   make image BASE_IMAGE=localhost/raee-base:bookworm   # no registry reachable
# Build arguments:
#   BASE_IMAGE       any Debian-like image with python3 (3.11) and its venv module;
#                    containers/base_image.sh builds one from Debian packages.
#   TORCH_VERSION    torch, CPU build.
#   TORCH_INDEX_URL  where torch comes from when wheelhouse/ holds no wheels.
#   BAKE_WEIGHTS=1   convert the backbone at build time into /opt/raee/cache
#                    (docs/deploy.md, "Model weights"); 0 leaves it to `raee prepare`.
# With wheels in wheelhouse/ (containers/wheelhouse.sh, run by `make
# image`) the build installs from them only and needs no network at all.
# tests/test_image_context.py keeps the COPY lines and .dockerignore in step.

ARG BASE_IMAGE=docker.io/library/python:3.11.13-slim-bookworm

# ---- deps: a virtual environment with torch (CPU) and the pinned dependencies.
FROM ${BASE_IMAGE} AS deps
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv
COPY wheelhouse/ /wheelhouse/
WORKDIR /src
COPY pyproject.toml constraints.txt ./
# Without a wheelhouse: torch first, from the CPU wheel index (anything pulling
# torch in later would otherwise fetch a multi-GB CUDA build), the rest from PyPI.
RUN set -eu; \
    python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /tmp/requirements.txt; \
    if ls /wheelhouse/*.whl > /dev/null 2>&1; then \
        set -- --no-index --find-links /wheelhouse; \
    else \
        pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"; \
        set --; \
    fi; \
    pip install "$@" -c constraints.txt "torch==${TORCH_VERSION}" "setuptools>=77" -r /tmp/requirements.txt

# ---- app: the project, beside the environment in /opt/app, so that a change to the
# sources rebuilds a small layer and reuses the environment's (about 1.8 GB).
FROM deps AS app
# The sources the image ships: the serving packages and the project's metadata.
COPY README.md ./
COPY raee ./raee
COPY raee_cli ./raee_cli
# the slim client `raee classify` uses (pyproject finds it under clients/python too)
COPY clients/python ./clients/python
COPY ingest ./ingest
COPY retrieval_service ./retrieval_service
COPY inference_service ./inference_service
RUN pip install --no-index --no-deps --no-build-isolation --target /opt/app .
ENV PYTHONPATH=/opt/app \
    PATH=/opt/app/bin:$PATH
RUN raee --help > /dev/null

# ---- weights: optionally convert the backbone once, into the image's cache.
FROM app AS weights
ARG BAKE_WEIGHTS=0
ENV RAEE_CACHE_DIR=/opt/raee/cache \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
RUN mkdir -p "$RAEE_CACHE_DIR" \
    && if [ "$BAKE_WEIGHTS" = "1" ]; then raee prepare; fi

# ---- runtime: the environment, the cache, the project, a non-root user; no build tools.
# Largest and steadiest layers first.
FROM ${BASE_IMAGE} AS runtime
RUN groupadd --system --gid 10001 raee \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/raee --create-home \
       --shell /usr/sbin/nologin raee
COPY --from=deps /opt/venv /opt/venv
# Same path as at build time. The converted weights are found by the GGUF file's
# SHA-256, so the layer's whole-second mtimes do not matter; owned by root, and the
# root filesystem is read-only at run time: the services only read them.
COPY --from=weights /opt/raee/cache /opt/raee/cache
COPY --from=app /opt/app /opt/app
ENV PATH=/opt/app/bin:/opt/venv/bin:$PATH \
    PYTHONPATH=/opt/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    RAEE_CACHE_DIR=/opt/raee/cache
WORKDIR /home/raee
USER 10001:10001
# retrieval gRPC, inference gRPC, their metrics
EXPOSE 50051 50052 9101 9102
ENTRYPOINT ["raee"]
CMD ["--help"]
