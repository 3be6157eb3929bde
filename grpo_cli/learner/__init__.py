"""The learner: the policy and its update, log-probs, packing, model loading, LoRA."""
