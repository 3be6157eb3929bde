"""Tools the model calls while it generates: their registry, the parsers of tool calls, the runner, the multi-turn loop, the built-in `python` sandbox."""
