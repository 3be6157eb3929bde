"""The program that PythonTool (python_sandbox.py) runs in its child process. It is started as a
script, `python -I -S -B -u python_sandbox_child.py WORK CODE_FILE CPU_S MEMORY PROCESSES FILE_SIZE`,
and is never imported by grpo-cli. Before the model's code runs it

1. reads the code from CODE_FILE (outside WORK: the code cannot read that file or the limits),
2. sets its resource limits: CPU seconds, address space, processes, file size, no core files,
3. starts a thread that ends the process when its parent (the trainer) is gone,
4. deletes the few os/signal functions that act on other processes or make device files and for
   which Python raises no audit event (pidfd_open, setpriority, sched_setaffinity, mknod, chroot),
   and replaces _posixsubprocess.fork_exec (subprocess's process starter, also unaudited), so
   that `import subprocess` (asyncio does) still works while starting a process does not,
5. installs an audit hook (sys.addaudithook; a hook cannot be removed) that refuses, with a
   PermissionError that names what it refused: starting processes, signalling other processes,
   sockets other than local socket pairs, imports of modules that get around audit events
   (ctypes, sqlite3, ...; an ImportError), native code loaded from WORK, ctypes calls into
   native code, changing its limits, writing outside WORK, reading outside WORK and the
   interpreter's library, and opening a directory outside WORK.

Then it runs the code as __main__, with tracebacks that show the code's own lines.

The hook and its helpers take everything they use as default arguments, bound here before any
model code runs, and read no global name: code that rebinds builtins, os.path or this module's
globals cannot change what they decide (tests/test_python_sandbox.py checks their bytecode).
"""

import _signal
import _stat
import _thread
import os
import posix
import resource
import signal
import socket
import sys
import time

# Refused outright: audit event -> why, as the model reads it: "sandbox: EVENT is not allowed (WHY)".
_REFUSED = (
    ("os.fork", "no new processes"),
    ("os.forkpty", "no new processes"),
    ("os.exec", "no new programs"),
    ("os.posix_spawn", "no new processes"),
    ("os.spawn", "no new processes"),
    ("os.system", "no new processes"),
    ("subprocess.Popen", "no new processes"),
    ("os.killpg", "no signals to other processes"),
    ("os.symlink", "no links"),
    ("os.link", "no links"),
    ("resource.setrlimit", "its limits are fixed"),
    ("cpython.PyInterpreterState_New", "no subinterpreters"),
    ("webbrowser.open", "no browser"),
    ("socket.bind", "no network access"),
    ("socket.connect", "no network access"),
    ("socket.sendto", "no network access"),
    ("socket.sendmsg", "no network access"),
    ("socket.getaddrinfo", "no network access"),
    ("socket.getnameinfo", "no network access"),
    ("socket.gethostbyname", "no network access"),
    ("socket.gethostbyaddr", "no network access"),
    ("socket.getservbyname", "no network access"),
    ("socket.getservbyport", "no network access"),
    ("socket.sethostname", "no network access"),
)
# Modules whose import is refused (the top-level name): they run native code around the audit
# events (cffi), open files or shared memory from C (sqlite3, dbm, readline, _posixshmem,
# _multiprocessing), run another interpreter (Tcl, subinterpreters), read /etc/shadow (spwd) or
# poke the interpreter (_test*). os, posix, signal, _signal and _posixsubprocess are loaded
# already (importing them does not reach the hook): importing them again would undo step 4.
_NO_IMPORT = frozenset({
    "_ctypes_test", "cffi", "_cffi_backend", "_posixsubprocess", "_posixshmem",
    "_multiprocessing", "_sqlite3", "sqlite3", "_dbm", "_gdbm", "readline", "_tkinter", "spwd",
    "nis", "syslog", "_xxsubinterpreters", "_xxinterpchannels", "_testcapi", "_testinternalcapi",
    "_testbuffer", "_testmultiphase", "_testimportmultiple", "_testclinic", "_xxtestfuzz",
    "os", "posix", "signal", "_signal",
})
# ctypes: its import is refused with the standard library only (-S); with site-packages it loads
# (sympy needs it) but may not load a library or reach native code or memory: only these events.
_CTYPES = frozenset({"ctypes", "_ctypes"})
_CTYPES_OK = frozenset({"ctypes.create_string_buffer", "ctypes.create_unicode_buffer",
                        "ctypes.get_errno", "ctypes.set_errno", "ctypes.cdata/buffer"})
