"""`make demo`: the offline CPU demo (tiny model, arithmetic task, SFT warm start)."""
