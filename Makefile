# lightning_fv: `make demo` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow test-all test-docs test-browser test-gpu lint bench clean clean-outputs mutation miniatures \
	miniature-sanity miniature-manipulation miniature-ifv miniature-robust miniature-invariant

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps "torchattacks>=3.5"  # reference PGD in tests; its pins are too tight
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m lightning_fv.demo

# every CPU test but the full-size documented commands (each documented command runs at
# a reduced size here; the browser test runs when Chromium is installed); what .ci/run runs
test: $(STAMP)
	$(PY) -m pytest -q -x --timeout=900

# the longer CPU checks alone (DDP equality, torch.compile, full ResNets)
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow --timeout=3600

# the audit report in headless Chromium (Debian's chromium package; needs root for apt)
test-browser: $(STAMP)
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
	$(PY) -m pytest -q -m browser tests/report

# every CPU test: make test, the documented commands at full size and the browser test
test-all: $(STAMP) test test-docs test-browser

# mutation testing of the formula modules (mutmut, one module at a time; minutes each,
# scores in docs/testing.md). Forked torch workers need one thread.
mutation: $(STAMP)
	$(PY) -m pip install -q "mutmut==3.8.1"
	OMP_NUM_THREADS=1 $(PY) scripts/mutation.py $(ARGS)

# every command line of README.md and docs/*.md, as written, at full size (slow; the
# reduced-size runs are part of `make test`)
test-docs: $(STAMP)
	$(PY) -m pytest -q -m full --timeout=7200 tests/docs

test-gpu: $(STAMP)
	$(PY) -m pytest -q -m gpu

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# The "science in miniature" runs of the README (CPU, minutes each; figures in docs/).
# ARGS passes options to the script (e.g. make miniature-sanity ARGS="--steps 64").
ARGS ?=
miniatures: miniature-sanity miniature-manipulation miniature-ifv miniature-robust miniature-invariant

miniature-sanity: $(STAMP)
	$(PY) scripts/sanity_check_miniature.py $(ARGS)

miniature-manipulation: $(STAMP)
	$(PY) scripts/manipulation_miniature.py $(ARGS)

miniature-ifv: $(STAMP)
	$(PY) scripts/ifv_miniature.py $(ARGS)

miniature-robust: $(STAMP)
	$(PY) scripts/train_robust.py --dataset digits $(ARGS)

miniature-invariant: $(STAMP)
	$(PY) scripts/invariant_miniature.py $(ARGS)

# Caches and scratch only: trained detectors, manipulated models, checkpoints and renders
# under outputs/ stay (the docs tell users to keep them there).
clean:
	rm -rf outputs/cache .pytest_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

# Everything the commands wrote: outputs/ (detectors, checkpoints, renders…) and lightning_logs/.
clean-outputs:
	rm -rf outputs lightning_logs
