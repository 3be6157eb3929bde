"""What survives a stop: checkpoints, resume, stop reasons, the Hugging Face export."""