_READS = frozenset({"os.listdir", "os.scandir", "os.listxattr", "os.getxattr"})
_WRITES = frozenset({"os.mkdir", "os.remove", "os.rmdir", "os.chmod", "os.chown", "os.utime",
                     "os.truncate", "os.chflags", "os.setxattr", "os.removexattr"})
_WATCHED = frozenset({e for e, _ in _REFUSED} | _READS | _WRITES | {
    "open", "os.rename", "os.chdir", "os.kill", "socket.__new__", "import", "resource.prlimit",
    "object.__setattr__", "object.__delattr__"})
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random")
# Functions that act on other processes or make device files, with no audit event.
_UNAUDITED = ("mkfifo", "mknod", "chroot", "pidfd_open", "setpriority", "sched_setaffinity",
              "sched_setscheduler", "sched_setparam", "setns", "unshare")


def _resolve(path, _lstat=posix.lstat, _readlink=posix.readlink, _islink=_stat.S_ISLNK,
             _OSError=OSError, _PermissionError=PermissionError):
    """Absolute `path` with '..' and symbolic links resolved as the kernel resolves them; parts that
    do not exist are kept as written."""
    todo = path.split("/")
    todo.reverse()
    done, links = "", 0
    while todo:
        name = todo.pop()
        if name == "" or name == ".":
            continue
        if name == "..":
            done = done.rpartition("/")[0]
            continue
        here = done + "/" + name
        try:
            mode = _lstat(here).st_mode
        except _OSError:
            done = here
            continue
        if not _islink(mode):
            done = here
            continue
        links += 1
        if links > 40:
            raise _PermissionError("sandbox: too many symbolic links in " + path)
        target = _readlink(here)
        if target.startswith("/"):
            done = ""
        more = target.split("/")
        more.reverse()
        todo.extend(more)
    return done or "/"


def _path_refusal(path, write, no_dir, work, readable, deny_site, _resolve=_resolve,
                  _isinstance=isinstance, _type=type, _hasattr=hasattr, _memoryview=memoryview,
                  _fspath=posix.fspath, _stat_of=posix.stat, _isdir=_stat.S_ISDIR, _OSError=OSError,
                  _TypeError=TypeError, _join="".join, _bjoin=b"".join, _decode=bytes.decode,
                  _repr=repr, _str=str, _bytes=bytes, _devices=_DEVICES):
    """None if the program may read (write=False) or write `path`; else why not, one line.
    no_dir: also refuse a directory outside WORK (os.open would give a directory fd, which would
    make relative paths with dir_fd= land outside WORK)."""
    if path is None:
        return None
    if not _isinstance(path, (_str, _bytes)):
        if _hasattr(_type(path), "__index__"):
            return None  # an open file descriptor
        try:
            _memoryview(path)
            return "a path given as a buffer is not allowed (use str)"
        except _TypeError:
            pass
        try:
            path = _fspath(path)
        except _TypeError:
            return None  # not a path: the call fails by itself
    # An exact str copy, so that a str subclass cannot answer the checks below differently.
    path = _decode(_bjoin((path,)), "utf-8", "surrogateescape") if _isinstance(path, _bytes) else _join((path,))
    if not path.startswith("/"):
        # Relative to its working directory or to a directory fd, both inside WORK (see os.chdir
        # and no_dir): without '..' it stays inside.
        if ".." in path.split("/"):
            return "a relative path with '..' is not allowed (" + _repr(path) + ")"
        return None
    real = _resolve(path)
    if (real + "/").startswith(work):
        return None
    if write:
        if real == "/dev/null":
            return None
        return "writing " + _repr(path) + " is not allowed (only its working directory is writable)"
    if no_dir:
        try:
            if _isdir(_stat_of(real).st_mode):
                return "opening the directory " + _repr(path) + " is not allowed (only in its working directory)"
        except _OSError:
            pass
    if real in _devices:
        return None
    if (real + "/").startswith(readable) and not (
            deny_site and ("/site-packages/" in real or "/dist-packages/" in real)):
        return None
    return ("reading " + _repr(path) + " is not allowed"
            " (only its working directory and the interpreter's library are readable)")


