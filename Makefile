# Two commands do all set-up on a fresh machine:  `make train`  and  `make test`.
# Both depend on `setup`, which builds .venv once and is a no-op afterwards.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.metaplus-installed
# `make train` is the main job: MAML's published sinusoid setting (the default algo=maml data=sinusoid
# preset) at 2,000 of the paper's 70,000 meta-iterations, so that it ends in a few minutes on a CPU.
# `make train ARGS="..."` replaces this budget with your overrides (ARGS="" runs the full preset).
# `make test` takes its own pytest arguments in TEST_ARGS, so that the training budget never reaches pytest.
ARGS ?= trainer.max_epochs=2
TEST_ARGS ?=

.PHONY: setup train test test-all lint bench clean
setup: $(STAMP)

# torch/torchvision come from the machine's local wheel store; learn2learn 0.2.0 ships C files that
# predate Python 3.11, so it is rebuilt from its .pyx sources with Cython (no build isolation).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q cython numpy setuptools wheel
	$(PY) -c "import learn2learn" 2>/dev/null || $(PIP) install -q --no-build-isolation --use-pep517 \
		--config-settings=--global-option=build_ext learn2learn==0.2.0
	$(PIP) install -q -e '.[test]'
	touch $@

train: setup
	WANDB_MODE=$${WANDB_MODE:-offline} $(PY) train.py $(ARGS)

test: setup
	WANDB_MODE=offline $(PY) -m pytest -m "not slow" $(TEST_ARGS)

# ruff, configured in pyproject.toml: the lint rules and the formatting CI checks (pre-commit runs the same).
lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test-all: setup
	WANDB_MODE=offline $(PY) -m pytest $(TEST_ARGS)

clean:
	rm -rf outputs multirun .pytest_cache
