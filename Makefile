# Two entry points: `make demo` (the embedded demo, end to end) and `make test` (lint + tests).
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup demo test lint report clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e '.[dev,cluster]'
	touch $@

demo: setup
	$(BIN)/snakemake --cores 2 --configfile config/demo.yaml

report: demo
	$(BIN)/snakemake --cores 2 --configfile config/demo.yaml --report results/demo/report.html

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/snakemake --lint --configfile config/demo.yaml
	$(BIN)/snakemake --lint

test: lint
	$(BIN)/pytest -q -n 2

clean:
	rm -rf results/demo .snakemake
