# The README's two commands are `make demo` and `make test`; both install first when needed.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: install demo study test test-quick models bench gpu-check gpu-check-wheels clean

install: $(STAMP)

# Reinstall only when the dependency list or the pins change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: install
	WANDB_MODE=$${WANDB_MODE:-offline} $(BIN)/mixer-scaling demo

test: install
	$(BIN)/python -m pytest -q --durations=15

# The edit-test loop: everything but the slow tests (real SLURM, fault injection, long runs).
test-quick: install
	$(BIN)/python -m pytest -q -m "not slow" --ignore=tests/faults -x

# The CPU reference study (conf/sweep/cpu_study.yaml): its table, figures and findings land in results/cpu_study/.
study: install
	WANDB_MODE=$${WANDB_MODE:-offline} $(BIN)/mixer-scaling study cpu_study -o results/cpu_study --best-over train.lr

models: install
	$(BIN)/mixer-scaling models

# Speed against the hardware and the peers, one table; writes benchmarks/results/ (~6 min on 2 cores).
bench: install
	$(BIN)/python benchmarks/run.py

# One NVIDIA GPU: does a study's path work there, and how fast (benchmarks/gpu_check.py); ~5 min.
# On a GPU machine without network: carry benchmarks/wheels/ (make gpu-check-wheels) and run the script.
gpu-check:
	bash benchmarks/gpu_check.sh

gpu-check-wheels: install
	$(BIN)/python -m pip wheel -q --no-deps -c constraints.txt -w benchmarks/wheels \
		hydra-core omegaconf "antlr4-python3-runtime==4.9.*" submitit hydra-submitit-launcher wids braceexpand

clean:
	rm -rf runs outputs multirun wandb .pytest_cache