def _audit(event, args, _watched=_WATCHED, _reads=_READS, _writes=_WRITES, _refused=_REFUSED,
           _no_import=_NO_IMPORT, _ctypes=_CTYPES, _ctypes_ok=_CTYPES_OK, _write_flags=_WRITE_FLAGS,
           _af_unix=socket.AF_UNIX, _refusal=_path_refusal, _resolve=_resolve, _isinstance=isinstance,
           _repr=repr, _str=str, _PermissionError=PermissionError, _ImportError=ImportError, _cfg=None):
    """The audit hook: raises PermissionError("sandbox: ... is not allowed (...)") for what the
    sandbox refuses (ImportError for a refused import). `_cfg` is (WORK + "/", the readable roots
    each + "/", whether site-packages are refused, its own pid, the functions whose code and
    defaults must not change), bound by main()."""
    if event not in _watched:
        if event.startswith("ctypes.") and event not in _ctypes_ok and not (
                event == "ctypes.dlopen" and args[0] is None):  # ctypes' import opens the program
            raise _PermissionError("sandbox: " + event + " is not allowed (no native code)")
        return
    work, readable, deny_site, pid, guards = _cfg
    why = None
    if event == "open":
        path, mode, flags = args
        if mode is None:  # os.open
            why = _refusal(path, (flags & _write_flags) != 0, True, work, readable, deny_site)
        else:
            write = "w" in mode or "a" in mode or "x" in mode or "+" in mode
            why = _refusal(path, write, False, work, readable, deny_site)
    elif event in _reads:
        why = _refusal(args[0], False, False, work, readable, deny_site)
    elif event in _writes:
        why = _refusal(args[0], True, False, work, readable, deny_site)
    elif event == "os.rename":
        why = _refusal(args[0], True, False, work, readable, deny_site) or _refusal(
            args[1], True, False, work, readable, deny_site)
    elif event == "os.chdir":
        if _refusal(args[0], True, False, work, readable, deny_site) is not None:
            why = "changing directory to " + _repr(args[0]) + " is not allowed (only inside its working directory)"
    elif event == "os.kill":
        if args[0] != pid:
            why = "os.kill is not allowed (no signals to other processes)"
    elif event == "socket.__new__":
        if args[1] != _af_unix:
            why = "socket is not allowed (no network access; local socket pairs only)"
    elif event == "import":
        top = args[0].partition(".")[0]
        if top in _no_import or (deny_site and top in _ctypes):
            # ImportError, so that packages with an optional native part (numpy's ctypes) load.
            raise _ImportError("sandbox: importing " + args[0] + " is not allowed")
        file = args[1]  # set when an extension module (native code) is loaded
        if file is not None and (not _isinstance(file, _str) or not file.startswith("/") or _refusal(
                file, False, False, work, readable, deny_site) is not None or (
                _resolve(file) + "/").startswith(work)):
            raise _ImportError("sandbox: loading native code from " + _repr(file) + " is not allowed")
    elif event == "resource.prlimit":
        if args[2] is not None:
            why = "resource.prlimit is not allowed (its limits are fixed)"
    elif event == "object.__setattr__" or event == "object.__delattr__":
        for func in guards:
            if args[0] is func:
                why = "changing the sandbox's " + args[1] + " is not allowed"
    else:
        for name, reason in _refused:
            if name == event:
                why = event + " is not allowed (" + reason + ")"
    if why is not None:
        raise _PermissionError("sandbox: " + why)


def _exit_with_parent(parent, _getppid=os.getppid, _sleep=time.sleep, _exit=os._exit):
    """Ends the process once its parent is gone (a killed trainer), so that none outlives it."""
    while True:
        _sleep(0.5)
        if _getppid() != parent:
            _exit(1)


def _tasks_of(uid: int) -> int:
    """Processes and threads that `uid` runs: what the kernel counts against RLIMIT_NPROC."""
    count = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat("/proc/" + name).st_uid == uid:
                    count += len(os.listdir("/proc/" + name + "/task"))
            except OSError:
                pass
    return count


def _set_limits(cpu_s: int, memory: int, processes: int, file_size: int) -> None:
    """RLIMIT_CPU (SIGXCPU, then SIGKILL a second later), RLIMIT_AS, RLIMIT_NPROC, RLIMIT_FSIZE,
    no core files. RLIMIT_NPROC counts all of the user's tasks, so it is set above what the user
    runs now; the kernel does not apply it to root at all."""
    if os.getuid() != 0:
        processes += _tasks_of(os.getuid())
    for which, soft, hard in ((resource.RLIMIT_CPU, cpu_s, cpu_s + 1), (resource.RLIMIT_AS, memory, memory),
                              (resource.RLIMIT_NPROC, processes, processes),
                              (resource.RLIMIT_FSIZE, file_size, file_size), (resource.RLIMIT_CORE, 0, 0)):
        current = resource.getrlimit(which)[1]
        if current != resource.RLIM_INFINITY:
            hard = min(hard, current)
        resource.setrlimit(which, (min(soft, hard), hard))


