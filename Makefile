# svg-sweeps: every target creates .venv and installs the project on first use (needs only python3).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: install train evaluate data test test-all lint bench sweep report clean

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

## lint + the test suite (the slow end-to-end checks run in their small versions)
test: $(STAMP)
	$(BIN)/ruff check svg entrypoints tests
	$(BIN)/python -m pytest -q -m "not slow"

## every test, including the minutes-long end-to-end ones
test-all: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check svg entrypoints tests
	$(BIN)/ruff format --check svg entrypoints tests

clean:
	rm -rf runs data/smoke
