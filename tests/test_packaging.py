"""Packaging: the dependency floors in pyproject.toml are the versions CI runs on (.ci/floors.txt); the wheel
installs into a fresh venv with the bundled default model inside."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()


def test_floors_file_pins_exactly_the_floors_of_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    floors = {}
    for req in project["dependencies"]:
        m = re.search(r">=\s*([0-9][0-9.]*)", req)
        assert m, f"{req!r} has no floor (>=)"
        floors[_name(req)] = m.group(1)
    pinned = {}
    for line in (ROOT / ".ci" / "floors.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pinned[name.strip().lower()] = version.strip()

    def norm(v: str) -> tuple[int, ...]:
        parts = [int(x) for x in v.split(".")]
        return tuple(parts + [0] * (3 - len(parts)))

    assert set(pinned) == set(floors)
    assert {k: norm(v) for k, v in pinned.items()} == {k: norm(v) for k, v in floors.items()}


def test_license_is_an_spdx_expression() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"


# --------------------------------------------------------------------------- the wheel (issue 12, case 14)
def _setuptools_can_build() -> bool:
    """Whether this environment's setuptools meets the build requirement (then the build needs no index)."""
    try:
        import setuptools
    except ImportError:
        return False
    major = int(re.match(r"\d+", setuptools.__version__).group())
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    floor = next(int(m.group(1)) for r in build if (m := re.match(r"setuptools>=(\d+)", r)))
    return major >= floor


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory) -> Path:
    """A fresh venv holding only the wheel built from this checkout; its dependencies come from the
    current environment through a ``.pth`` file (no index needed, no other copy of refundguard)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # build from a copy: the checkout gets no build/ or egg-info
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "refundguard", src / "refundguard", ignore=ignore)
    shutil.copytree(ROOT / "models", src / "models", ignore=ignore)
    dist = tmp / "dist"
    isolation = ["--no-build-isolation"] if _setuptools_can_build() else []
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", *isolation, "-q", "-w", str(dist), str(src)], check=True,
                   capture_output=True, timeout=600)
    (wheel,) = dist.glob("refundguard-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    here = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    Path(site, "_refundguard_test_deps.pth").write_text("".join(f"{p}\n" for p in sorted(here)))
    subprocess.run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
                   check=True, capture_output=True, timeout=600)
    return venv


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "REFUNDGUARD_DEFAULT_MODEL")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def test_case14_the_wheel_carries_the_default_model(installed_wheel, tmp_path):
    code = (
        "import json, refundguard as rg\n"
        "from refundguard.guard import default_model_path\n"
        "g = rg.RefundGuard.default()\n"
        "print(json.dumps([rg.__file__, str(default_model_path()), g.model_version]))\n"
    )
    proc = subprocess.run([str(installed_wheel / "bin" / "python"), "-c", code], cwd=tmp_path, env=_clean_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    package, model, version = json.loads(proc.stdout)
    assert package.startswith(str(installed_wheel)), package  # the installed copy, not this checkout
    assert model == str(Path(package).parent / "_default_model")
    committed = json.loads((ROOT / "models" / "default" / "meta.json").read_text())
    assert version == committed["model_version"]
    for name in ("model.txt", "meta.json", "README.md", "MANIFEST"):
        assert (Path(model) / name).read_bytes() == (ROOT / "models" / "default" / name).read_bytes(), name


def test_case14_refundguard_demo_runs_from_the_wheel(installed_wheel, tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [str(installed_wheel / "bin" / "refundguard"), "demo", "--out", str(out), "--buyers", "600", "--stores", "30",
         "--days", "60", "--quiet"],
        cwd=tmp_path, env=_clean_env(), capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "decided" in proc.stdout, proc.stdout
    assert (out / "scored.csv").is_file()


def test_default_model_path_in_a_checkout_and_the_override(monkeypatch, tmp_path):
    from refundguard.guard import default_model_path

    monkeypatch.delenv("REFUNDGUARD_DEFAULT_MODEL", raising=False)
    assert default_model_path() == ROOT / "models" / "default"
    monkeypatch.setenv("REFUNDGUARD_DEFAULT_MODEL", str(tmp_path))
    assert default_model_path() == tmp_path


def test_every_package_of_the_source_tree_is_in_the_wheel_list():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "refundguard").rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)


def test_every_subpackage_is_listed_for_the_wheel() -> None:
    """pyproject lists the packages explicitly (for the mapped default model): a new subpackage must be added."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "refundguard").rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)
