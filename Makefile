# Two commands on a fresh machine: `make demo` and `make test`. Both build the virtual
# environment first. torch is installed explicitly before the project so pip takes the wheel
# you name (CPU by default) instead of resolving a multi-GB CUDA build on its own.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
CORES ?= all
# Extras of the project to install: dev (pytest, ruff, snakefmt) and slurm (the Slurm executor
# plugin, which tests/test_slurm.py needs; pure Python). EXTRAS=dev leaves the plugin out.
EXTRAS ?= dev,slurm
SNAKEMAKE_ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint format clean help

help:
	@echo "make demo   build $(VENV), then run the whole pipeline on the embedded demo config"
	@echo "make test   build $(VENV), then run lint checks and the test suite"
	@echo "make lint   ruff + snakefmt --check + snakemake --lint"
	@echo "make clean  remove results/ and .snakemake/ (keeps $(VENV))"
	@echo "variables:  PYTHON=$(PYTHON) VENV=$(VENV) TORCH='$(TORCH)' CORES=$(CORES) EXTRAS=$(EXTRAS)"

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	@touch $@

# The whole demo DAG (README "The pipeline"), timed; then the HTML report and the results table.
demo: $(STAMP)
	@start=$$(date +%s); \
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --cores $(CORES) \
		--workflow-profile workflow/profiles/default $(SNAKEMAKE_ARGS) && \
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --report results/report.html \
		--workflow-profile workflow/profiles/default $(SNAKEMAKE_ARGS) && \
	echo && awk '/^## Error rates/{p=1; print; next} p && /^## /{exit} p' results/report/report.md && \
	echo "demo finished in $$(( $$(date +%s) - start )) s; report: results/report/report.md," \
		"results/report.html"

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check stages tests
	$(BIN)/snakefmt --check Snakefile workflow/rules
	PATH=$(BIN):$$PATH $(BIN)/snakemake --lint

format: $(STAMP)
	$(BIN)/ruff check --fix stages tests
	$(BIN)/ruff format stages tests
	$(BIN)/snakefmt Snakefile workflow/rules

clean:
	rm -rf results .snakemake
