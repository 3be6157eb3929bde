"""Tools the model calls while it generates (multi-turn rollouts): the built-in `python` sandbox."""
