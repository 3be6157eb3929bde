"""The `python` tool's sandbox, driven from outside with real processes: each test runs what a
model might try and checks that it is contained, reported as a ToolError with a clear one-line
message, and that no process, directory or changed limit is left behind (the autouse fixture)."""

from __future__ import annotations

import dis
import os
import pickle
import resource
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from grpo_cli.tools import python_sandbox_child as child
from grpo_cli.tools.python_sandbox import PythonTool, ToolError

FAST = {"wall_s": 2, "cpu_s": 1, "memory_mb": 256}


@pytest.fixture
def tool() -> PythonTool:
    return PythonTool(**FAST)


def _pids_with_cwd_under(root: Path) -> list[int]:
    """Processes whose working directory is under `root` (a sandbox's, removed or not)."""
    root_s, found = os.path.realpath(root), []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/cwd").startswith(root_s):
                    found.append(int(entry))
            except OSError:
                pass
    return found


def _children() -> list[int]:
    """This process's children, zombies included."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == os.getpid():
                found.append(int(entry))
    return found


@pytest.fixture(autouse=True)
def sandboxes(tmp_path, monkeypatch):
    """Sandbox directories go under this test's tmp_path (tempfile.tempdir), so that a process
    left behind is found by its working directory. After the test: no such process, no child of
    this process that the test started, no sandbox directory, this process's limits unchanged."""
    root = tmp_path / "sandboxes"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    limits = {r: resource.getrlimit(r) for r in (resource.RLIMIT_CPU, resource.RLIMIT_AS, resource.RLIMIT_NPROC)}
    before = set(_children())  # the suite's own (an engine's workers, a W&B service) are not the sandbox's
    yield root
    assert _pids_with_cwd_under(root) == []
    assert sorted(set(_children()) - before) == []
    assert list(root.iterdir()) == []
    assert {r: resource.getrlimit(r) for r in limits} == limits


def _refused(tool: PythonTool, code: str, match: str = r"is not allowed") -> ToolError:
    with pytest.raises(ToolError, match=match) as caught:
        tool(code)
    assert "\n" not in str(caught.value)
    return caught.value


def test_the_schema_has_a_string_parameter_code_and_the_name_is_python():
    from transformers.utils import get_json_schema

    tool = PythonTool()
    function = get_json_schema(tool.__call__)["function"]
    assert function["parameters"]["properties"]["code"]["type"] == "string"
    assert function["parameters"]["required"] == ["code"]
    assert function["description"].startswith("Run a Python 3 program in a sandbox")
    assert tool.name == "python"


def test_a_program_prints_and_the_tool_returns_stdout_then_stderr(tool):
    assert tool("print(6 * 7)") == "42\n"
    assert tool("import sys\nprint('out')\nprint('err', file=sys.stderr)") == "out\nerr\n"


def test_the_standard_library_works_and_the_working_directory_is_writable(tool):
    code = """
import asyncio, collections, fractions, json, math, os, pathlib, re, shutil, statistics, tempfile, threading

async def seven():
    return 7

pathlib.Path("out.txt").write_text("kept")
os.makedirs("a/b")
shutil.copy("out.txt", "a/b/copy.txt")
fd, name = tempfile.mkstemp()
os.close(fd)
threads = [threading.Thread(target=math.factorial, args=(50,)) for _ in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
with open("helper.py", "w") as f:
    f.write("VALUE = 3\\n")
import helper
shutil.rmtree("a")
print(open("out.txt").read(), asyncio.run(seven()), helper.VALUE, fractions.Fraction(1, 3) * 3,
      statistics.mean([1, 2, 3]), json.dumps(sorted(collections.Counter("abca").items())),
      os.path.dirname(name) == os.getcwd(), re.sub("a", "b", "aa"), os.path.exists("a"))
"""
    assert tool(code) == 'kept 7 3 1 2 [["a", 2], ["b", 1], ["c", 1]] True bb False\n'


def test_long_output_is_truncated_with_a_note():
    out = PythonTool(**FAST, max_output_chars=100)("print('x' * 100_000)")
    assert out == "x" * 100 + "\n[output truncated to 100 characters]"


def test_a_syntax_error_is_reported(tool):
    error = _refused(tool, "def f(:\n    pass", r"^exited with code 1: SyntaxError: ")
    assert '"<code>", line 1' in error.output


def test_an_exception_in_the_code_is_reported_with_its_line(tool):
    error = _refused(tool, "x = [1]\nprint(x[5])", r"^exited with code 1: IndexError: list index out of range$")
    assert 'File "<code>", line 2' in error.output and "print(x[5])" in error.output
    assert "python_sandbox_child" not in error.output


def test_a_busy_loop_is_killed_at_the_cpu_limit():
    start = time.monotonic()
    _refused(PythonTool(**{**FAST, "wall_s": 20}), "while True:\n    pass", r"^exceeded the CPU limit \(1 s\)$")
    assert time.monotonic() - start < 10


