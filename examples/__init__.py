"""Examples that use grpo-cli; not part of the installed package."""
