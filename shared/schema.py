"""The regional snapshot message: its shape, its limits, its codec and its validation.

This module is the contract between producer and consumer. The shape mirrors the upstream
worldmonitor regional snapshot (see ``upstream.md``); the limits are the ones upstream documents
(8 regions, at most 10 actors and 30 evidence items, ``valid_until`` at most 6 h ahead, scenario
probabilities summing to 1 per horizon).

Decoding and validation are on the consumer's hot path, so the codec uses module-level msgspec
encoder/decoder instances and validation is a single pass of cheap comparisons.
"""

from __future__ import annotations

import math
import random
import re
import secrets
from collections.abc import Collection
from typing import Literal, get_args

import msgspec

# Bumped when the wire shape changes incompatibly; it also goes into key names (``...:v1:...``)
# so that two schema generations never share a dedup marker or an index.
SCHEMA_VERSION = 1

# Region ids in upstream order. Kept as plain ``str`` on the struct (not a Literal) because the
# set of accepted regions is a validation parameter: a deployment may run a subset.
REGIONS: tuple[str, ...] = (
    "mena",
    "east-asia",
    "europe",
    "north-america",
    "south-asia",
    "latam",
    "sub-saharan-africa",
    "global",
)
REGION_NAMES: dict[str, str] = {
    "mena": "Middle East & North Africa",
    "east-asia": "East Asia & Pacific",
    "europe": "Europe & Central Asia",
    "north-america": "North America",
    "south-asia": "South Asia",
    "latam": "Latin America & Caribbean",
    "sub-saharan-africa": "Sub-Saharan Africa",
    "global": "Global",
}

# The Literal types are the single source of truth: msgspec rejects unknown values at decode time,
# and the tuples below are derived from them so the two can never drift apart.
TriggerReason = Literal[
    "scheduled_6h", "regime_shift", "trigger_activation", "corridor_break", "leverage_shift"
]
RegimeLabel = Literal[
    "calm",
    "stressed_equilibrium",
    "coercive_stalemate",
    "fragmentation_risk",
    "managed_deescalation",
    "escalation_ladder",
]
Horizon = Literal["24h", "7d", "30d"]
Lane = Literal["base", "escalation", "containment", "fragmentation"]

TRIGGER_REASONS: tuple[TriggerReason, ...] = get_args(TriggerReason)
REGIME_LABELS: tuple[RegimeLabel, ...] = get_args(RegimeLabel)
HORIZONS: tuple[Horizon, ...] = get_args(Horizon)
LANES: tuple[Lane, ...] = get_args(Lane)

MAX_VALID_AHEAD_MS = 6 * 3600 * 1000  # upstream: valid_until is at most generated_at + 6 h
MAX_ACTORS = 10
MAX_EVIDENCE = 30
# Lane probabilities are floats produced by normalising weights, so their sum is 1 only up to
# binary rounding (~1e-15 for four lanes). 1e-6 absorbs that with a wide margin, yet still rejects
# a producer that rounded each lane to a few decimals without fixing up the last lane.
PROBABILITY_TOLERANCE = 1e-6
# Producer and checker clocks are different machines; NTP keeps them within seconds, so five
# minutes tolerates a sloppy host while still catching a snapshot stamped hours (or ms-vs-s
# confusions, years) into the future, which would otherwise win "latest" forever.
MAX_CLOCK_SKEW_MS = 5 * 60 * 1000

# Checked with fullmatch, never match and "$": in Python "$" also matches before a trailing
# newline, and the id becomes part of a Redis key (see shared/keys.py).
_SNAPSHOT_ID_RE = re.compile(r"[0-9a-f]{12}-[0-9a-f]{12}")
_ID_PART_MAX = 1 << 48  # 12 hex digits


