"""`pip install .` gives a user what a checkout gives: the shipped scenarios (package
data), typed packages (py.typed), and the commands. Built and installed for real, from a
copy of the sources, into a virtualenv of its own; needs what `make` needs (PyPI, or a
pip cache holding the build backend)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT

from clients.scenario import SHIPPED

pytestmark = pytest.mark.slow
SOURCES = ("protocols", "xed", "clients", "pyproject.toml", "README.md")


def _sh(*argv: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=600, cwd=cwd
    )
    assert done.returncode == 0, f"{argv}:\n{done.stdout}\n{done.stderr}"
    return done


def test_installed_package_ships_scenarios_and_types(tmp_path: Path) -> None:
    """The wheel holds every shipped scenario and a py.typed per package; installed in a
    fresh virtualenv, `xec scenario list` shows them and `scenario check` finds them by
    name, and `mypy --strict` sees the library's types from outside."""
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, src / name)
    _sh(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", tmp_path, src, cwd=src)
    (wheel,) = tmp_path.glob("xed-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = sorted(p.name for p in SHIPPED.glob("*.toml"))
    assert len(shipped) == 7
    assert {f"clients/scenario/shipped/{name}" for name in shipped} <= names
    assert {"clients/py.typed", "protocols/py.typed", "xed/py.typed"} <= names
    venv = tmp_path / "venv"
    _sh(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    _sh(sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps",
        wheel, cwd=tmp_path)  # fmt: skip
    # the installed commands run from anywhere with the dependencies of this virtualenv
    site = subprocess.run(
        [sys.executable, "-c", "import attrs, os; print(os.path.dirname(os.path.dirname("
         "attrs.__file__)))"], capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    (next((venv / "lib").glob("python*")) / "site-packages" / "deps.pth").write_text(site + "\n")
    listed = _sh(venv / "bin" / "xec", "scenario", "list", cwd=tmp_path).stdout
    assert [line.split()[0] for line in listed.splitlines()] == [n[:-5] for n in shipped]
    checked = _sh(venv / "bin" / "xec", "scenario", "check", "isolation", cwd=tmp_path).stdout
    assert str(venv) in checked and ": ok (" in checked
    probe = tmp_path / "probe.py"
    probe.write_text("from clients import Device\n\nwrong: int = Device.open()\n")
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--python-executable",
         str(python), str(probe)], capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout
    assert 'Incompatible types in assignment (expression has type "Device"' in done.stdout
    assert "py.typed" not in done.stdout  # no "missing library stubs or py.typed marker"
