"""Issue 10 item 14: the floors without known advisories, and locks that honour pyproject.toml."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
FLOORS = {"aiohttp": "3.14.5", "pyjwt": "2.15", "cryptography": "46.0.5"}


def _pins(lock: str) -> dict[str, Version]:
    text = (ROOT / lock).read_text()
    return {m[1].lower(): Version(m[2]) for m in re.finditer(r"^([A-Za-z0-9_.-]+)==([^ \\\n]+)", text, re.M)}


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _name(requirement: Requirement) -> str:
    return re.sub(r"[-_.]+", "-", requirement.name).lower()


def test_floors_are_the_advisory_free_versions():
    declared = {_name(r): r for r in map(Requirement, _project()["dependencies"])}
    for name, floor in FLOORS.items():
        # Nothing below the floor is allowed; the floor itself is.
        below = Version(floor).release
        just_below = ".".join(map(str, (*below[:-1], below[-1] - 1))) if below[-1] else None
        assert declared[name].specifier.contains(floor), name
        if just_below:
            assert not declared[name].specifier.contains(just_below), name


def test_every_lock_satisfies_pyproject_and_is_hashed():
    extras = _project()["optional-dependencies"]
    for lock, groups in (("requirements.lock", []), ("requirements-ci.lock", ["test", "dev", "fuzz"])):
        pins = _pins(lock)
        requirements = [Requirement(r) for r in _project()["dependencies"]]
        requirements += [Requirement(r) for group in groups for r in extras[group]]
        for requirement in requirements:
            if requirement.marker is not None and not requirement.marker.evaluate({"platform_system": "Linux"}):
                continue
            name = _name(requirement)
            assert name in pins, f"{lock} lacks {name}: run make lock"
            assert requirement.specifier.contains(pins[name], prereleases=True), f"{lock}: {name} {pins[name]}"
        # Every pin carries its hashes (pip --require-hashes refuses the file otherwise).
        hashed = re.findall(r"^\S+==\S+ \\\n    --hash=sha256:", (ROOT / lock).read_text(), re.M)
        assert len(hashed) == len(pins), lock