class SnapshotInvalid(ValueError):
    """A snapshot that cannot be decoded or breaks the contract.

    ``problems`` lists every problem found; the message is them joined with ``"; "`` so a person
    fixing one JSON line sees all of them at once. ``undecodable`` is true when the bytes are not
    JSON at all (as opposed to JSON of the wrong shape or breaking a limit), so a consumer can
    count the two kinds of poison apart.
    """

    def __init__(
        self, problems: str | list[str] | tuple[str, ...], *, undecodable: bool = False
    ) -> None:
        # A lone string is one problem; that is also how unpickling re-creates the exception.
        self.problems = (problems,) if isinstance(problems, str) else tuple(problems)
        self.undecodable = undecodable
        super().__init__("; ".join(self.problems))


# Every struct is frozen (a message is a value, never edited in place; derive variants with
# ``msgspec.structs.replace``) and kw_only (so required fields may follow defaulted ones and call
# sites stay readable). Unknown fields are ignored on decode so an older consumer keeps accepting
# snapshots from a newer producer that added a field. gc=False: a snapshot is a tree of strings,
# numbers and lists that never refers back to itself, so the cycle collector has nothing to find
# in it; untracked, its structs make a decode ~6% cheaper (20.4 vs 21.7 µs for 9 KB, measured).
# The options are spelled out on each class because mypy's dataclass_transform support does not
# inherit them from a base class.


