"""The built wheel, installed in a fresh venv: one `distill` namespace and nothing else in site-packages."""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # built from a copy of the tracked files, as from a fresh clone: setuptools writes build/ where it builds
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    src = out / "src"
    for name in tracked.splitlines():
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(src)], check=True, capture_output=True, timeout=300)
    return next(out.glob("distill-*.whl"))


def test_the_wheel_holds_one_top_level_package_with_its_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"distill", wheel.name.split("-py3")[0] + ".dist-info"}
    for stage in ("flows", "generators", "filters", "verifiers", "trainers", "warehouse"):
        assert f"distill/{stage}/__init__.py" in names
    assert "distill/verifiers/SANDBOX.md" in names
    assert not [n for n in names if n.startswith("distill/tests") or "/recipes/" in n]


def test_a_fresh_venv_imports_distill_and_not_the_bare_stage_names(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True, timeout=300)
    # the dependencies (pydantic, typer, …) from this environment's site-packages, put after the venv's own
    # on the path: its .pth files (the editable install of this checkout) are not read from there
    deps = next(p for p in sys.path if p.endswith("site-packages"))
    env = {**os.environ, "PYTHONPATH": deps}

    def run(code: str):
        return subprocess.run([str(py), "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)

    for bare in ("filters", "flows", "warehouse", "generators", "verifiers", "trainers"):
        proc = run(f"import {bare}")
        assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr, bare
    proc = run("import distill, distill.flows.recipe as r, distill.filters as f; "
               "print(distill.__file__); print(r.__file__); print(sorted(f.FILTERS)[:2])")
    assert proc.returncode == 0, proc.stderr
    site = str(venv / "lib")
    assert all(line.startswith(site) for line in proc.stdout.splitlines()[:2]), proc.stdout
    help_ = subprocess.run([str(venv / "bin" / "distill"), "--help"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=300)
    assert help_.returncode == 0 and "distill" in help_.stdout, help_.stderr
