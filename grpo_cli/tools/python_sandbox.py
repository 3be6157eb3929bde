"""The built-in `python` tool: runs model-written code in a separate, limited process.

Each call starts a fresh interpreter (`python -I -S`: no user site, no PYTHONPATH, standard
library only) in a new empty directory, in its own session and process group, with a scrubbed
environment (PATH, HOME and TMPDIR = that directory, LANG; no token or key of the trainer's).
python_sandbox_child.py sets the limits and an audit hook before the code runs.

What it contains (each is tested in tests/test_python_sandbox.py):
- time: wall-clock timeout (the whole process group is killed) and a CPU-seconds limit;
- memory (address space), file size, processes (fork, exec, subprocess and os.system refused;
  RLIMIT_NPROC on top for non-root users), output size (the parent reads at most a few KB);
- files: it writes only in its directory, reads only there and in the standard library (not
  ~/.netrc, /etc/passwd, /proc/<pid>/environ, the run directory); the directory is removed after;
- network: no sockets other than local socket pairs, no name lookups;
- other processes: no signals to them (os.kill, killpg, pidfd), no renice or CPU pinning, no
  changing its own limits; stray processes are killed with the group when the call ends;
- native code: ctypes, cffi and C modules that bypass audit events cannot be imported.

What it does NOT protect against: it is not a container. The code shares the kernel, the users and
the machine with the trainer; a kernel exploit, a deliberate Python-level escape of the audit hook
(crafted bytecode or marshal data that corrupts memory, races against a path check with a custom
__fspath__), side channels (CPU time, cache) and the disk space files written within the time limit
are outside what it limits; as root, RLIMIT_NPROC is not enforced by the kernel (fork is still
refused by the hook). For stronger isolation, write a tool class with the same contract
(`name`, `__call__(code) -> str`, raising on failure) that runs the code in a container, gVisor,
firejail or nsjail, and use it instead.
"""

from __future__ import annotations

import math
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

_CHILD = str(Path(__file__).with_name("python_sandbox_child.py"))
_TAIL_BYTES = 4096  # of stderr, kept apart for its last line
_DRAIN_S = 1.0  # after the group is killed, to read what it wrote before


class ToolError(RuntimeError):
    """A tool call failed. The message is one line for the model; `output` is what the program
    printed (stdout, then stderr, truncated like a successful call's output)."""

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output


@dataclass(frozen=True, kw_only=True)
class PythonTool:
    """Runs model-written Python in a sandboxed child process (see the module docstring). A frozen
    dataclass: picklable, and safe to call from several threads at once (each call has its own
    process and directory)."""

    name: ClassVar[str] = "python"

    wall_s: float = 5.0
    """Wall-clock seconds a call may take; then the program and every process it started are killed."""
    cpu_s: float = 2.0
    """CPU seconds (RLIMIT_CPU, rounded up to whole seconds): a busy loop is killed once it used them."""
    memory_mb: int = 512
    """Address space in MB (RLIMIT_AS): an allocation past it raises MemoryError in the program."""
    max_output_chars: int = 2000
    """Characters of output returned (stdout, then stderr); longer output is cut, with a note saying so."""
    max_processes: int = 64
    """Processes and threads the program may have (RLIMIT_NPROC, counted above what the user already
    runs). fork/exec/subprocess are refused anyway; this stops a fork bomb that gets past that and a
    thread bomb. The kernel does not enforce it for root."""
    max_file_mb: int = 16
    """Largest file the program may write, in MB (RLIMIT_FSIZE); a bigger write fails."""
    python: str | None = None
    """The interpreter that runs the code; None: the one running grpo-cli (sys.executable)."""
    site_packages: bool = False
    """Let the code import the interpreter's installed packages (read-only: numpy, sympy, ...), not
    only the standard library. Each package with native code widens what the code can reach."""

    def __post_init__(self) -> None:
        for key in ("wall_s", "cpu_s", "memory_mb", "max_output_chars", "max_processes", "max_file_mb"):
            if not getattr(self, key) > 0:
                raise ValueError(f"PythonTool: {key} must be > 0, got {getattr(self, key)!r}")
        if self.python is not None and not os.access(self.python, os.X_OK):
            raise ValueError(f"PythonTool: python={self.python!r} is not an executable file")

    def __call__(self, code: str) -> str:
        """Run a Python 3 program in a sandbox and return what it prints.

        Each call starts a new interpreter in an empty working directory: nothing is kept between
        calls, so print every value you need. Standard-library modules can be imported; there is no
        network access, only the working directory is writable, and long-running programs are
        stopped.

        Args:
            code: The complete Python program to run; use print() to show results.

        Returns:
            What the program printed (stdout, then stderr).
        """
        with tempfile.TemporaryDirectory(prefix="grpo-python-", ignore_cleanup_errors=True) as tmp:
            work, code_file = os.path.join(tmp, "work"), os.path.join(tmp, "code.py")
            os.mkdir(work)
            Path(code_file).write_text(code, encoding="utf-8", errors="replace")
            proc = subprocess.Popen(self._command(work, code_file), cwd=work, env=_clean_env(work),
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True)
            run = _supervise(proc, self.wall_s, keep=4 * self.max_output_chars + 4)
        output = _output(run, self.max_output_chars)
        problem = self._problem(run)
        if problem is not None:
            raise ToolError(problem, output)
        return output

    def _cpu_limit(self) -> int:
        return max(1, math.ceil(self.cpu_s))

    def _command(self, work: str, code_file: str) -> list[str]:
        mb = 2**20
        limits = (self._cpu_limit(), self.memory_mb * mb, self.max_processes, self.max_file_mb * mb)
        return [self.python or sys.executable, "-I", "-B", "-u", *(() if self.site_packages else ("-S",)),
                _CHILD, work, code_file, *map(str, limits)]

    def _problem(self, run: _Run) -> str | None:
        """What went wrong, in one line for the model; None when the program ran and exited 0."""
        last = run.err.tail.decode("utf-8", "replace").strip().rpartition("\n")[2].strip()[:300]
        code = run.returncode
        if run.timed_out:
            return f"timed out after {self.wall_s} s (wall)"
        if code == -signal.SIGXCPU or (code == -signal.SIGKILL and run.cpu_s >= self._cpu_limit()):
            return f"exceeded the CPU limit ({self._cpu_limit()} s)"
        if last.startswith("MemoryError") or "Cannot allocate memory" in last:
            return f"ran out of memory ({self.memory_mb} MB limit)"
        if "File too large" in last:
            return f"wrote a file past the size limit ({self.max_file_mb} MB)"
        if code is None:
            return "ended with an unknown exit status"
        if code < 0:
            return f"was killed by {signal.Signals(-code).name}"
        if code:
            return f"exited with code {code}" + (f": {last}" if last else "")
        return None


