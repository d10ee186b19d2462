# pcas: `make reproduce` runs the whole pipeline on the embedded synthetic data; `make test` runs the tests.
# Both create .venv and install everything on a fresh machine. Targets are artifact files, so Make reruns only what
# changed: editing stages/<stage>.toml reruns that stage and everything downstream of it, nothing upstream.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PCAS := $(BIN)/pcas
STAMP := $(VENV)/.installed
RAW := data/raw
RUNS := data/runs
LAYOUTS := avss s4 ms3
export OMP_NUM_THREADS ?= 2

.PHONY: install test test-slow reproduce baselines bench clean-runs help
.DELETE_ON_ERROR:

help:
	@echo "make reproduce   run the pipeline on the embedded synthetic data, write results/"
	@echo "make test        run the test suite (fast part)"
	@echo "make test-slow   run the heavier tests (distributed, long smoke runs)"
	@echo "make bench       speed / memory benchmarks -> results/bench.json"

# torch/torchvision/torchaudio versions are pinned in pyproject.toml (the combination known to work here).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# ---- embedded synthetic data, one data set per AVSBench layout -------------------------------------------------
$(RAW)/synth-%/.done: stages/synth.toml $(STAMP)
	$(PCAS) synth --layout $* --root $(RAW)/synth-$*
	touch $@

# ---- extract: features/{train,val,test}.h5 (multi-target pattern rule: made together) -------------------------
$(RUNS)/synth-%/features/train.h5 $(RUNS)/synth-%/features/val.h5 $(RUNS)/synth-%/features/test.h5 &: \
		$(RAW)/synth-%/.done stages/extract.toml
	$(PCAS) extract --layout $* --root $(RAW)/synth-$* --run $(RUNS)/synth-$*

FEATURES = $(foreach l,$(LAYOUTS),$(foreach s,train val test,$(RUNS)/synth-$(l)/features/$(s).h5))

reproduce: $(FEATURES)
	@echo "features ready for: $(LAYOUTS)"

clean-runs:
	rm -rf $(RUNS)
