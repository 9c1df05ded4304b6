"""What `pip install .` installs: the wheel built from this checkout holds the four runtime
packages (with the consumer's Lua scripts) and the ``regionstream`` command, and none of the
harness, the tests or the benchmarks. The version has one source, pyproject.toml, and the
package's public API resolves without importing redis, rich or prometheus_client.

The wheel is built the way the Makefile installs the project (``--no-deps
--no-build-isolation --no-index``), from a copy of the tree in a temporary directory:
setuptools writes ``build/`` and ``*.egg-info`` into the tree it builds, and this one is left
as it was (~2 s)."""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path, PurePosixPath

import pytest
from packaging.version import Version

import regionstream

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
RUNTIME = ("shared", "producer", "consumer", "regionstream")  # [tool.setuptools] packages
LEFT_OUT = ("harness", "tests", "bench")
BUILD_TIMEOUT_S = 120
# What a copy of the tree leaves behind: VCS, virtualenvs, caches, earlier builds.
NOT_COPIED = shutil.ignore_patterns(".*", "__pycache__", "*.egg-info", "build", "dist")


def pip() -> list[str]:
    """As the Makefile's PIP: this interpreter's own pip, or else one that installs into it
    (``--python``, pip >= 22.3) when the virtualenv was made without pip."""
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    for candidate in ("python3", str(Path(sys.base_prefix, "bin", "python3"))):
        python = shutil.which(candidate)
        if python and subprocess.run([python, "-c", "import pip"], capture_output=True,
                                     check=False).returncode == 0:
            return [python, "-m", "pip", "--python", sys.executable]
    pytest.fail("no pip to build the wheel with (neither this virtualenv's nor python3's)",
                pytrace=False)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    work = tmp_path_factory.mktemp("wheel")
    source, out = work / "source", work / "out"
    shutil.copytree(ROOT, source, ignore=NOT_COPIED)
    proc = subprocess.run(
        [*pip(), "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--quiet", "-w", str(out), str(source)],
        capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    (built,) = out.glob("regionstream-*.whl")
    with zipfile.ZipFile(built) as archive:
        yield archive


def dist_info(archive: zipfile.ZipFile, name: str) -> str:
    (path,) = [n for n in archive.namelist()
               if PurePosixPath(n).parent.name.endswith(".dist-info")
               and PurePosixPath(n).name == name]
    return archive.read(path).decode()


def test_the_wheel_holds_the_runtime_packages_and_nothing_else(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    tops = {PurePosixPath(n).parts[0] for n in names}
    assert tops - {n for n in tops if n.endswith(".dist-info")} == set(RUNTIME)
    for package in RUNTIME:
        # Every module of the package, subpackages too (a package list is not recursive).
        wanted = {p.relative_to(ROOT).as_posix() for p in (ROOT / package).rglob("*.py")
                  if "__pycache__" not in p.parts}
        assert f"{package}/__init__.py" in wanted
        assert wanted <= names, f"{package}: not in the wheel: {sorted(wanted - names)}"
    lua = {p.relative_to(ROOT).as_posix() for p in (ROOT / "consumer").glob("*.lua")}
    assert lua, "consumer/ has no Lua scripts to ship"
    assert lua <= names, f"consumer's Lua scripts not in the wheel: {sorted(lua - names)}"
    for left_out in LEFT_OUT:
        assert (ROOT / left_out).is_dir()
        shipped = sorted(n for n in names if n.startswith(f"{left_out}/"))
        assert not shipped, f"{left_out}/ is shipped: {shipped}"


def test_the_wheel_installs_the_command(wheel: zipfile.ZipFile) -> None:
    entry_points = dist_info(wheel, "entry_points.txt")
    section = entry_points.split("[console_scripts]", 1)[1].split("[", 1)[0]
    lines = {line.replace(" ", "") for line in section.splitlines() if line.strip()}
    assert "regionstream=regionstream.cli:main" in lines, entry_points


def test_one_version_pyproject_toml(wheel: zipfile.ZipFile) -> None:
    """pyproject.toml's version is the wheel's, the installed package's
    (``regionstream.__version__``, from the installed metadata) and the command's."""
    declared = str(Version(PROJECT["version"]))  # as the metadata normalizes it
    built = next(line.split(":", 1)[1].strip()
                 for line in dist_info(wheel, "METADATA").splitlines()
                 if line.startswith("Version:"))
    assert built == declared
    assert regionstream.__version__ == declared, (
        "the installed metadata is stale: reinstall the project (make setup)")
    command = Path(sys.executable).parent / "regionstream"
    proc = subprocess.run([str(command), "--version"], capture_output=True, text=True,
                          timeout=30, check=False)
    assert (proc.returncode, proc.stdout.strip()) == (0, f"regionstream {declared}"), proc.stderr


def test_the_version_without_an_installed_distribution(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    monkeypatch.delitem(vars(regionstream), "__version__", raising=False)  # resolved anew
    assert regionstream.__version__ == "0+unknown"


def test_the_public_api_resolves() -> None:
    defined_in = {"Settings": "shared.settings", "Producer": "producer.service",
                  "Consumer": "consumer.service", "open_deployment": "shared.shards",
                  "Deployment": "shared.shards"}
    assert set(regionstream.__all__) == {*defined_in, "__version__"}
    for name in regionstream.__all__:
        value = getattr(regionstream, name)
        if name in defined_in:
            assert value is getattr(importlib.import_module(defined_in[name]), name), name
    assert set(regionstream.__all__) <= set(dir(regionstream))
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        _ = regionstream.nothing_here


def test_importing_regionstream_imports_no_dependency() -> None:
    code = ("import regionstream, sys; print(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('redis','rich','prometheus_client')))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=30, check=False)
    assert (proc.returncode, proc.stdout.strip()) == (0, "[]"), proc.stderr
