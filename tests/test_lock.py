"""The lock is what runs: ``uv.lock`` agrees with ``pyproject.toml``, the exported
``requirements/*.txt`` agree with ``uv.lock``, and this environment holds exactly the locked
versions. A dependency edited in pyproject.toml without ``make lock`` fails here, not on a
newcomer's machine."""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LOCK = tomllib.loads((ROOT / "uv.lock").read_text())
SETS = ("runtime", "demo", "bench", "dev")  # requirements/<set>.txt, as `make export-lock` writes


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    marker: str | None
    hashes: frozenset[str]

    def applies(self) -> bool:
        return self.marker is None or Marker(self.marker).evaluate()


def pins(path: Path) -> dict[tuple[str, str | None], Pin]:
    """A hashed requirements file, one ``name==version [; marker]`` block each, by (name,
    marker): a universal lock pins one package twice under opposite markers (numpy for
    Python < 3.12 and >= 3.12), and a dict by name kept only the last of them."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    found: dict[tuple[str, str | None], Pin] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        spec, *hashes = [part.strip() for part in line.split("--hash=")]
        req = Requirement(spec)
        (version,) = [s.version for s in req.specifier if s.operator == "=="]
        pin = Pin(canonicalize_name(req.name), version, str(req.marker) if req.marker else None,
                  frozenset(hashes))
        assert (pin.name, pin.marker) not in found, f"{path.name} pins {pin.name} twice"
        found[pin.name, pin.marker] = pin
    return found


def applying(pinned: dict[tuple[str, str | None], Pin]) -> dict[str, str]:
    """name -> version of the pins whose marker holds here (one per name, or the file is
    wrong)."""
    out: dict[str, str] = {}
    for pin in pinned.values():
        if pin.applies():
            assert pin.name not in out, f"two pins of {pin.name} apply here"
            out[pin.name] = pin.version
    return out


def locked_packages() -> dict[str, list[dict[str, object]]]:
    by_name: dict[str, list[dict[str, object]]] = {}
    for package in LOCK["package"]:
        by_name.setdefault(canonicalize_name(package["name"]), []).append(package)
    return by_name


def _declared(req: str, extra: str | None) -> tuple[str, frozenset[str], str, str | None]:
    r = Requirement(req)
    return (canonicalize_name(r.name), frozenset(r.extras), str(r.specifier),
            f"extra == '{extra}'" if extra else None)


def test_uv_lock_was_made_from_this_pyproject() -> None:
    project = PROJECT["project"]
    declared = {_declared(r, None) for r in project["dependencies"]}
    for extra, reqs in project["optional-dependencies"].items():
        declared |= {_declared(r, extra) for r in reqs}
    (ours,) = locked_packages()["regionstream"]
    meta = ours["metadata"]
    assert isinstance(meta, dict)
    locked = {(canonicalize_name(d["name"]), frozenset(d.get("extras", ())),
               str(Requirement(f"x{d.get('specifier', '')}").specifier), d.get("marker"))
              for d in meta["requires-dist"]}
    assert declared == locked, "pyproject.toml's dependencies changed: run `make lock`"
    groups = {g: {str(Requirement(r)) for r in reqs}
              for g, reqs in PROJECT["dependency-groups"].items()}
    locked_groups = {g: {d["name"] + d.get("specifier", "") for d in reqs}
                     for g, reqs in meta["requires-dev"].items()}
    assert groups == locked_groups, "pyproject.toml's dependency groups changed: run `make lock`"
    assert LOCK["requires-python"] == project["requires-python"], (
        "pyproject.toml's requires-python changed: run `make lock`")


@pytest.mark.parametrize("name", SETS)
def test_each_export_pins_what_uv_lock_resolved_with_its_hashes(name: str) -> None:
    locked = locked_packages()
    exported = pins(ROOT / "requirements" / f"{name}.txt")
    assert exported, f"requirements/{name}.txt pins nothing"
    for pin in exported.values():
        versions = {str(p["version"]): p for p in locked.get(pin.name, [])}
        assert pin.version in versions, (
            f"requirements/{name}.txt pins {pin.name}=={pin.version}, uv.lock has "
            f"{sorted(versions)}: run `make export-lock`")
        package = versions[pin.version]
        files = [*package.get("wheels", []), *([package["sdist"]] if "sdist" in package else [])]
        lock_hashes = {str(f["hash"]) for f in files}  # type: ignore[index]
        assert pin.hashes and pin.hashes <= lock_hashes, (
            f"requirements/{name}.txt: {pin.name}'s hashes are not uv.lock's")


def test_the_sets_nest() -> None:
    """The demo adds to the runtime, the dev set holds every other set: installing one after
    another into one virtualenv never changes a version."""
    sets = {name: pins(ROOT / "requirements" / f"{name}.txt") for name in SETS}
    for small, big in [("runtime", "demo"), ("runtime", "bench"), ("demo", "dev"),
                       ("bench", "dev")]:
        assert sets[small].items() <= sets[big].items(), f"{small} is not within {big}"
    names = {name: {pin.name for pin in pinned.values()} for name, pinned in sets.items()}
    assert "setuptools" in names["runtime"], "the build backend must be locked too"
    assert "fakeredis" not in names["runtime"], "the embedded fallback is the demo's extra"


def test_this_environment_is_the_lock() -> None:
    """What `make test` runs on is exactly requirements/dev.txt (pip freeze against the lock),
    both ways: every locked package at its version, and nothing else (a package dropped from
    the lock, or one installed by hand, would stay in a virtualenv that stamps only add to:
    `make clean` then `make setup` rebuilds it)."""
    wanted = applying(pins(ROOT / "requirements" / "dev.txt"))
    installed = {canonicalize_name(d.metadata["Name"]): d.version
                 for d in metadata.distributions()}
    ours = {"regionstream", "pip"}  # the project itself; pip where the venv has its own
    drift = {name: (wanted.get(name), installed.get(name))
             for name in (set(wanted) | set(installed)) - ours
             if installed.get(name) != wanted.get(name)}
    if os.environ.get("REGIONSTREAM_UNLOCKED") == "1":  # `make test-latest`: drift on purpose
        # What it installed must still be what pyproject.toml allows (it says how it drifted).
        print(f"\nunlocked run: differs from the lock (locked, installed): {drift}")
        assert not outside_the_ranges(installed)
        return
    assert not drift, f"installed differs from requirements/dev.txt (locked, installed): {drift}"


def outside_the_ranges(installed: dict[str, str]) -> list[str]:
    """Every requirement pyproject.toml declares (all extras, the build group) that the
    installed version does not satisfy."""
    project = PROJECT["project"]
    declared = [*project["dependencies"],
                *(r for reqs in project["optional-dependencies"].values() for r in reqs)]
    wrong = []
    for text in declared:
        req = Requirement(text)
        version = installed.get(canonicalize_name(req.name))
        if version is None or not req.specifier.contains(version, prereleases=True):
            wrong.append(f"{req} (installed: {version})")
    return wrong