def test_a_sleep_is_killed_at_the_wall_limit():
    start = time.monotonic()
    _refused(PythonTool(**{**FAST, "wall_s": 1}), "import time\nprint('started')\ntime.sleep(100)",
             r"^timed out after 1 s \(wall\)$")
    assert time.monotonic() - start < 3


@pytest.mark.parametrize("code", [
    "import os\nwhile True:\n    os.fork()",
    "import subprocess\nsubprocess.run(['true'])",
    "import os\nos.system('true')",
    "import os\nos.popen('true').read()",
    "import os\nos.execv('/bin/true', ['true'])",
    "import os\nos.posix_spawn('/bin/true', ['true'], {})",
    "import pty\npty.fork()",
    "import multiprocessing\nmultiprocessing.Process(target=print).start()",
    "import _posixsubprocess\n_posixsubprocess.fork_exec()",
    "import importlib, sys\ndel sys.modules['_posixsubprocess']\nimportlib.import_module('_posixsubprocess')",
])
def test_starting_processes_is_refused_and_the_machine_still_can(tool, code):
    _refused(tool, code)
    assert subprocess.run(["true"]).returncode == 0


def test_a_10_gb_allocation_runs_out_of_memory(tool):
    _refused(tool, "b = bytearray(10 * 2**30)", r"^ran out of memory \(256 MB limit\)$")


def test_a_file_past_the_size_limit_fails():
    _refused(PythonTool(**FAST, max_file_mb=1), "open('big', 'wb').write(b'x' * 2**21)",
             r"^wrote a file past the size limit \(1 MB\)$")


@pytest.mark.parametrize("write", [
    "open({p!r}, 'w').write('x')",
    "import os\nos.open({p!r}, os.O_CREAT | os.O_WRONLY)",
    "import pathlib\npathlib.Path({p!r}).write_text('x')",
    "import os\nos.mkdir({p!r})",
    "import os\nopen('inside', 'w').close()\nos.rename('inside', {p!r})",
    "import shutil\nopen('inside', 'w').close()\nshutil.copy('inside', {p!r})",
    "import os\nos.mkfifo({p!r})",
])
@pytest.mark.parametrize("where", ["run_dir", "tmp", "relative"])
def test_writing_outside_its_directory_is_refused(tool, tmp_path, write, where):
    target = {"run_dir": tmp_path / "escaped", "tmp": Path(f"/tmp/grpo-sandbox-escape-{uuid.uuid4().hex}"),
              "relative": tmp_path / "sandboxes" / "escaped"}[where]
    path = "../../escaped" if where == "relative" else str(target)
    try:
        _refused(tool, write.format(p=path), r"is not allowed|has no attribute 'mkfifo'")
        assert not os.path.lexists(target)
    finally:
        if os.path.isdir(target):
            os.rmdir(target)
        elif os.path.lexists(target):
            os.unlink(target)