class SnapshotMeta(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    snapshot_id: str
    model_version: str
    scoring_version: str
    geography_version: str
    snapshot_confidence: float
    missing_inputs: list[str] = msgspec.field(default_factory=list)
    stale_inputs: list[str] = msgspec.field(default_factory=list)
    valid_until: int
    trigger_reason: TriggerReason
    narrative_provider: str
    narrative_model: str


class Regime(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    label: RegimeLabel
    previous_label: RegimeLabel | None = None
    transitioned_at: int | None = None  # epoch ms of the last label change
    transition_driver: str = ""


class Balance(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    # Pressure/buffer axes in [0, 1]; net_balance in [-1, 1] (buffers minus pressures).
    coercive_pressure: float
    domestic_fragility: float
    capital_stress: float
    energy_vulnerability: float
    alliance_cohesion: float
    maritime_access: float
    energy_leverage: float
    net_balance: float
    pressures: list[str] = msgspec.field(default_factory=list)
    buffers: list[str] = msgspec.field(default_factory=list)


class Actor(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    id: str
    name: str
    role: str
    leverage_score: float
    domains: list[str] = msgspec.field(default_factory=list)
    stance: str = ""


class LeverageEdge(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    from_actor_id: str
    to_actor_id: str
    mechanism: str
    strength: float


class ScenarioLane(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    lane: Lane
    probability: float
    summary: str
    trigger_ids: list[str] = msgspec.field(default_factory=list)


class ScenarioSet(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    horizon: Horizon
    lanes: list[ScenarioLane] = msgspec.field(default_factory=list)


class TransmissionPath(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    start: str
    mechanism: str
    end: str
    severity: str
    confidence: float
    latency_hours: int


class Trigger(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    id: str
    description: str
    indicator: str
    threshold: float
    current: float


class Triggers(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    active: list[Trigger] = msgspec.field(default_factory=list)
    watching: list[Trigger] = msgspec.field(default_factory=list)
    dormant: list[Trigger] = msgspec.field(default_factory=list)


class AirspaceStatus(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    fir: str
    name: str
    status: str


class FlightCorridor(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    name: str
    status: str
    reroute_minutes: int


class AirportStatus(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    iata: str
    name: str
    status: str
    delay_index: float


class Mobility(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    airspace: list[AirspaceStatus] = msgspec.field(default_factory=list)
    flight_corridors: list[FlightCorridor] = msgspec.field(default_factory=list)
    airports: list[AirportStatus] = msgspec.field(default_factory=list)
    reroute_intensity: float = 0.0
    notam_closures: list[str] = msgspec.field(default_factory=list)


class Evidence(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    id: str
    source: str
    summary: str
    observed_at: int  # epoch ms
    confidence: float


class Narrative(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    situation: str
    balance_assessment: str
    outlook_24h: str
    outlook_7d: str
    outlook_30d: str
    watch_items: list[str] = msgspec.field(default_factory=list)


class Snapshot(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    region_id: str
    generated_at: int  # epoch ms
    meta: SnapshotMeta
    regime: Regime
    balance: Balance
    actors: list[Actor] = msgspec.field(default_factory=list)
    leverage_edges: list[LeverageEdge] = msgspec.field(default_factory=list)
    scenario_sets: list[ScenarioSet] = msgspec.field(default_factory=list)
    transmission_paths: list[TransmissionPath] = msgspec.field(default_factory=list)
    triggers: Triggers = msgspec.field(default_factory=Triggers)
    mobility: Mobility = msgspec.field(default_factory=Mobility)
    evidence: list[Evidence] = msgspec.field(default_factory=list)
    narrative: Narrative


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------

_BALANCE_FIELDS = (
    "coercive_pressure",
    "domestic_fragility",
    "capital_stress",
    "energy_vulnerability",
    "alliance_cohesion",
    "maritime_access",
    "energy_leverage",
    "net_balance",
)
_KNOWN_REGIMES: frozenset[str] = frozenset(REGIME_LABELS)
_KNOWN_REASONS: frozenset[str] = frozenset(TRIGGER_REASONS)
_KNOWN_HORIZONS: frozenset[str] = frozenset(HORIZONS)
_KNOWN_LANES: frozenset[str] = frozenset(LANES)


def _check_meta(snap: Snapshot, now_ms: int | None, problems: list[str]) -> None:
    meta = snap.meta
    if not _SNAPSHOT_ID_RE.fullmatch(meta.snapshot_id):
        problems.append(
            f"meta.snapshot_id: {meta.snapshot_id!r} does not match 12hex-12hex "
            "(e.g. '01a20df9a266-dfbeeaaf6bb1')"
        )
    conf = meta.snapshot_confidence
    if not 0.0 <= conf <= 1.0:  # also rejects NaN
        problems.append(f"meta.snapshot_confidence: {conf} not in [0, 1]")
    # The Literal type already rejects these at decode time; structs built in Python skip that.
    if meta.trigger_reason not in _KNOWN_REASONS:
        problems.append(f"meta.trigger_reason: unknown reason {meta.trigger_reason!r}")
    gen = snap.generated_at
    if gen <= 0:
        problems.append(f"generated_at: {gen} must be a positive epoch-ms timestamp")
    elif now_ms is not None and gen > now_ms + MAX_CLOCK_SKEW_MS:
        problems.append(
            f"generated_at: {gen} is {gen - now_ms} ms in the future "
            f"(max clock skew {MAX_CLOCK_SKEW_MS} ms)"
        )
    if meta.valid_until <= gen:
        problems.append(f"meta.valid_until: {meta.valid_until} is not after generated_at {gen}")
    elif meta.valid_until > gen + MAX_VALID_AHEAD_MS:
        problems.append(
            f"meta.valid_until: {meta.valid_until} is more than {MAX_VALID_AHEAD_MS} ms "
            f"after generated_at {gen}"
        )


def _check_regime_and_balance(snap: Snapshot, problems: list[str]) -> None:
    regime = snap.regime
    if regime.label not in _KNOWN_REGIMES:
        problems.append(f"regime.label: unknown label {regime.label!r}")
    if regime.previous_label is not None and regime.previous_label not in _KNOWN_REGIMES:
        problems.append(f"regime.previous_label: unknown label {regime.previous_label!r}")
    for name in _BALANCE_FIELDS:
        value = getattr(snap.balance, name)
        if not math.isfinite(value):
            problems.append(f"balance.{name}: {value} is not a finite number")


def _check_scenarios(snap: Snapshot, problems: list[str]) -> None:
    # Hot path (every consumed message): messages naming a field are built only on failure.
    seen: set[str] = set()
    for i, sset in enumerate(snap.scenario_sets):
        if sset.horizon not in _KNOWN_HORIZONS:
            problems.append(f"scenario_sets[{i}].horizon: unknown horizon {sset.horizon!r}")
        elif sset.horizon in seen:
            problems.append(
                f"scenario_sets[{i}].horizon: {sset.horizon!r} appears more than once")
        seen.add(sset.horizon)
        lanes_seen: set[str] = set()
        total = 0.0
        for j, lane in enumerate(sset.lanes):
            if lane.lane not in _KNOWN_LANES:
                problems.append(f"scenario_sets[{i}].lanes[{j}].lane: unknown lane {lane.lane!r}")
            elif lane.lane in lanes_seen:
                problems.append(
                    f"scenario_sets[{i}].lanes[{j}].lane: {lane.lane!r} appears more than once")
            lanes_seen.add(lane.lane)
            if not 0.0 <= lane.probability <= 1.0:
                problems.append(f"scenario_sets[{i}].lanes[{j}].probability: "
                                f"{lane.probability} not in [0, 1]")
            total += lane.probability
        if not abs(total - 1.0) <= PROBABILITY_TOLERANCE:
            problems.append(
                f"scenario_sets[{i}]: probabilities of horizon {sset.horizon!r} sum to "
                f"{total:.9g}, not 1 (tolerance {PROBABILITY_TOLERANCE})"
            )


def problems_of(
    snap: Snapshot, *, now_ms: int | None = None, regions: Collection[str] = REGIONS
) -> list[str]:
    """Every contract problem of ``snap``, in field order; empty when it is valid."""
    problems: list[str] = []
    if snap.region_id not in regions:
        problems.append(f"region_id: unknown region {snap.region_id!r}")
    _check_meta(snap, now_ms, problems)
    _check_regime_and_balance(snap, problems)
    if len(snap.actors) > MAX_ACTORS:
        problems.append(f"actors: {len(snap.actors)} actors, at most {MAX_ACTORS} allowed")
    _check_scenarios(snap, problems)
    if len(snap.evidence) > MAX_EVIDENCE:
        problems.append(f"evidence: {len(snap.evidence)} items, at most {MAX_EVIDENCE} allowed")
    return problems


def validate(
    snap: Snapshot, *, now_ms: int | None = None, regions: Collection[str] = REGIONS
) -> None:
    """Raise :class:`SnapshotInvalid` naming every problem of ``snap`` at once.

    ``now_ms`` is the checker's clock; when given, ``generated_at`` may be at most
    ``MAX_CLOCK_SKEW_MS`` ahead of it.
    """
    problems = problems_of(snap, now_ms=now_ms, regions=regions)
    if problems:
        raise SnapshotInvalid(problems)


# ---------------------------------------------------------------------------------------------
# Codec
# ---------------------------------------------------------------------------------------------

_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(Snapshot)


def encode(snap: Snapshot) -> bytes:
    """Compact JSON bytes of ``snap``."""
    return _ENCODER.encode(snap)


def decode(data: bytes | str) -> Snapshot:
    """Decode JSON into a :class:`Snapshot`, checking types and enum values but not limits."""
    try:
        return _DECODER.decode(data)
    except msgspec.ValidationError as exc:
        # msgspec's message already carries the JSON path, e.g. "... - at `$.meta.valid_until`".
        raise SnapshotInvalid([f"wrong shape: {exc}"]) from exc
    except msgspec.DecodeError as exc:
        raise SnapshotInvalid([f"not valid JSON: {exc}"], undecodable=True) from exc
    except RecursionError as exc:
        # msgspec walks nested arrays and objects recursively, unknown fields included: a 2 KB
        # `{"x":[[[[...]]]]}` exhausts the stack. That is bad input, not a crash.
        raise SnapshotInvalid(["not decodable: nested too deeply"], undecodable=True) from exc
    except (ValueError, MemoryError) as exc:  # any other refusal of the bytes themselves
        raise SnapshotInvalid([f"not decodable: {type(exc).__name__}: {exc}"],
                              undecodable=True) from exc


def parse(
    data: bytes | str, *, now_ms: int | None = None, regions: Collection[str] = REGIONS
) -> Snapshot:
    """Decode and validate in one call: the consumer's entry point for a raw message."""
    snap = decode(data)
    validate(snap, now_ms=now_ms, regions=regions)
    return snap


# ---------------------------------------------------------------------------------------------
# Ids and buckets
# ---------------------------------------------------------------------------------------------


def new_snapshot_id(ms: int, rng: random.Random | None = None) -> str:
    """Time-sortable id: 12 hex digits of epoch ms, '-', 12 random hex digits.

    Pass ``rng`` for reproducible ids (tests, synthetic data); without it the random half comes
    from ``secrets`` so ids from concurrent producers do not collide.
    """
    if not 0 <= ms < _ID_PART_MAX:
        raise ValueError(f"ms: {ms} does not fit in 12 hex digits")
    rand = rng.getrandbits(48) if rng is not None else secrets.randbits(48)
    return f"{ms:012x}-{rand:012x}"


# ---------------------------------------------------------------------------------------------
# The published contract (``regionstream schema``)
# ---------------------------------------------------------------------------------------------

# The rules ``validate`` checks that a JSON Schema cannot state; published beside the schema
# (``x-regionstream-rules``) so that a producer written from the schema alone knows them.
CROSS_FIELD_RULES = (
    f"generated_at is a positive epoch-ms time, at most {MAX_CLOCK_SKEW_MS // 1000} s ahead of "
    "the consumer's clock",
    f"meta.valid_until is after generated_at and at most {MAX_VALID_AHEAD_MS // 3_600_000} h "
    "after it",
    "scenario_sets: each horizon at most once; in a set each lane at most once, the lane "
    f"probabilities summing to 1 (within {PROBABILITY_TOLERANCE})",
    "balance: every figure a finite number",
    "the entry's routing fields (region, snapshot_id, generated_at, trigger_reason) equal the "
    "payload's (the producer writes them; see README Snapshot format)",
    "generated more than the consumer's retention ago (REGIONSTREAM_RETENTION_S, 90 days) it "
    "is dead-lettered as past-retention",
)


def json_schema() -> dict[str, object]:
    """The snapshot's JSON Schema (draft 2020-12), generated by msgspec from the structs that
    decode it, with what ``validate`` adds on top: the regions, the snapshot id pattern, the
    list bounds and confidence range; and the cross-field rules as ``x-regionstream-rules``."""
    schema: dict[str, object] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"regionstream snapshot, schema version {SCHEMA_VERSION}",
        **msgspec.json.schema(Snapshot),
    }
    defs = schema["$defs"]
    assert isinstance(defs, dict)
    snap, meta = defs["Snapshot"]["properties"], defs["SnapshotMeta"]["properties"]
    snap["region_id"] |= {"enum": list(REGIONS)}
    snap["generated_at"] |= {"exclusiveMinimum": 0, "description": "epoch milliseconds"}
    snap["actors"] |= {"maxItems": MAX_ACTORS}
    snap["evidence"] |= {"maxItems": MAX_EVIDENCE}
    meta["snapshot_id"] |= {"pattern": "^" + _SNAPSHOT_ID_RE.pattern + "$",
                            "examples": ["01a20df9a266-dfbeeaaf6bb1"]}
    meta["snapshot_confidence"] |= {"minimum": 0, "maximum": 1}
    meta["valid_until"] |= {"description": "epoch milliseconds, after generated_at, at most "
                                           f"{MAX_VALID_AHEAD_MS // 3_600_000} h after it"}
    schema["x-regionstream-rules"] = list(CROSS_FIELD_RULES)
    return schema
