"""grpo_cli/learner/host_memory.py: a CPU learner's freed activations keep their pages (glibc's malloc tuned)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from grpo_cli.learner.host_memory import keep_freed_memory

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="tunes glibc's malloc only")

# A step as a learner makes one: three 24 MiB activations alive together, written, then freed.
# Prints the page faults of one step once two warm-up steps have run.
PROBE = """
import ctypes, resource, sys
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
if sys.argv[1] == "keep":
    from grpo_cli.learner.host_memory import keep_freed_memory
    assert keep_freed_memory()
N = int(sys.argv[2]) << 20
def step():
    blocks = [libc.malloc(N) for _ in range(3)]
    for b in blocks:
        ctypes.memset(b, 1, N)
    for b in blocks:
        libc.free(b)
step(); step()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) // 3)
"""


def _faults_per_step(mode: str, mib: int = 24) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode, str(mib)], capture_output=True, text=True, check=True)
    return int(out.stdout)


def test_freed_activations_keep_their_pages_from_step_to_step():
    pages = 3 * (24 << 20) // 4096
    # glibc's default gives the freed 72 MiB back to the kernel: every step faults every page in again.
    assert _faults_per_step("default") > 0.9 * pages
    assert _faults_per_step("keep") < 0.01 * pages


def test_blocks_above_the_mmap_ceiling_keep_their_pages_too():
    # 3 x 160 MiB, like the logits chunks and [V, H] gradients of a 151,936-token vocabulary.
    pages = 3 * (160 << 20) // 4096
    assert _faults_per_step("default", 160) > 0.9 * pages
    assert _faults_per_step("keep", 160) < 0.01 * pages


def test_it_is_idempotent():
    assert keep_freed_memory() and keep_freed_memory()
