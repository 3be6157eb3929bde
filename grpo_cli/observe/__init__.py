"""What a run shows and writes: metrics files, W&B/TensorBoard, the console, report and sweep summary."""