def _no_fork_exec(*args, _PermissionError=PermissionError):
    """Stands in for _posixsubprocess.fork_exec (whatever the code rebinds, it starts nothing)."""
    raise _PermissionError("sandbox: _posixsubprocess.fork_exec is not allowed (no new processes)")


def _remove_unaudited() -> None:
    """Deletes _UNAUDITED from os and posix and pidfd_send_signal from signal (everywhere they are
    referenced: os.supports_* hold functions too); replaces _posixsubprocess.fork_exec."""
    import _posixsubprocess

    _posixsubprocess.fork_exec = _no_fork_exec
    groups = (os.supports_dir_fd, os.supports_fd, os.supports_follow_symlinks, os.supports_effective_ids)
    for module, names in ((posix, _UNAUDITED), (os, _UNAUDITED),
                          (_signal, ("pidfd_send_signal",)), (signal, ("pidfd_send_signal",))):
        for name in names:
            func = module.__dict__.pop(name, None)
            for group in groups:
                group.discard(func)
            if name in getattr(module, "__all__", ()):
                module.__all__.remove(name)


def _readable_roots(work: str) -> tuple[str, ...]:
    """WORK and the interpreter's import path inside its installation (stdlib, lib-dynload, and
    site-packages when -S is off; not entries that .pth files add elsewhere, e.g. editable
    installs), and the time zone data; each with a trailing '/'."""
    prefixes = tuple({os.path.realpath(p) + "/" for p in (sys.prefix, sys.base_prefix, sys.exec_prefix,
                                                          sys.base_exec_prefix)})
    roots = {work} | {os.path.realpath(p) for p in sys.path
                      if p and (os.path.realpath(p) + "/").startswith(prefixes)}
    roots |= {p for p in ("/usr/share/zoneinfo",) if os.path.isdir(p)}
    return tuple(sorted(r + "/" for r in roots))


def _print_exception(exc: BaseException, tb, source: str) -> int:
    """Prints the traceback as python does, with the code's own lines and without this file's
    frames (the hook's, which raised a PermissionError); returns exit code 1."""
    exc.__traceback__ = tb
    try:
        import linecache
        import traceback

        linecache.cache["<code>"] = (len(source), None, source.splitlines(True), "<code>")
        report = traceback.TracebackException(type(exc), exc, tb)
        chained = report
        while chained is not None:
            chained.stack = traceback.StackSummary.from_list(
                [f for f in chained.stack if f.filename != __file__])
            chained = chained.__cause__ or chained.__context__
        sys.stderr.write("".join(report.format()))
    except BaseException:  # out of memory, or the code broke the traceback module
        sys.__excepthook__(type(exc), exc, tb)
    return 1


def _run(source: str, work: str) -> int:
    """Runs `source` as __main__ (a fresh module; WORK first on sys.path); returns its exit code."""
    import builtins

    sys.argv = ["<code>"]
    sys.path.insert(0, work)
    main = type(sys)("__main__")
    sys.modules["__main__"] = main
    if not hasattr(builtins, "exit"):  # site (off with -S) adds them; models call exit()
        builtins.exit = builtins.quit = sys.exit
    try:
        code = compile(source, "<code>", "exec")
    except (SyntaxError, ValueError) as exc:  # ValueError: a null byte in the source
        return _print_exception(exc, None, source)
    try:
        exec(code, main.__dict__)
    except SystemExit:
        raise
    except BaseException as exc:
        return _print_exception(exc, exc.__traceback__.tb_next, source)
    return 0


def main() -> None:
    work, code_file = os.path.realpath(sys.argv[1]), sys.argv[2]
    cpu_s, memory, processes, file_size = (int(a) for a in sys.argv[3:7])
    with open(code_file, encoding="utf-8", errors="replace") as f:
        source = f.read()
    _set_limits(cpu_s, memory, processes, file_size)
    _thread.start_new_thread(_exit_with_parent, (os.getppid(),))
    _remove_unaudited()
    _audit.__defaults__ = _audit.__defaults__[:-1] + (
        (work + "/", _readable_roots(work), bool(sys.flags.no_site), os.getpid(),
         (_audit, _path_refusal, _resolve, _exit_with_parent, _no_fork_exec)),)
    sys.addaudithook(_audit)
    raise SystemExit(_run(source, work))


if __name__ == "__main__":
    main()