def _clean_env(home: str) -> dict[str, str]:
    """The child's whole environment: nothing of the trainer's (tokens, keys, paths) gets in."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8"}


class _Capture:
    """The first `keep` bytes of a stream, its last _TAIL_BYTES, and how many bytes it had."""

    def __init__(self, keep: int) -> None:
        self.keep, self.head, self.tail, self.size = keep, bytearray(), b"", 0

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if len(self.head) < self.keep:
            self.head += chunk[: self.keep - len(self.head)]
        self.tail = (self.tail + chunk)[-_TAIL_BYTES:]


@dataclass
class _Run:
    """How a call went: its captured output, whether the wall clock ran out, exit code, CPU time."""

    out: _Capture
    err: _Capture
    timed_out: bool
    returncode: int | None
    cpu_s: float


def _output(run: _Run, limit: int) -> str:
    """stdout then stderr, cut to `limit` characters with a note when there was more."""
    text = (bytes(run.out.head) + bytes(run.err.head)).decode("utf-8", "replace")
    more = run.out.size > len(run.out.head) or run.err.size > len(run.err.head)
    if len(text) > limit or more:
        return text[:limit] + f"\n[output truncated to {limit} characters]"
    return text


def _supervise(proc: subprocess.Popen, wall_s: float, keep: int) -> _Run:
    """Reads the program's output until it ends or `wall_s` runs out, then kills its process group
    (strays included) and reaps it. The group is killed before the leader is reaped, so its id
    cannot have been reused by then."""
    out, err = _Capture(keep), _Capture(keep)
    deadline = time.monotonic() + wall_s
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ, out)
        selector.register(proc.stderr, selectors.EVENT_READ, err)
        try:
            timed_out = not (_read(selector, proc.pid, deadline) and _wait_exit(proc.pid, deadline))
            _kill_group(proc.pid)
            _read(selector, proc.pid, time.monotonic() + _DRAIN_S)
            returncode, cpu_s = _reap(proc)
        finally:
            if proc.returncode is None:  # interrupted (KeyboardInterrupt, ...): leave nothing running
                _kill_group(proc.pid)
                _reap(proc)
            proc.stdout.close()
            proc.stderr.close()
    return _Run(out, err, timed_out, returncode, cpu_s)


def _read(selector: selectors.BaseSelector, pid: int, deadline: float) -> bool:
    """Reads until both pipes close, or the leader has exited while strays hold them (True), or
    the deadline passes (False)."""
    while selector.get_map():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        ready = selector.select(min(remaining, 0.25))
        for key, _ in ready:
            chunk = os.read(key.fd, 65536)
            if chunk:
                key.data.add(chunk)
            else:
                selector.unregister(key.fileobj)
        if not ready and _exited(pid):
            return True
    return True


def _exited(pid: int) -> bool:
    """Whether the leader has exited, without reaping it (WNOWAIT)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _wait_exit(pid: int, deadline: float) -> bool:
    """Waits for the leader to exit (its pipes are closed already); False if the deadline passes."""
    delay = 0.001
    while not _exited(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(2 * delay, 0.05)
    return True


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _reap(proc: subprocess.Popen) -> tuple[int | None, float]:
    """Reaps the leader: its exit code (-N for signal N; None if something else reaped it) and the
    CPU seconds it used."""
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except ChildProcessError:
        proc.returncode = -1
        return None, 0.0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_utime + usage.ru_stime
