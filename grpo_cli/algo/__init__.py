"""The GRPO math: advantages, the loss and its parts, KL, IS correction, aggregation, the KL watch, reference refresh."""
