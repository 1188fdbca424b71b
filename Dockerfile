# syntax=docker/dockerfile:1
# One image for all three workloads (retrieval service, inference worker, ingest
# Jobs), entrypoint `raee`. Build from the repository root:
#   docker build -t ghcr.io/raee-serve/raee:0.1.0 .
#   docker build --build-arg BAKE_WEIGHTS=1 -t ghcr.io/raee-serve/raee:0.1.0-baked .
# The first leaves model conversion to `raee prepare` at run time (an init
# container writing to a volume); the second runs it here and ships the converted
# backbone in /opt/raee/cache (docs/deploy.md, "Model weights").

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# ---- build: a virtual environment with torch (CPU) and the project, pinned.
FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
# torch first, from the CPU wheel index: anything pulling torch in later would
# otherwise fetch a multi-GB CUDA build.
RUN pip install "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY raee ./raee
COPY ingest ./ingest
COPY retrieval_service ./retrieval_service
COPY inference_service ./inference_service
COPY evaluation ./evaluation
RUN pip install -c constraints.txt . \
    && raee --help > /dev/null

# ---- weights: optionally convert the backbone once, into the image's cache.
FROM build AS weights
ARG BAKE_WEIGHTS=0
ENV RAEE_CACHE_DIR=/opt/raee/cache \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
RUN mkdir -p "$RAEE_CACHE_DIR" \
    && if [ "$BAKE_WEIGHTS" = "1" ]; then raee prepare; fi

# ---- runtime: the virtual environment, the cache, a non-root user; no build tools.
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 raee \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/raee --create-home \
       --shell /usr/sbin/nologin raee
COPY --from=build /opt/venv /opt/venv
# Same path as at build time: the converted weights are found by their path.
COPY --from=weights --chown=10001:10001 /opt/raee/cache /opt/raee/cache
ENV PATH=/opt/venv/bin:$PATH \
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
