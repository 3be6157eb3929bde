"""The Makefile never swaps vLLM/torch builds in an existing venv (issue 19, defect 6).

`make -n` (dry run) against a fake venv directory: what make would install, without installing.
A fake `nvidia-smi` first on PATH plays a GPU machine (or a machine without one)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def _make(tmp_path, *args: str, gpu: bool = False) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)'\n" if gpu else "#!/bin/sh\nexit 9\n")
    smi.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "EXTRAS", "VENV")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    return subprocess.run(["make", "-n", *args, f"VENV={tmp_path / 'venv'}"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def _venv(tmp_path, extras: str | None, stamp: str | None) -> None:
    venv = tmp_path / "venv"
    venv.mkdir()
    if extras:
        (venv / ".extras").write_text(extras + "\n")
    if stamp:
        (venv / f".installed-{stamp}").touch()


def _installs(out: str) -> list[str]:
    return [line for line in out.splitlines() if "pip install" in line and "-e" in line]


@pytest.mark.parametrize("target", ["test", "demo", "demo-tools", "lint", "install"])
def test_a_cuda_venv_gets_no_cpu_build(tmp_path, target):
    _venv(tmp_path, "cuda,dev", "cuda-dev")
    out = _make(tmp_path, target)
    assert out.returncode == 0, out.stderr
    assert _installs(out.stdout) == [] and "cpu,dev" not in out.stdout  # the tmp path may say cpu


def test_a_cuda_venv_whose_stamp_is_stale_reinstalls_cuda(tmp_path):
    _venv(tmp_path, "cuda,dev", None)
    out = _make(tmp_path, "test")
    assert out.returncode == 0, out.stderr
    assert _installs(out.stdout) == [f"{tmp_path / 'venv'}/bin/python -m pip install -q -e '.[cuda,dev]'"]


def test_asking_for_the_other_build_is_a_one_line_error(tmp_path):
    _venv(tmp_path, "cuda,dev", "cuda-dev")
    out = _make(tmp_path, "test", "EXTRAS=cpu,dev")
    assert out.returncode != 0 and _installs(out.stdout) == []
    assert len(out.stderr.strip().splitlines()) == 1 and "make clean" in out.stderr
    assert _make(tmp_path, "clean", "EXTRAS=cpu,dev").returncode == 0  # the way out stays open


def test_a_venv_made_before_extras_was_remembered_keeps_its_build(tmp_path):
    _venv(tmp_path, None, "cpu-dev")
    out = _make(tmp_path, "test", gpu=True)
    assert out.returncode == 0, out.stderr
    assert _installs(out.stdout) == []


@pytest.mark.parametrize("gpu, extras", [(True, "cuda,dev"), (False, "cpu,dev")])
def test_a_new_venv_follows_the_machine(tmp_path, gpu, extras):
    out = _make(tmp_path, "test", gpu=gpu)
    assert out.returncode == 0, out.stderr
    assert _installs(out.stdout) == [f"{tmp_path / 'venv'}/bin/python -m pip install -q -e '.[{extras}]'"]
    assert f"echo '{extras}' > {tmp_path / 'venv'}/.extras" in out.stdout
