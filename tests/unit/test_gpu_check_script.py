"""scripts/gpu_check.sh, as far as it runs without a GPU: its syntax (bash -n, and shellcheck
where installed), and the clear refusal on a machine without an NVIDIA GPU or with a driver too
old for the pinned vLLM's CUDA."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def _run(tmp_path: Path, nvidia_smi: str | None) -> subprocess.CompletedProcess[str]:
    """The script with PATH holding only the basic tools, and a stand-in nvidia-smi if given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "head", "wc", "sort", "printf", "mkdir", "date", "env"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    if nvidia_smi is not None:
        stub = bin_dir / "nvidia-smi"
        stub.write_text(f"#!/bin/sh\n{nvidia_smi}\n")
        stub.chmod(0o755)
    env = {
        "PATH": str(bin_dir),
        "HOME": str(tmp_path),
        # Should the GPU check let it through, it stops at once rather than build a venv.
        "PYTHON": "/nonexistent/python",
        "LORAGATE_GPU_VENV": str(tmp_path / "venv"),
        "LORAGATE_GPU_OUT": str(tmp_path / "out"),
    }
    return subprocess.run(
        [shutil.which("bash") or "bash", str(SCRIPT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_script_parses() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    assert os.access(SCRIPT, os.X_OK)
    if shutil.which("shellcheck"):
        done = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout


def test_without_nvidia_smi_it_stops_at_once_saying_why(tmp_path: Path) -> None:
    done = _run(tmp_path, nvidia_smi=None)
    assert done.returncode == 1
    assert "gpu_check: FAILED: nvidia-smi not found" in done.stderr
    assert "NVIDIA GPU" in done.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "venv").exists()


@pytest.mark.parametrize(
    ("nvidia_smi", "message"),
    [
        ('echo "No devices were found"; exit 6', "nvidia-smi cannot query a GPU"),
        ('echo "NVIDIA A100-SXM4-80GB, 81920, 550.54.15"', "driver 550.54.15 is older than"),
    ],
)
def test_an_unusable_gpu_stops_it_before_any_work(
    tmp_path: Path, nvidia_smi: str, message: str
) -> None:
    done = _run(tmp_path, nvidia_smi)
    assert done.returncode == 1, done.stdout + done.stderr
    assert message in done.stderr
    assert not (tmp_path / "venv").exists()
