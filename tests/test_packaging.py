"""Packaging: the dependency floors in pyproject.toml are the versions CI runs on (.ci/floors.txt)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

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
