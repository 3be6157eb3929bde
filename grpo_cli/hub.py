"""The Hugging Face hub, when it cannot be reached.

Without a network, `from_pretrained("Qwen/...")` and `load_dataset("openai/gsm8k")` retry for
tens of seconds before failing. One short connection attempt tells us first; when it fails, the
HF libraries switch to offline mode, so models and datasets already in the local cache still
load and anything else fails at once with our one-line error.
"""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

from grpo_cli.observe.console import console


@functools.cache
def reachable(timeout: float = 3.0) -> bool:
    import huggingface_hub.constants as hub

    url = urlparse(hub.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def use_cache_if_offline() -> None:
    """Put transformers/datasets into offline mode when the hub is unreachable."""
    import datasets.config
    import huggingface_hub.constants as hub

    if hub.HF_HUB_OFFLINE or reachable():
        return
    console.print("the Hugging Face hub is unreachable: loading from the local cache only")
    os.environ["HF_HUB_OFFLINE"] = "1"
    hub.HF_HUB_OFFLINE = True  # read at import time, so set the constants too
    datasets.config.HF_HUB_OFFLINE = True
