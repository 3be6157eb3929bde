"""Keep freed host memory in the process, so a CPU learner's activations do not page-fault every step.

glibc's malloc hands large freed blocks back to the kernel: a block above its mmap threshold is
unmapped on free, and the heap's top is trimmed past M_TRIM_THRESHOLD. A learner step allocates
and frees the same activations (tens of MiB on bench-cpu) every micro-batch, so their pages are
faulted in afresh each time: on the bench host that was ~22k page faults and ~0.2 s of kernel time
per learner step. Raising the mmap threshold to glibc's ceiling (32 MiB on 64-bit) and never
trimming keeps those pages mapped. Blocks above that ceiling were still mmap'd afresh and unmapped
on free: at a real vocabulary (151,936) the logits chunks, lm_head's and the embedding's [V, H]
gradients are 150-550 MiB each, 0.55-0.64 M page faults per 0.5B learner step; so mmap is not used
at all (M_MMAP_MAX = 0) and they come from the kept heap too; Intel's PyTorch CPU guide gets the same from jemalloc/tcmalloc,
which are not installable from PyPI. Only glibc is tuned (mallopt); other C libraries are left as
they are. Process-wide, so it helps the in-process vLLM engine too; CUDA memory is not affected.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -2, -3, -4  # glibc malloc.h
MMAP_THRESHOLD = 32 << 20  # glibc's maximum on 64-bit (HEAP_MAX_SIZE / 2), for arenas that can only mmap
MMAP_MAX = 0  # no block is mmap'd (where the heap can grow): large blocks are reused like small ones
TOP_PAD = 64 << 20  # grow the heap in 64 MiB steps (address space; pages are touched only when used)
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: keep up to 2 GiB of free heap top, i.e. never trim

_done = False


def keep_freed_memory() -> bool:
    """Tune glibc's malloc as the module says (once per process). False where the C library is
    not glibc, or a setting was refused, and nothing changed."""
    global _done
    if _done:
        return True
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    _done = all(libc.mallopt(key, value) == 1 for key, value in (
        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_MMAP_MAX, MMAP_MAX), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        (_M_TOP_PAD, TOP_PAD)))
    return _done
