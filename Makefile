# Two commands do all set-up on a fresh machine:
#   make demo   create the environment if missing, install, train the quickstart config, print the mIoU
#   make test   create the environment if missing, install, run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export NO_ALBUMENTATIONS_UPDATE := 1
export HF_HUB_OFFLINE := 1
export PYTHONUNBUFFERED := 1

.PHONY: install demo test test-slow lint bench table table-quick clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Re-install only when the package metadata or the pins change.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install --constraint constraints.txt --editable ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m wsss_lightning.demo

# --dist load: tests are spread one by one, so the long end-to-end tests of one file (the method contract)
# run on both workers.
test: $(STAMP)
	WANDB_MODE=disabled $(BIN)/python -m pytest -m "not slow" -n 2 --dist load --durations=25

test-slow: $(STAMP)
	WANDB_MODE=disabled $(BIN)/python -m pytest -m slow

# The method table (benchmarks/method_table.md and .png): every method, its baseline and its ceiling on the hard
# synthetic sets, 2 seeds (table-quick: 1 seed). Finished runs are recorded in benchmarks/method_table_runs.json
# (committed with the table); data, weights and checkpoints go to outputs/method_table.
table: $(STAMP)
	$(BIN)/python benchmarks/method_table.py

table-quick: $(STAMP)
	$(BIN)/python benchmarks/method_table.py --quick

lint: $(STAMP)
	$(BIN)/ruff check wsss_lightning tests benchmarks
	$(BIN)/ruff format --check wsss_lightning tests benchmarks
	$(BIN)/mypy wsss_lightning

bench: $(STAMP)
	$(BIN)/python benchmarks/data_pipeline.py
	$(BIN)/python benchmarks/crf.py
	$(BIN)/python benchmarks/dupl_noise_filter.py
	$(BIN)/python benchmarks/dupl_par.py
	$(BIN)/python benchmarks/dupl_step.py --size 224
	$(BIN)/python benchmarks/afa_step.py --size 256 --batch 2

clean:
	rm -rf $(VENV) lightning_logs wandb .pytest_cache
