# svg-sweeps: every target creates .venv and installs the project on first use (needs only python3).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: install train evaluate data test test-all lint bench sweep study report clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## train the light CPU model on the embedded synthetic data (resumes if interrupted)
train: $(STAMP)
	$(BIN)/python entrypoints/train.py --config cpu --out runs/cpu --resume auto $(ARGS)

## evaluate the `make train` model on the test split (PSNR/SSIM, best of 10, copy-last, GIFs)
evaluate: $(STAMP)
	$(BIN)/python entrypoints/evaluate.py runs/cpu/checkpoints/best.pt --split test --out runs/cpu/eval/test-best.json $(ARGS)

## generate the embedded synthetic dataset (train also does this on first use)
data: $(STAMP)
	$(BIN)/python entrypoints/prepare_data.py synthetic --out data/synthetic

## the test suite without the minutes-long end-to-end checks (marked slow)
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

## every test, including the minutes-long end-to-end ones
test-all: $(STAMP)
	$(BIN)/python -m pytest -q

## throughput of the project's step vs the seed's per-frame step, loaders, prediction -> bench/<preset>.json
## (CONFIG=seed for the full VGG model; ARGS="--captured --validation" adds the CUDA-graph step, a timed validation
## and the projected run)
bench: $(STAMP)
	$(BIN)/python entrypoints/bench.py --config $(or $(CONFIG),cpu) --out bench/$(or $(CONFIG),cpu).json $(ARGS)

## the quick demo: beta_max 1 (the seed: the latent collapses) vs 1e-4 vs 1e-5 (used), offline on the CPU preset
## shortened to 600 iterations per trial (11 min on 2 cores; resumes if interrupted), then its report:
## runs/sweep-beta/report/report.html
sweep: $(STAMP)
	$(BIN)/python entrypoints/sweep.py sweeps/beta.yaml --out runs/sweep-beta --resume --parallel 2 \
		--set train.iters_per_epoch=60 --set train.val_sequences=32 $(ARGS)
	$(BIN)/python entrypoints/report.py runs/sweep-beta

## the study (docs/study.md): annealing, teacher forcing, learning rate and beta over 3 seeds each, offline on the
## study preset, test evaluation under the seed and svg protocols, reports and verdicts in runs/study (about 2 h
## on 2 CPU cores; resumes if interrupted); figures and RESULTS.md copied to docs/study/
study: $(STAMP)
	$(BIN)/python entrypoints/study.py --out runs/study --figures docs/study $(ARGS)

## compare a sweep folder or run folders in one HTML page (RUNS=runs/...)
report: $(STAMP)
	$(BIN)/python entrypoints/report.py $(or $(RUNS),runs/sweep-beta) $(ARGS)

## ruff: lint and formatting
lint: $(STAMP)
	$(BIN)/ruff check svg entrypoints tests
	$(BIN)/ruff format --check svg entrypoints tests

clean:
	rm -rf runs data/smoke
