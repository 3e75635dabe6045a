# Set-up on a fresh machine is two commands, each of which installs .venv on first use:
#   make demo   # trains a small LSTM on the names corpus (no network needed) and writes names
#   make test   # runs the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test test-fast lint benchmark gpu-check tensorboard

$(VENV)/.installed: pyproject.toml scripts/install.sh
	PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/install.sh
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/python train.py data=names trainer.max_epochs=5
	@echo "Ten names the model wrote (a few may be real ones it learnt):"
	@$(BIN)/python generate.py ckpt=$$(ls -td logs/runs/*/ | head -1) stop_at_newline=true num_samples=10 length=30 seed=0
	@echo "Next: 'source $(VENV)/bin/activate', then 'tensorboard --logdir logs' (or 'make tensorboard')"

test: install
	$(BIN)/python -m pytest

# The edit-test loop: every test but those marked slow (subprocess runs of train.py and
# generate.py, DDP, sweeps, kills and resumes, golden runs); `make test` runs them all.
test-fast: install
	$(BIN)/python -m pytest -m "not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

benchmark: install
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/generate.py

# On a GPU machine, about 8 minutes: every GPU figure of README.md and docs/ in one table. Without network,
# as ../shared/gpu/README.md says: the project's .venv if there is one, else python3 (bootstrapped).
gpu-check:
	$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) benchmarks/gpu_check.py

tensorboard: install
	$(BIN)/tensorboard --logdir logs
