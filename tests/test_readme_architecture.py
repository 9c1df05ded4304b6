"""The README's Architecture section is checked against the tree, and its Python API example
runs: a map or an example that no test reads would rot unnoticed."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import redis.asyncio as aioredis

from shared.settings import Settings
from tests.helpers import stored

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"\n{title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end != -1 else None]


def code_blocks(text: str, lang: str = "") -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


def module_map() -> dict[str, set[str]]:
    """Folder -> the module files the map names in that folder's rows."""
    (block, *_) = code_blocks(section("## Architecture"))
    named: dict[str, set[str]] = {}
    folder = ""
    for line in block.splitlines():
        if m := re.match(r"(\w+)/\s", line):
            folder = m.group(1)
        named.setdefault(folder, set()).update(re.findall(r"\b(\w+\.(?:py|lua))\b", line))
    return named


def test_every_module_the_map_names_exists() -> None:
    named = module_map()
    assert set(named) >= {"producer", "consumer", "shared", "regionstream", "harness"}
    for folder, files in named.items():
        for f in files:
            if f != "*.lua":
                assert (ROOT / folder / f).exists(), f"README names {folder}/{f}"


def test_the_map_names_every_producer_and_consumer_module() -> None:
    named = module_map()
    for folder in ("producer", "consumer"):
        modules = {p.name for p in (ROOT / folder).glob("*.py")} - {"__init__.py", "__main__.py"}
        assert modules <= named[folder], (folder, sorted(modules - named[folder]))


async def test_the_python_api_example_runs(client: aioredis.Redis, settings: Settings) -> None:
    (example,) = code_blocks(section("### Embedding it (Python API)"), "python")
    names = {"redis_url": settings.redis_url, "stream": settings.stream,
             "group": settings.group, "prefix": settings.prefix}
    own = repr(names)
    program, found = re.subn(r'\{"redis_url": "redis://localhost:6379/0"\}', own, example)
    assert found == 1, "the example's Settings.load({...}) changed: adapt this test"
    done = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", program],
                                   capture_output=True, timeout=60, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert await stored(settings.redis_url, settings) == len(settings.regions)
    assert (await client.xpending(settings.stream, settings.group))["pending"] == 0
