"""The lock files agree with pyproject.toml, and the environment the tests run in is the lock.

`make lock` writes requirements/runtime.txt and requirements/dev.txt from pyproject.toml's ranges;
every install (make, CI, the Dockerfile) reads them. A range changed or a dependency added without
re-locking fails here, not in a user's fresh clone weeks later.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^ ;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


def parse_lock(path: Path) -> dict[str, tuple[Version, str | None, int]]:
    """name → (version, marker, number of hashes) for every pin in a uv/pip-compile lock."""
    pins: dict[str, tuple[Version, str | None, int]] = {}
    current: str | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if m := PIN.match(line):
            current = canonicalize_name(m.group(1))
            pins[current] = (Version(m.group(2)), m.group(3), 0)
        elif current and line.strip().startswith("--hash=sha256:"):
            version, marker, hashes = pins[current]
            pins[current] = (version, marker, hashes + 1)
        elif not line.startswith((" ", "\t")):
            current = None
    return pins


def direct_requirements(*, dev: bool) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    lines = list(project["dependencies"])
    if dev:
        lines += project["optional-dependencies"]["dev"]
    lines += [line.split("#")[0].strip()
              for line in (ROOT / "requirements/build.in").read_text().splitlines()]
    return [Requirement(line) for line in lines if line]


def applies(marker: str | None) -> bool:
    from packaging.markers import Marker

    return marker is None or Marker(marker).evaluate(default_environment())


@pytest.mark.parametrize("lock, dev", [("runtime.txt", False), ("dev.txt", True)])
def test_every_direct_requirement_is_pinned_within_its_range_with_hashes(lock, dev):
    pins = parse_lock(ROOT / "requirements" / lock)
    assert pins, f"no pins parsed from requirements/{lock}"
    for req in direct_requirements(dev=dev):
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} is in pyproject.toml but not in requirements/{lock}: make lock"
        version = pins[name][0]
        assert req.specifier.contains(version, prereleases=True), (
            f"requirements/{lock} pins {req.name}=={version}, outside {req}: make lock")
    unhashed = sorted(name for name, (_, _, hashes) in pins.items() if hashes == 0)
    assert not unhashed, f"pins without hashes in requirements/{lock}: {unhashed}"


def test_runtime_and_dev_locks_pin_the_same_versions():
    runtime, dev = (parse_lock(ROOT / "requirements" / f) for f in ("runtime.txt", "dev.txt"))
    differ = {n: (str(runtime[n][0]), str(dev.get(n, (None,))[0])) for n in runtime
              if n not in dev or dev[n][0] != runtime[n][0]}
    assert not differ, f"runtime vs dev lock: {differ}"


def test_the_running_environment_is_the_dev_lock():
    # Catches an install that bypassed the lock (pip install -e '.[dev]' resolves afresh).
    drift = {}
    for name, (version, marker, _) in parse_lock(ROOT / "requirements/dev.txt").items():
        if not applies(marker):
            continue
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            drift[name] = (str(version), None)
            continue
        if installed != version:
            drift[name] = (str(version), str(installed))
    assert not drift, f"installed packages differ from requirements/dev.txt (locked, installed): {drift}"