def test_reading_secrets_outside_its_directory_is_refused(tool, tmp_path, monkeypatch):
    home, run = tmp_path / "home", tmp_path / "run"
    home.mkdir()
    run.mkdir()
    (home / ".netrc").write_text("machine huggingface.co login me password netrc-secret-4711\n")
    (run / "config.yaml").write_text("api_key: run-secret-0815\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("HF_TOKEN", "hf_secret123")
    for code in (f"print(open({str(home / '.netrc')!r}).read())",
                 f"print(open({str(run / 'config.yaml')!r}).read())",
                 f"import os\nprint(os.listdir({str(run)!r}))",
                 "import os\nprint(open(f'/proc/{os.getppid()}/environ').read())",
                 "print(open('/proc/self/environ').read())",
                 "print(open('/etc/passwd').read())",
                 f"import os\nos.chdir({str(run)!r})\nprint(open('config.yaml').read())",
                 f"import os\nfd = os.open({str(run)!r}, os.O_RDONLY)\nprint(open(os.open('config.yaml', os.O_RDONLY, dir_fd=fd)).read())"):
        error = _refused(tool, code)
        for secret in ("netrc-secret-4711", "run-secret-0815", "hf_secret123"):
            assert secret not in str(error) + error.output
    # glob swallows the PermissionError: it finds nothing.
    assert tool(f"import pathlib\nprint(list(pathlib.Path({str(run)!r}).glob('*')))") == "[]\n"
    # HOME is the sandbox's own directory, so ~ finds nothing.
    error = _refused(tool, "import os\nprint(open(os.path.expanduser('~/.netrc')).read())", r"FileNotFoundError")
    assert "netrc-secret-4711" not in error.output


def test_the_environment_holds_no_secrets(tool, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret123")
    monkeypatch.setenv("WANDB_API_KEY", "wandb-secret-456")
    out = tool("import os\nprint(sorted(os.environ.items()))")
    assert "HF_TOKEN" not in out and "WANDB_API_KEY" not in out
    assert "hf_secret123" not in out and "wandb-secret-456" not in out
    assert tool("import os\nprint(sorted(os.environ))") == "['HOME', 'LANG', 'PATH', 'TMPDIR']\n"


def test_network_access_is_refused(tool):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.2)
        port = listener.getsockname()[1]
        for code in (f"import socket\nsocket.socket().connect(('127.0.0.1', {port}))",
                     f"import socket\nsocket.create_connection(('127.0.0.1', {port}))",
                     f"import urllib.request\nurllib.request.urlopen('http://127.0.0.1:{port}/')",
                     "import socket\nsocket.socket(socket.AF_INET6, socket.SOCK_DGRAM)",
                     "import socket\nsocket.getaddrinfo('huggingface.co', 443)",
                     "import socket\na, b = socket.socketpair()\na.bind('\\0grpo-sandbox')"):
            _refused(tool, code)
            with pytest.raises(TimeoutError):
                listener.accept()


@pytest.mark.parametrize("code", [
    "import os\nos.kill(os.getppid(), 9)",
    "import os\nos.killpg(os.getpgid(os.getppid()), 9)",
    "import os\nos.killpg(0, 9)",
    "import os\nos.kill(0, 9)",
    "import os, signal\nsignal.pidfd_send_signal(os.pidfd_open(os.getppid()), 9)",
    "import os\nos.setpriority(os.PRIO_PROCESS, os.getppid(), 19)",
    "import os\nos.sched_setaffinity(os.getppid(), {0})",
    "import os, resource\nresource.prlimit(os.getppid(), resource.RLIMIT_CPU, (1, 1))",
    "import resource\nresource.setrlimit(resource.RLIMIT_CPU, (100, 100))",
])
def test_acting_on_other_processes_is_refused_and_the_trainer_survives(tool, code):
    nice, cpus = os.getpriority(os.PRIO_PROCESS, 0), os.sched_getaffinity(0)
    _refused(tool, code, r"is not allowed|has no attribute")
    assert os.getpriority(os.PRIO_PROCESS, 0) == nice and os.sched_getaffinity(0) == cpus


def test_ctypes_is_refused(tool):
    _refused(tool, "import ctypes", r"^exited with code 1: ImportError: sandbox: importing ctypes is not allowed$")
    _refused(tool, "import importlib\nimportlib.import_module('_ctypes')", r"importing _ctypes is not allowed")


def test_with_site_packages_ctypes_loads_but_reaches_no_native_code():
    tool = PythonTool(**FAST, site_packages=True)
    assert tool("import ctypes\nprint(ctypes.sizeof(ctypes.c_int))") == "4\n"
    _refused(tool, "import ctypes\nctypes.CDLL(None).system(b'true')", r"ctypes.dlsym is not allowed")
    _refused(tool, "import ctypes\nctypes.CDLL('libc.so.6')", r"ctypes.dlopen is not allowed")
    _refused(tool, "import ctypes\nctypes.c_long.from_address(id(1))", r"ctypes.cdata is not allowed")


def test_native_code_written_to_its_directory_is_not_loaded(tool):
    import _json

    ext = Path(_json.__file__)
    code = f"import shutil\nshutil.copy({str(ext)!r}, {ext.name.replace('_json', 'evil')!r})\nimport evil"
    _refused(tool, code, r"loading native code from .* is not allowed")


def test_rebinding_builtins_and_os_path_does_not_open_the_sandbox(tool):
    code = ("import builtins, os.path\nos.path.realpath = lambda p: '/tmp'\n"
            "builtins.isinstance = lambda *a: True\nbuiltins.repr = str\nprint(open('/etc/passwd').read())")
    _refused(tool, code, r"reading '/etc/passwd' is not allowed")


def test_the_audit_hook_reads_no_global_name():
    """Its names are all default arguments, bound before the model's code runs."""
    for func in (child._audit, child._path_refusal, child._resolve, child._exit_with_parent):
        assert [i.argval for i in dis.get_instructions(func) if i.opname in ("LOAD_GLOBAL", "LOAD_NAME", "LOAD_DEREF")] == []
        assert func.__closure__ is None and func.__kwdefaults__ is None


def test_calls_from_several_threads_at_once(tool):
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(tool, [f"print({i} * {i})" for i in range(8)]))
    assert outs == [f"{i * i}\n" for i in range(8)]


def test_the_tool_is_a_plain_picklable_object(tool):
    copy = pickle.loads(pickle.dumps(tool))
    assert copy == tool and copy("print('ok')") == "ok\n"


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match=r"^PythonTool: wall_s must be > 0, got 0$"):
        PythonTool(wall_s=0)
    with pytest.raises(ValueError, match=r"is not an executable file"):
        PythonTool(python="/nonexistent/python")
    assert PythonTool(python=sys.executable)("print(1)") == "1\n"


def test_links_are_refused(tool):
    _refused(tool, "import os\nos.symlink('/etc', 'etc')", r"os.symlink is not allowed")
    _refused(tool, "import os\nopen('a', 'w').close()\nos.link('a', 'b')", r"os.link is not allowed")
