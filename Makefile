# Set-up and everyday commands. `make demo` and `make test` are all a fresh machine needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test lint proto bench results clean

install: $(STAMP)

# torch comes first, from the CPU wheel: anything that pulls torch in later would
# otherwise fetch a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/raee demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/ingest_and_query.py

# Everything in docs/results from scratch: the ingest benchmark (whose ratio the
# summary carries), then `raee eval` over both template families of the six tasks.
DATA ?= ../shared/data
results: $(STAMP)
	$(BIN)/python benchmarks/ingest_and_query.py --data $(DATA)/sst2/train.jsonl --limit 2000 \
		--out docs/results/ingest_and_query.json
	$(BIN)/raee eval --data-root $(DATA) --train-limit 2000 --out docs/results

clean:
	rm -rf $(VENV) .raee .pytest_cache .mypy_cache .ruff_cache
