"""Ranks and worlds: the Dist object, sharding strategies, launching N ranks."""
