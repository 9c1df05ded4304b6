"""What the README shows a new user, run: the shipped example snapshots are published and
consumed, the Snapshot format section names what the schema requires, and the dedup rule
counts as the README says."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bench.summary import readme_drain
from shared.schema import (
    REGIME_LABELS,
    REGIONS,
    TRIGGER_REASONS,
    json_schema,
    parse,
)
from shared.settings import MAX_RETENTION_S, Settings
from tests.helpers import check_exactly_once, stored_total
from tests.proc import cli_env, common_flags, run_cli

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.jsonl"))
README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    return README[start:README.find("\n## ", start + 1)]


def lines_of(path: Path) -> list[bytes]:
    return [line for line in path.read_bytes().splitlines() if line.strip()]


def test_the_examples_are_one_valid_snapshot_per_region() -> None:
    assert [p.name for p in EXAMPLES] == ["minimal.jsonl", "snapshots.jsonl"]
    for path in EXAMPLES:
        snaps = [parse(line, now_ms=json.loads(line)["generated_at"]) for line in lines_of(path)]
        assert sorted(s.region_id for s in snaps) == sorted(REGIONS), path.name
    required = json_schema()["$defs"]["Snapshot"]["required"]  # type: ignore[index]
    minimal = json.loads(lines_of(ROOT / "examples" / "minimal.jsonl")[0])
    assert sorted(minimal) == sorted(required)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_an_example_file_is_published_and_stored_whole(settings: Settings, path: Path) -> None:
    """``produce --source examples/...`` then ``consume --drain``: every snapshot stored once,
    nothing dead-lettered (the retention made long enough for the file's date: the README
    says so for readers after 90 days)."""
    env = cli_env() | {"REGIONSTREAM_RETENTION_S": str(MAX_RETENTION_S)}
    flags = common_flags(settings)
    done = run_cli(["produce", "--source", str(path), *flags], env=env)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    done = run_cli(["consume", "--drain", *flags], env=env)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    lines = lines_of(path)
    check_exactly_once(settings.redis_url, settings, lines, [])
    assert stored_total(settings.redis_url, settings) == len(lines)


def test_the_snapshot_format_section_names_what_the_schema_requires() -> None:
    text = section("Snapshot format")
    defs = json_schema()["$defs"]  # type: ignore[index]
    for struct in ("Snapshot", "SnapshotMeta"):
        for name in defs[struct]["required"]:
            assert f"`{name}`" in text, (struct, name)
    for value in (*REGIONS, *TRIGGER_REASONS, *REGIME_LABELS):
        assert f"`{value}`" in text, value
    pattern = defs["SnapshotMeta"]["properties"]["snapshot_id"]["pattern"]
    example = re.search(r"`([0-9a-f]{12}-[0-9a-f]{12})`", text)
    assert example is not None and re.fullmatch(pattern, example.group(1))
    assert "regionstream schema" in text and "examples/minimal.jsonl" in text


def test_two_cycles_in_one_window_store_one_and_count_the_other_as_duplicates(
        settings: Settings) -> None:
    """The README's dedup example, as written: ``produce --once --seed 7`` twice, then
    ``consume --drain``: 8 stored, 8 duplicates (a week's window, so that no bucket boundary
    falls between the two runs)."""
    env = cli_env() | {"REGIONSTREAM_DEDUP_WINDOW_S": "604800"}
    flags = common_flags(settings)
    for _ in range(2):
        done = run_cli(["produce", "--once", "--seed", "7", *flags], env=env)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
    done = run_cli(["consume", "--drain", *flags], env=env)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    settled = done.stderr.decode().strip().splitlines()[-1]
    assert "persisted=8 duplicate=8 " in settled + " ", settled
    assert "produce --once --seed 7` twice" in section("How it flows, and the dedup rule")


def test_the_configuration_section_states_the_real_defaults() -> None:
    """Each ``--flag`` (default) and ``REGIONSTREAM_X`` (default) the README names, against
    what Settings.load gives with nothing set."""
    text = section("Configuration")
    defaults = Settings.load({}, env={})
    found = re.findall(r"`(--[a-z-]+|REGIONSTREAM_[A-Z_]+)`\s*\(`?([^)`]+)`?\)", text)
    assert len(found) >= 10, found
    spelled = {"--grace": "grace_s", "REGIONSTREAM_DEDUP_WINDOW_S": "dedup_window_s",
               "REGIONSTREAM_RETENTION_S": "retention_s"}
    for name, said in found:
        attr = spelled.get(name, name.lstrip("-").replace("-", "_").lower())
        value = getattr(defaults, attr)
        if said.endswith(" days"):
            assert value == int(said.split()[0]) * 86_400, (name, said, value)
        elif said.endswith(" s"):
            assert value == float(said.split()[0]), (name, said, value)
        else:
            assert str(value) == said, (name, said, value)


def test_the_performance_table_is_the_committed_benchmark_run() -> None:
    """The README's Performance figures are those of bench/results/results.json, the run
    committed with them (`make bench` writes the table beside it: readme-drain.md)."""
    doc = json.loads((ROOT / "bench" / "results" / "results.json").read_text())
    assert readme_drain(doc) in section("Performance")
