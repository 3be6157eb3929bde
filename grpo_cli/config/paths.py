"""Where the config tree lives: inside the package for a wheel install, at the repo top otherwise."""

from pathlib import Path

_PKG = Path(__file__).resolve().parents[1]  # grpo_cli/


def config_dir() -> Path:
    """`grpo_cli/conf` in a wheel (recipes copied to its `recipe/`), else the checkout's `conf/`."""
    packaged = _PKG / "conf"
    return packaged if packaged.is_dir() else _PKG.parent / "conf"
