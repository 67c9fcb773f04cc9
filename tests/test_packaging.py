"""The wheel carries what the package needs at run time: every config file of conf/ (experiments included) inside
bcd/conf, and a console script per command."""

from __future__ import annotations

import glob
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers.paths import CONF, REPO

COMMANDS = ("train", "evaluate", "predict", "export", "sweep", "cv", "audit", "bench")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from this checkout (offline: the environment's setuptools, no dependencies)."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(out), str(REPO)], check=True, capture_output=True, text=True)
    (built,) = out.glob("bcd-*.whl")
    return built


def test_the_wheel_holds_every_config_file(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    # glob, unlike Path.rglob, follows the link conf/experiment -> experiments/
    found = [Path(p) for p in glob.glob(str(CONF / "**" / "*"), recursive=True)]
    configs = [p.relative_to(CONF).as_posix() for p in found if p.suffix in (".yaml", ".md") and p.is_file()]
    assert "experiment/smoke.yaml" in configs and "train.yaml" in configs
    missing = [name for name in configs if f"bcd/conf/{name}" not in names]
    assert not missing, f"not in the wheel: {missing}"


def test_the_wheel_has_a_console_script_per_command(wheel: Path) -> None:
    entry_points = next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith("entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    for command in COMMANDS:
        assert f"bcd-{command} = " in scripts, command
