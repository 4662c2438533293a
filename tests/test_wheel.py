"""kielo from a wheel: built, installed into a fresh venv outside the repository, run from another folder.

Offline and quick: the venv gets the third-party dependencies from this test environment through a
``.pth`` line (its own site-packages come first, so the wheel's kielo is the one imported), and only the
wheel is installed into it, without dependencies or an index.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the checkout's kielo must not be on the path
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    return env


def _run(args: list, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(the fresh venv's python, a working folder outside the repository) with the wheel of this checkout."""
    pytest.importorskip("setuptools", reason="building the wheel needs setuptools (pip install -e '.[dev]')")
    tmp = tmp_path_factory.mktemp("wheel")
    # Built from a copy of what the wheel is made of, so the build leaves nothing in the checkout and
    # nothing outside kielo/ can end up in the wheel.
    src = tmp / "src"
    shutil.copytree(ROOT / "kielo", src / "kielo", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", tmp / "dist", src], tmp)
    (wheel,) = (tmp / "dist").glob("kielo-*.whl")

    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp)
    python = venv / "bin" / "python"
    # Installed before the .pth exists: pip sees a bare venv, not this environment's (editable) kielo.
    _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel], tmp)
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp).stdout.strip()
    # Plain path lines: the directories are appended to sys.path without running their own .pth files, so
    # an editable install's finder there stays inactive.
    (Path(purelib) / "outer_environment.pth").write_text("\n".join(site.getsitepackages()) + "\n", encoding="utf-8")
    work = tmp / "elsewhere"
    work.mkdir()
    return python, work


def test_the_venv_imports_the_wheels_kielo(installed):
    python, work = installed
    probe = "import json, sys, kielo; print(json.dumps([kielo.__file__, [type(f).__module__ for f in sys.meta_path]]))"
    path, finders = json.loads(_run([python, "-c", probe], work).stdout)
    assert Path(path).is_relative_to(python.parent.parent), f"kielo came from {path}, not the wheel"
    assert not [f for f in finders if "__editable__" in f]
    # Every shipped resource made it into the wheel, byte for byte.
    installed_resources = Path(path).parent / "resources"

    def files(folder: Path) -> dict[str, bytes]:
        return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts}

    assert files(installed_resources) == files(ROOT / "kielo" / "resources")


def test_kielo_demo_help_from_the_wheel(installed):
    python, work = installed
    out = _run([python.parent / "kielo", "demo", "--help"], work).stdout
    assert "--full" in out and "--strict" in out


def test_kielo_train_on_the_bundled_data_from_the_wheel(installed, tiny_llama):
    """`kielo train configs/demo.yaml` from a folder without those files: config and data come from the package."""
    python, work = installed
    assert not (work / "configs").exists() and not (work / "data").exists()
    out = work / "run"
    args = ["train", "configs/demo.yaml", "--model", tiny_llama, "--training.max_steps", "2", "--data.max_length", "64"]
    done = _run([python.parent / "kielo", *args, "--lora.r", "4", "--output_dir", out], work)
    resources = python.parent.parent / "lib"
    for name in ("configs/demo.yaml", "data/fi_instruct/train.jsonl", "data/fi_instruct/dev.jsonl"):
        used = [line for line in done.stderr.splitlines() if f"using kielo's bundled {resources}" in line and line.endswith(name)]
        assert used, f"{name} was not read from the installed package:\n{done.stderr[-3000:]}"
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["steps"] == 2 and summary["validation_loss_end"] is not None
    assert (out / "adapter_model.safetensors").is_file()
