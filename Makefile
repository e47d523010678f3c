# `make repro`: create the venv if needed, install, run the DVC pipeline on the built-in dataset.
# `make test`:  create or update the same venv, run the linter (ruff) and the test suite.
# `make data-voc`: download PASCAL VOC 2012 + SBD into data/ (checksummed, resumable) and build train_aug.
# `make data-coco`: download MS COCO 2014 (images + instance annotations) into data/coco (same checks).
# `make bench`: run the benchmarks (tables on stdout, JSON in benchmarks/results/).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: repro test install clean-venv data-voc data-coco bench

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

repro: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

data-voc: $(STAMP)
	$(BIN)/python -m pipeline.data.download --dest data

data-coco: $(STAMP)
	$(BIN)/python -m pipeline.data.download coco --dest data

bench: $(STAMP)
	$(BIN)/python -m benchmarks.cam_speed
	$(BIN)/python -m benchmarks.multiscale
	$(BIN)/python -m benchmarks.crf_speed
	$(BIN)/python -m benchmarks.pipeline_stages

clean-venv:
	rm -rf $(VENV)
