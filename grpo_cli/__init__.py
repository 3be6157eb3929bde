"""grpo-cli: GRPO training for language models with Hydra configs, a vLLM sampler and a PyTorch learner."""

__version__ = "0.1.0"
