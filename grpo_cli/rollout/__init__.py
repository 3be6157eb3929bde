"""Where training data comes from: prompts, the samplers (colocated vLLM, vLLM server), the rollout source, batch filters, evaluation."""
