"""Synthetic regional snapshots: realistic in shape, size and drift, deterministic for a seed.

Stands in for upstream's scoring model so the pipeline can run end to end without external
feeds. Each region keeps state across cycles (a drifting balance vector, a regime that shifts now
and then, triggers that arm, fire and go dormant, corridors that close and reopen) so that a run
looks like a sequence of related snapshots rather than independent noise, and so that every
``trigger_reason`` shows up with a plausible frequency.

Everything here draws from one ``random.Random``; the same seed and the same sequence of calls
give byte-identical snapshots.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec

from shared.schema import (
    HORIZONS,
    LANES,
    MAX_ACTORS,
    MAX_EVIDENCE,
    MAX_VALID_AHEAD_MS,
    REGION_NAMES,
    REGIONS,
    TRIGGER_REASONS,
    Actor,
    AirportStatus,
    AirspaceStatus,
    Balance,
    Evidence,
    FlightCorridor,
    Horizon,
    Lane,
    LeverageEdge,
    Mobility,
    Narrative,
    Regime,
    RegimeLabel,
    ScenarioLane,
    ScenarioSet,
    Snapshot,
    SnapshotMeta,
    TransmissionPath,
    Trigger,
    TriggerReason,
    Triggers,
    encode,
    new_snapshot_id,
)
from shared.settings import DEDUP_WINDOW_S

# Upstream documents snapshots of 3-12 KB; the builder aims inside that band by construction and
# trims evidence as a last resort so no seed can ever produce an out-of-band message.
MAX_ENCODED_BYTES = 12 * 1024
MIN_ENCODED_BYTES = 3 * 1024
CYCLE_MS = 6 * 3600 * 1000  # upstream runs every 6 h; cycles are nominally this far apart
EVIDENCE_MAX_AGE_MS = 48 * 3600 * 1000  # evidence cited is at most two days old
TEMPLATES_PER_REGION = 4
_MASK48 = (1 << 48) - 1
MIN_ACTORS = 3
MIN_EVIDENCE = 5
# Per-cycle odds of the events that give a non-scheduled trigger_reason. Small on purpose: upstream
# is mostly the 6-hourly cron (scheduled_6h), with event-driven runs in between.
P_REGIME_SHIFT = 0.07
P_TRIGGER_FIRE = 0.025  # per watching trigger
P_TRIGGER_COOL = 0.25  # per active trigger: active -> dormant
P_TRIGGER_ARM = 0.15  # per dormant trigger: dormant -> watching
P_CORRIDOR_BREAK = 0.03
P_CORRIDOR_REOPEN = 0.3
P_LEVERAGE_SHIFT = 0.03
BALANCE_NOISE = 0.04  # std-dev of the per-cycle random walk of each balance axis

_PRESSURE_AXES = (
    "coercive_pressure",
    "domestic_fragility",
    "capital_stress",
    "energy_vulnerability",
)
_BUFFER_AXES = ("alliance_cohesion", "maritime_access", "energy_leverage")

# Where each regime pulls the pressure axes (buffers are pulled to 1 - this); and which labels a
# regime tends to move to: regimes shift to neighbours, not at random.
_REGIME_PRESSURE: dict[RegimeLabel, float] = {
    "calm": 0.2,
    "managed_deescalation": 0.35,
    "stressed_equilibrium": 0.45,
    "coercive_stalemate": 0.6,
    "fragmentation_risk": 0.7,
    "escalation_ladder": 0.85,
}
_REGIME_NEXT: dict[RegimeLabel, tuple[RegimeLabel, ...]] = {
    "calm": ("stressed_equilibrium",),
    "stressed_equilibrium": ("calm", "coercive_stalemate", "fragmentation_risk"),
    "coercive_stalemate": ("escalation_ladder", "managed_deescalation", "stressed_equilibrium"),
    "fragmentation_risk": ("escalation_ladder", "stressed_equilibrium"),
    "escalation_ladder": ("managed_deescalation", "coercive_stalemate", "fragmentation_risk"),
    "managed_deescalation": ("calm", "stressed_equilibrium", "coercive_stalemate"),
}
# Base lane weights per regime, in LANES order (base, escalation, containment, fragmentation).
_LANE_WEIGHTS: dict[RegimeLabel, tuple[float, float, float, float]] = {
    "calm": (0.65, 0.08, 0.2, 0.07),
    "managed_deescalation": (0.45, 0.12, 0.33, 0.1),
    "stressed_equilibrium": (0.5, 0.18, 0.2, 0.12),
    "coercive_stalemate": (0.4, 0.25, 0.2, 0.15),
    "fragmentation_risk": (0.35, 0.2, 0.15, 0.3),
    "escalation_ladder": (0.3, 0.4, 0.18, 0.12),
}
_HORIZON_SPREAD: dict[Horizon, float] = {"24h": 0.1, "7d": 0.25, "30d": 0.45}
_NARRATIVE_ENGINES = (
    ("groq", "llama-3.1-8b-instant"),
    ("openrouter", "google/gemini-2.0-flash-001"),
    ("template", "rules-v3"),
)
_INPUTS = (
    "acled",
    "gdelt",
    "ais",
    "adsb",
    "notam",
    "fx",
    "energy_prices",
    "sanctions",
    "outages",
    "ucdp",
    "protests",
    "cyber",
)


@dataclass(frozen=True, slots=True)
class _Vocab:
    """Region-specific nouns the templates draw from."""

    actors: tuple[tuple[str, str], ...]  # (name, role)
    hotspots: tuple[str, ...]
    chokepoints: tuple[str, ...]
    firs: tuple[tuple[str, str], ...]  # (ICAO FIR code, name)
    corridors: tuple[str, ...]
    airports: tuple[tuple[str, str], ...]  # (IATA, name)
    commodities: tuple[str, ...]
    triggers: tuple[tuple[str, str], ...]  # (description, indicator)


# Data tables, hand-wrapped to read as tables.
# fmt: off
_VOCAB: dict[str, _Vocab] = {
    "mena": _Vocab(
        actors=(("Islamic Revolutionary Guard Corps", "state-military"),
                ("Israel Defense Forces", "state-military"), ("Houthi movement", "non-state armed"),
                ("Hezbollah", "non-state armed"), ("Saudi Ministry of Energy", "energy"),
                ("Egyptian Suez Canal Authority", "infrastructure"),
                ("Qatar mediation office", "mediator"),
                ("US Central Command", "external-military"),
                ("Hamas political bureau", "non-state armed"),
                ("Turkish Foreign Ministry", "diplomatic"), ("Iraqi PMF coordination", "militia"),
                ("UAE sovereign fund", "financial")),
        hotspots=("Gaza", "southern Lebanon", "the Red Sea", "Hodeidah", "the Golan", "Erbil",
                  "the Sinai", "Idlib"),
        chokepoints=("Strait of Hormuz", "Bab el-Mandeb", "Suez Canal"),
        firs=(("OIIX", "Tehran FIR"), ("OLBB", "Beirut FIR"), ("OYSC", "Sanaa FIR"),
              ("LLLL", "Tel Aviv FIR"), ("ORBB", "Baghdad FIR")),
        corridors=("Gulf-Europe via Iraq", "Red Sea overflight", "Levant coastal",
                   "Caspian bypass"),
        airports=(("DXB", "Dubai"), ("DOH", "Doha"), ("TLV", "Tel Aviv"), ("BEY", "Beirut"),
                  ("CAI", "Cairo"), ("AMM", "Amman"), ("IKA", "Tehran Imam Khomeini")),
        commodities=("Brent crude", "LNG cargoes", "tanker insurance", "Suez transit fees"),
        triggers=(("Tanker seizure near Hormuz", "hormuz_incidents_7d"),
                  ("Houthi strike on commercial shipping", "red_sea_attacks_7d"),
                  ("Cross-border rocket exchange escalates", "lebanon_border_strikes_24h"),
                  ("Embassy drawdown announced", "embassy_drawdowns"),
                  ("OPEC+ emergency meeting", "opec_statements"),
                  ("Ceasefire talks collapse", "mediation_breakdown_score"),
                  ("Airspace closure over Iraq", "iraq_fir_closures"),
                  ("Rial devaluation spike", "irr_fx_move_pct")),
    ),
    "east-asia": _Vocab(
        actors=(("People's Liberation Army Eastern Theater", "state-military"),
                ("Taiwan Ministry of National Defense", "state-military"),
                ("Japan Self-Defense Forces", "state-military"),
                ("US Indo-Pacific Command", "external-military"),
                ("Korean People's Army", "state-military"), ("Philippine Coast Guard", "maritime"),
                ("China Coast Guard", "maritime"), ("TSMC", "industrial"),
                ("ASEAN secretariat", "mediator"),
                ("People's Bank of China", "financial"), ("South Korean NIS", "intelligence")),
        hotspots=("the Taiwan Strait", "Scarborough Shoal", "Second Thomas Shoal", "the Yellow Sea",
                  "the Senkaku Islands", "the DMZ", "Kinmen"),
        chokepoints=("Taiwan Strait", "Malacca Strait", "Luzon Strait", "Bashi Channel"),
        firs=(("RCAA", "Taipei FIR"), ("ZSHA", "Shanghai FIR"), ("RJJJ", "Fukuoka FIR"),
              ("RKRR", "Incheon FIR"), ("RPHI", "Manila FIR")),
        corridors=("Trans-Pacific north", "Taiwan Strait overflight", "South China Sea trunk",
                   "Polar Europe-Japan"),
        airports=(("TPE", "Taipei Taoyuan"), ("HKG", "Hong Kong"), ("NRT", "Tokyo Narita"),
                  ("ICN", "Seoul Incheon"), ("MNL", "Manila"), ("PVG", "Shanghai Pudong")),
        commodities=("advanced semiconductors", "rare earths", "container freight",
                     "LNG spot cargoes"),
        triggers=(("Live-fire drills around Taiwan", "pla_exercise_days"),
                  ("Ballistic missile launch over Japan", "dprk_launches_30d"),
                  ("Water-cannon incident at a shoal", "scs_coast_guard_incidents"),
                  ("Export-control escalation on chips", "export_control_actions"),
                  ("ADIZ incursion surge", "adiz_incursions_24h"),
                  ("Yuan fixing breaks band", "cny_fixing_deviation"),
                  ("Undersea cable cut near Matsu", "cable_faults_7d"),
                  ("Carrier group transits the strait", "carrier_transits")),
    ),
    "europe": _Vocab(
        actors=(("Russian Armed Forces", "state-military"),
                ("Armed Forces of Ukraine", "state-military"),
                ("NATO Allied Command", "alliance"), ("European Commission", "economic"),
                ("European Central Bank", "financial"), ("Gazprom", "energy"),
                ("Belarusian government", "state"),
                ("Polish Ministry of Defence", "state-military"),
                ("Turkish Straits authority", "infrastructure"),
                ("OSCE monitoring mission", "mediator"),
                ("Hungarian government", "state"), ("Wagner successor units", "non-state armed")),
        hotspots=("Donetsk", "Zaporizhzhia", "the Black Sea", "Kaliningrad", "the Suwalki Gap",
                  "Transnistria", "the Baltic", "Kharkiv"),
        chokepoints=("Bosphorus", "Danish Straits", "Kerch Strait", "Gulf of Finland"),
        firs=(("UKBV", "Kyiv FIR"), ("UMMV", "Minsk FIR"), ("UUWV", "Moscow FIR"),
              ("EPWW", "Warsaw FIR"), ("LUUU", "Chisinau FIR")),
        corridors=("Trans-Siberian bypass", "Black Sea southern", "Baltic-Nordic",
                   "Caucasus east-west"),
        airports=(("WAW", "Warsaw Chopin"), ("HEL", "Helsinki"), ("IST", "Istanbul"),
                  ("RIX", "Riga"), ("FRA", "Frankfurt"), ("KIV", "Chisinau")),
        commodities=("TTF gas", "Black Sea grain", "diesel", "fertiliser", "electricity futures"),
        triggers=(("Strike on energy grid", "grid_strikes_7d"),
                  ("GPS jamming over the Baltic", "gnss_interference_reports"),
                  ("Drone incursion into NATO airspace", "nato_airspace_violations"),
                  ("Grain corridor vessel hit", "black_sea_shipping_incidents"),
                  ("Gas storage below seasonal band", "eu_gas_storage_gap_pct"),
                  ("Undersea pipeline damage", "baltic_infra_incidents"),
                  ("Sanctions package stalls", "sanctions_vote_delay_days"),
                  ("Mobilisation decree", "mobilisation_signals")),
    ),
    "north-america": _Vocab(
        actors=(("US Department of Defense", "state-military"), ("US Treasury OFAC", "financial"),
                ("Federal Reserve", "financial"), ("Mexican federal government", "state"),
                ("Canadian Armed Forces", "state-military"), ("NORAD", "alliance"),
                ("Sinaloa cartel factions", "non-state armed"), ("CISA", "cyber"),
                ("US Congress appropriations", "legislative"), ("Texas state government", "state")),
        hotspots=("the southern border", "the Arctic approaches", "Sinaloa", "the Gulf of Mexico",
                  "the Great Lakes grid", "Washington"),
        chokepoints=("Panama approaches", "Northwest Passage", "US-Mexico rail crossings"),
        firs=(("KZAK", "Oakland Oceanic"), ("CZUL", "Montreal FIR"), ("MMFR", "Mexico FIR"),
              ("KZNY", "New York Oceanic"), ("PAZA", "Anchorage FIR")),
        corridors=("North Atlantic tracks", "Transborder Canada", "Mexico-US trunk", "Polar Asia"),
        airports=(("JFK", "New York JFK"), ("ORD", "Chicago O'Hare"), ("LAX", "Los Angeles"),
                  ("YYZ", "Toronto Pearson"), ("MEX", "Mexico City"), ("IAH", "Houston")),
        commodities=("WTI crude", "Henry Hub gas", "US Treasuries", "auto parts", "avocados"),
        triggers=(("Tariff escalation announced", "tariff_actions_7d"),
                  ("Ransomware hit on pipeline operator", "critical_infra_cyber_incidents"),
                  ("Border crossing closure", "border_wait_hours"),
                  ("Balloon or drone over bases", "airspace_anomalies"),
                  ("Debt-ceiling deadline", "treasury_x_date_days"),
                  ("Hurricane landfall on Gulf refineries", "refinery_outage_pct"),
                  ("Cartel violence spike", "homicides_sinaloa_7d"),
                  ("Grid emergency declared", "eea_level")),
    ),
    "south-asia": _Vocab(
        actors=(("Indian Army Northern Command", "state-military"),
                ("Pakistan Army GHQ", "state-military"),
                ("Tehrik-i-Taliban Pakistan", "non-state armed"),
                ("Taliban administration", "state"),
                ("Reserve Bank of India", "financial"), ("Bangladesh interim government", "state"),
                ("Sri Lanka Ports Authority", "infrastructure"),
                ("Chinese PLA Western Theater", "external-military"),
                ("Baloch Liberation Army", "non-state armed"), ("IMF country team", "financial")),
        hotspots=("the Line of Control", "Ladakh", "Khyber Pakhtunkhwa", "Balochistan",
                  "Manipur", "the Bay of Bengal", "Dhaka"),
        chokepoints=("Strait of Hormuz approaches", "Palk Strait", "Ten Degree Channel"),
        firs=(("OPLR", "Lahore FIR"), ("OPKR", "Karachi FIR"), ("VIDF", "Delhi FIR"),
              ("OAKX", "Kabul FIR"), ("VGFR", "Dhaka FIR")),
        corridors=("Europe-India via Pakistan", "Afghanistan overflight", "Bay of Bengal trunk",
                   "Gulf-India west"),
        airports=(("DEL", "Delhi"), ("BOM", "Mumbai"), ("KHI", "Karachi"), ("LHE", "Lahore"),
                  ("DAC", "Dhaka"), ("CMB", "Colombo")),
        commodities=("rice exports", "remittances", "coal imports", "textile orders"),
        triggers=(("Cross-LoC artillery exchange", "loc_ceasefire_violations"),
                  ("Airspace closure to rival carriers", "fir_bans"),
                  ("IMF tranche delayed", "imf_review_delay_days"),
                  ("Militant attack on CPEC site", "cpec_attacks_30d"),
                  ("Mass protests in the capital", "protest_events_7d"),
                  ("Border standoff in Ladakh", "lac_patrol_incidents"),
                  ("Rupee reserve cover falls", "fx_reserve_import_months"),
                  ("Cyclone landfall", "cyclone_category")),
    ),
    "latam": _Vocab(
        actors=(("Venezuelan government", "state"), ("Brazilian Foreign Ministry", "diplomatic"),
                ("Colombian armed forces", "state-military"), ("ELN", "non-state armed"),
                ("Tren de Aragua", "criminal"), ("Panama Canal Authority", "infrastructure"),
                ("Argentine Economy Ministry", "economic"), ("Mexican navy", "state-military"),
                ("Ecuadorian security cabinet", "state"), ("Chinese state lenders", "financial"),
                ("Haitian transitional council", "state")),
        hotspots=("the Essequibo", "Catatumbo", "Port-au-Prince", "Guayaquil", "the Darien Gap",
                  "Rosario", "Caracas"),
        chokepoints=("Panama Canal", "Strait of Magellan", "Caribbean passages"),
        firs=(("SVZM", "Maiquetia FIR"), ("SKED", "Bogota FIR"), ("MTEG", "Port-au-Prince FIR"),
              ("SEFG", "Guayaquil FIR"), ("MPZL", "Panama FIR")),
        corridors=("Caribbean north-south", "Andean trunk", "Southern Cone", "Atlantic-Europe"),
        airports=(("BOG", "Bogota"), ("PTY", "Panama Tocumen"), ("GRU", "Sao Paulo"),
                  ("CCS", "Caracas"), ("GYE", "Guayaquil"), ("EZE", "Buenos Aires")),
        commodities=("copper", "lithium", "soybeans", "Venezuelan crude", "canal transits"),
        triggers=(("Troop build-up on the Essequibo", "guyana_border_incidents"),
                  ("Canal draft restrictions tightened", "gatun_lake_level_m"),
                  ("Prison riot spreads", "prison_incidents_7d"),
                  ("Peso parallel rate gap widens", "fx_gap_pct"),
                  ("Election result disputed", "electoral_disputes"),
                  ("Migrant surge at the Darien", "darien_crossings_7d"),
                  ("Gang blockade of fuel terminal", "fuel_terminal_blockades"),
                  ("Sanctions waiver revoked", "oil_license_status")),
    ),
    "sub-saharan-africa": _Vocab(
        actors=(("Sudanese Armed Forces", "state-military"),
                ("Rapid Support Forces", "non-state armed"),
                ("M23", "non-state armed"), ("Congolese armed forces", "state-military"),
                ("Alliance of Sahel States", "alliance"), ("Africa Corps", "external-military"),
                ("African Union Peace and Security Council", "mediator"),
                ("ECOWAS Commission", "mediator"),
                ("al-Shabaab", "non-state armed"), ("Ethiopian federal government", "state"),
                ("Nigerian Central Bank", "financial"), ("JNIM", "non-state armed")),
        hotspots=("El Fasher", "Goma", "North Kivu", "the Liptako-Gourma", "Amhara", "Mogadishu",
                  "the Niger Delta", "Khartoum"),
        chokepoints=("Bab el-Mandeb", "Mozambique Channel", "Gulf of Guinea lanes"),
        firs=(("HSSS", "Khartoum FIR"), ("FZZA", "Kinshasa FIR"), ("DRRR", "Niamey FIR"),
              ("HCSM", "Mogadishu FIR"), ("GOOO", "Dakar FIR")),
        corridors=("Trans-Sahara", "East Africa coastal", "Central Africa overflight",
                   "Gulf of Guinea"),
        airports=(("ADD", "Addis Ababa"), ("NBO", "Nairobi"), ("LOS", "Lagos"),
                  ("JNB", "Johannesburg"),
                  ("GOM", "Goma"), ("BKO", "Bamako")),
        commodities=("cobalt", "gold", "cocoa", "wheat imports", "Niger crude exports"),
        triggers=(("Siege of a provincial capital", "urban_sieges"),
                  ("Humanitarian corridor closed", "aid_access_denials"),
                  ("Coup attempt reported", "coup_signals"),
                  ("Mining convoy ambushed", "mining_attacks_30d"),
                  ("Naira devaluation step", "ngn_fx_move_pct"),
                  ("Piracy attack in the Gulf of Guinea", "piracy_incidents_30d"),
                  ("Famine classification raised", "ipc_phase"),
                  ("Peacekeeping mandate not renewed", "mission_drawdown_signals")),
    ),
    "global": _Vocab(
        actors=(("UN Security Council", "multilateral"), ("US government", "state"),
                ("Chinese government", "state"), ("Russian government", "state"),
                ("European Union", "economic"), ("OPEC+", "energy"), ("IMF", "financial"),
                ("G7", "multilateral"), ("BRICS secretariat", "multilateral"),
                ("World Food Programme", "humanitarian"), ("IAEA", "multilateral"),
                ("Federal Reserve", "financial")),
        hotspots=("Ukraine", "Gaza", "the Taiwan Strait", "the Red Sea", "Sudan", "the Sahel",
                  "the Korean peninsula"),
        chokepoints=("Strait of Hormuz", "Malacca Strait", "Suez Canal", "Panama Canal",
                     "Bab el-Mandeb", "Bosphorus"),
        firs=(("OIIX", "Tehran FIR"), ("UKBV", "Kyiv FIR"), ("RCAA", "Taipei FIR"),
              ("HSSS", "Khartoum FIR"), ("OYSC", "Sanaa FIR")),
        corridors=("Europe-Asia via Central Asia", "North Atlantic tracks", "Gulf hub transfers",
                   "Trans-Pacific", "Polar routes"),
        airports=(("DXB", "Dubai"), ("LHR", "London Heathrow"), ("SIN", "Singapore"),
                  ("IST", "Istanbul"), ("HKG", "Hong Kong"), ("JFK", "New York JFK")),
        commodities=("Brent crude", "container freight rates", "wheat", "gold", "semiconductors",
                     "US dollar liquidity"),
        triggers=(("Two chokepoints disrupted at once", "chokepoint_disruptions"),
                  ("Security Council veto on ceasefire", "unsc_vetoes_30d"),
                  ("Oil above stress threshold", "brent_usd"),
                  ("Nuclear facility incident", "iaea_alerts"),
                  ("Secondary sanctions on major bank", "secondary_sanctions_actions"),
                  ("Global shipping rates spike", "drewry_wci_change_pct"),
                  ("Food price index breaks high", "fao_food_index"),
                  ("Major cyber attack on payment rails", "payment_outages")),
    ),
}

# Stable slug actor ids ("us-central-command"), unique within a region.# fmt: on

_ACTOR_IDS: dict[str, str] = {
    name: "-".join(re.findall(r"[a-z0-9]+", name.lower()))
    for vocab in _VOCAB.values()
    for name, _ in vocab.actors
}

# fmt: off
_EVIDENCE_SOURCES = (
    "Reuters wire", "AP wire", "AFP wire", "ACLED event feed", "GDELT event stream",
    "AIS vessel tracks", "OpenSky ADS-B", "FAA/EUROCONTROL NOTAM feed", "Sentinel-2 imagery",
    "Planet imagery", "central bank statement", "defence ministry statement",
    "port authority bulletin", "IEA oil market report", "local media monitor", "OSINT analyst note",
    "UN OCHA situation report", "NetBlocks connectivity", "Bloomberg markets",
    "Telegram channel monitor",
)
_EVIDENCE_TEMPLATES = (
    "{actor} reported movement near {hotspot}; corroborated by two independent feeds.",
    "Vessel traffic through {chokepoint} down {pct}% versus the 30-day mean.",
    "{actor} statement signals readiness to escalate over {hotspot}.",
    "Imagery shows new equipment staging around {hotspot}.",
    "{commodity} moved {pct}% intraday on reports from {hotspot}.",
    "NOTAM restricts altitudes over {fir}; carriers filing reroutes.",
    "Talks involving {actor} adjourned without a joint communique.",
    "Connectivity drop of {pct}% observed in areas around {hotspot}.",
    "{actor} announced new measures affecting {commodity}.",
    "Local reports of clashes near {hotspot}; casualty figures unverified.",
    "Insurers widened war-risk cover for {chokepoint} transits.",
    "{actor} and {actor2} held an unscheduled call on {hotspot}.",
)
_STANCES = ("escalatory", "status-quo", "hedging", "conciliatory", "opportunistic", "defensive")
_MECHANISMS = ("sanctions exposure", "energy supply", "military deterrence", "financing",
               "market access", "basing rights", "proxy support", "diplomatic cover",
               "shipping access", "technology supply")
_DOMAINS = ("military", "energy", "finance", "trade", "diplomacy", "cyber", "maritime", "aviation")
_SEVERITIES = ("low", "moderate", "elevated", "high", "critical")
_PRESSURE_PHRASES = (
    "coercive signalling around {hotspot}", "fragile domestic politics", "capital flight",
    "energy import dependence on {commodity}", "sanctions pressure",
    "armed activity near {hotspot}",
    "shipping risk at {chokepoint}", "inflation in food and fuel",
)
_BUFFER_PHRASES = (
    "alliance backing for key actors", "strategic reserves of {commodity}",
    "open channels via mediators",
    "diversified trade routes", "central bank buffers", "maritime access through {chokepoint}",
    "external financing lines",
)
_SITUATION = (
    "{region} sits in a {regime} regime, with attention on {hotspot} and {hotspot2}.",
    "Activity by {actor} around {hotspot} keeps pressure elevated while {actor2} hedges.",
    "Shipping through {chokepoint} remains the main channel by which local stress spreads outward.",
    "Markets price {commodity} risk cautiously; no broad flight to safety is visible yet.",
    "Over the last cycle {count} triggers were active and {watching} are on watch.",
    "Airspace restrictions over {fir} continue to push carriers onto longer routings.",
)
_BALANCE_TEXT = (
    "Net balance stands at {net:+.2f}: pressures ({pressure}) outweigh buffers ({buffer}).",
    "Coercive pressure reads {coercive:.2f} against alliance cohesion of {cohesion:.2f}.",
    "Buffers such as {buffer} absorb part of the strain, but {pressure} is rising.",
    "Energy leverage of {leverage:.2f} gives {actor} room to raise costs on rivals.",
)
_OUTLOOK = {
    "24h": ("Expect continuity around {hotspot}; the base lane holds at {base:.0%}.",
            "Watch {actor} statements over the next day; escalation odds are {esc:.0%}.",
            "Short-term risk centres on {chokepoint} traffic and any NOTAM changes over {fir}."),
    "7d": ("Over the week, containment ({cont:.0%}) depends on talks involving {actor}.",
           "A move by {actor} around {hotspot} could tip the week toward escalation ({esc:.0%}).",
           "{commodity} prices are the leading indicator to watch through the week."),
    "30d": ("Within a month, fragmentation risk ({frag:.0%}) grows if {pressure} persists.",
            "The month turns on whether {actor} and {actor2} keep channels open.",
            "Seasonal and financing pressure on {commodity} shapes the 30-day picture."),
}
_LANE_SUMMARY = {
    "base": "Status quo around {hotspot}; {actor} holds course.",
    "escalation": "{actor} raises pressure at {hotspot}; {actor2} responds.",
    "containment": "Mediation keeps {hotspot} incidents local.",
    "fragmentation": "Control of {hotspot} splinters; {commodity} flows erratic.",
}

# fmt: on


@dataclass(slots=True)
class _TriggerState:
    id: str
    description: str
    indicator: str
    threshold: float
    state: str  # "active" | "watching" | "dormant"


@dataclass(slots=True)
class _RegionState:
    """What one region carries from one cycle to the next."""

    label: RegimeLabel
    previous_label: RegimeLabel | None = None
    transitioned_at: int | None = None
    driver: str = ""
    axes: dict[str, float] = field(default_factory=dict)
    triggers: list[_TriggerState] = field(default_factory=list)
    closed_corridors: set[str] = field(default_factory=set)


def _clip(x: float, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo if x < lo else hi if x > hi else x


def count_reach_ms(count: int, regions: int, dedup_window_ms: int) -> int:
    """How far back a load run of ``count`` snapshots reaches (see snapshot_for_count)."""
    return max(0, (count - 1) // (regions * len(TRIGGER_REASONS))) * dedup_window_ms


class SyntheticSource:
    """Builds realistic regional snapshots; one instance is one reproducible "world"."""

    def __init__(self, regions: Sequence[str] = REGIONS, *, seed: int | None = None,
                 dedup_window_ms: int = DEDUP_WINDOW_S * 1000) -> None:
        unknown = [r for r in regions if r not in _VOCAB]
        if unknown:
            raise ValueError(f"regions: no vocabulary for {unknown}")
        if not regions:
            raise ValueError("regions: at least one region is needed")
        self.regions: tuple[str, ...] = tuple(regions)
        # snapshot_for_count steps back one dedup bucket at a time: it must be the bucket the
        # consumer deduplicates by (the deployment's setting), or its snapshots collide.
        self.dedup_window_ms = dedup_window_ms
        self._seed = seed
        self._rng = random.Random(seed)
        self._states: dict[str, _RegionState] = {r: self._initial_state(r) for r in self.regions}
        self._templates: dict[str, list[Snapshot]] | None = None
        # Mixed into snapshot_for_count ids so two load runs with different seeds (or none)
        # do not mint the same ids; drawn from its own generator to leave self._rng's stream
        # (and so cycle() output) unchanged.
        self._id_salt = random.Random(seed).getrandbits(48) if seed is not None else _fresh_salt()

    # -- public API -------------------------------------------------------------------------

    def cycle(self, now_ms: int) -> list[Snapshot]:
        """One snapshot per region, all generated at ``now_ms``, in region order."""
        return [self.snapshot(region, now_ms) for region in self.regions]

    def snapshot(self, region: str, generated_at: int) -> Snapshot:
        """Advance ``region`` by one cycle and build its snapshot at ``generated_at``."""
        state = self._states[region]
        reason = self._advance(region, state, generated_at)
        snap = self._build(region, state, generated_at, reason)
        return _fit_size(snap)

    def snapshot_for_count(self, i: int, base_ms: int) -> Snapshot:
        """The ``i``-th snapshot of a load run: round-robin over regions, then trigger reasons,
        each (region, trigger_reason, bucket) taken once, buckets of ``dedup_window_ms``.

        ``k = i // (len(regions) * len(TRIGGER_REASONS))`` steps back ``k`` dedup buckets from
        ``base_ms``, so every snapshot of a run survives dedup and all lie in the past; cycling
        the trigger reasons keeps 100k snapshots within 26 days of 15-minute buckets, well inside
        the 90-day retention (``reach_ms`` says how far a run reaches back). Built by
        re-stamping one of a few pre-built templates, which keeps it to a few microseconds.
        """
        n = len(self.regions)
        region = self.regions[i % n]
        slot = i // n
        reason = TRIGGER_REASONS[slot % len(TRIGGER_REASONS)]
        k = slot // len(TRIGGER_REASONS)
        generated_at = base_ms - k * self.dedup_window_ms
        template = self._region_templates(base_ms)[region][k % TEMPLATES_PER_REGION]
        return _restamp(template, generated_at, i, self._id_salt, reason)

    def reach_ms(self, count: int) -> int:
        """How far before ``base_ms`` the oldest of ``count`` load-run snapshots lies."""
        return count_reach_ms(count, len(self.regions), self.dedup_window_ms)

    # -- state ------------------------------------------------------------------------------

    def _initial_state(self, region: str) -> _RegionState:
        rng = self._rng
        label: RegimeLabel = rng.choice(tuple(_REGIME_PRESSURE))
        state = _RegionState(label=label)
        centre = _REGIME_PRESSURE[label]
        for axis in _PRESSURE_AXES:
            state.axes[axis] = _clip(rng.gauss(centre, 0.12))
        for axis in _BUFFER_AXES:
            state.axes[axis] = _clip(rng.gauss(1.0 - centre, 0.12))
        for n, (desc, indicator) in enumerate(_VOCAB[region].triggers):
            s = rng.choices(("active", "watching", "dormant"), weights=(1, 3, 4))[0]
            threshold = round(rng.uniform(1, 100), 1)
            state.triggers.append(_TriggerState(f"trg{n}", desc, indicator, threshold, s))
        return state

    def _advance(self, region: str, state: _RegionState, now_ms: int) -> TriggerReason:
        """Move the region's world one cycle on; return what kind of event caused this run."""
        rng = self._rng
        vocab = _VOCAB[region]
        fired = self._step_triggers(state)
        shifted = rng.random() < P_REGIME_SHIFT + (0.1 if fired else 0.0)
        if shifted:
            state.previous_label = state.label
            state.label = rng.choice(_REGIME_NEXT[state.label])
            state.transitioned_at = now_ms
            cause = fired.description if fired else rng.choice(vocab.triggers)[0]
            state.driver = f"{cause} moved {rng.choice(vocab.actors)[0]} toward a new posture"
        broke = False
        for corridor in vocab.corridors:
            if corridor in state.closed_corridors:
                if rng.random() < P_CORRIDOR_REOPEN:
                    state.closed_corridors.discard(corridor)
            elif rng.random() < P_CORRIDOR_BREAK:
                state.closed_corridors.add(corridor)
                broke = True
        leverage = rng.random() < P_LEVERAGE_SHIFT
        self._drift_axes(state, jump=leverage)
        if shifted:
            return "regime_shift"
        if fired:
            return "trigger_activation"
        if broke:
            return "corridor_break"
        return "leverage_shift" if leverage else "scheduled_6h"

    def _step_triggers(self, state: _RegionState) -> _TriggerState | None:
        rng = self._rng
        fired: _TriggerState | None = None
        for trig in state.triggers:
            roll = rng.random()
            if trig.state == "watching" and roll < P_TRIGGER_FIRE:
                trig.state = "active"
                fired = fired or trig
            elif trig.state == "active" and roll < P_TRIGGER_COOL:
                trig.state = "dormant"
            elif trig.state == "dormant" and roll < P_TRIGGER_ARM:
                trig.state = "watching"
        return fired

    def _drift_axes(self, state: _RegionState, *, jump: bool) -> None:
        """Random walk toward the regime's centre; a leverage shift is a jump in energy leverage."""
        rng = self._rng
        centre = _REGIME_PRESSURE[state.label]
        for axis in _PRESSURE_AXES:
            v = state.axes[axis]
            state.axes[axis] = _clip(v + 0.2 * (centre - v) + rng.gauss(0, BALANCE_NOISE))
        for axis in _BUFFER_AXES:
            v = state.axes[axis]
            state.axes[axis] = _clip(v + 0.2 * (1 - centre - v) + rng.gauss(0, BALANCE_NOISE))
        if jump:
            state.axes["energy_leverage"] = _clip(
                state.axes["energy_leverage"] + rng.choice((-0.3, 0.3))
            )

    # -- building ---------------------------------------------------------------------------

    def _build(
        self, region: str, state: _RegionState, now_ms: int, reason: TriggerReason
    ) -> Snapshot:
        rng = self._rng
        vocab = _VOCAB[region]
        actors = self._actors(region, vocab)
        words = _Words(rng, region, vocab, actors, state)
        scenarios = self._scenarios(state, words)
        balance = self._balance(state, words)
        return Snapshot(
            region_id=region,
            generated_at=now_ms,
            meta=self._meta(now_ms, reason),
            regime=Regime(
                label=state.label,
                previous_label=state.previous_label,
                transitioned_at=state.transitioned_at,
                transition_driver=state.driver,
            ),
            balance=balance,
            actors=actors,
            leverage_edges=self._edges(actors),
            scenario_sets=scenarios,
            transmission_paths=self._paths(vocab),
            triggers=self._triggers(state),
            mobility=self._mobility(state, vocab),
            evidence=self._evidence(now_ms, words),
            narrative=_narrative(words, balance, scenarios),
        )

    def _meta(self, now_ms: int, reason: TriggerReason) -> SnapshotMeta:
        rng = self._rng
        missing = rng.sample(_INPUTS, rng.choice((0, 0, 0, 1, 1, 2)))
        stale = rng.sample(_INPUTS, rng.choice((0, 0, 1, 2, 3)))
        confidence = _clip(rng.uniform(0.6, 0.95) - 0.06 * len(missing) - 0.02 * len(stale))
        provider, model = rng.choice(_NARRATIVE_ENGINES)
        return SnapshotMeta(
            snapshot_id=new_snapshot_id(now_ms, rng),
            model_version="regional-model-2.4.1",
            scoring_version="balance-scoring-1.7",
            geography_version="geo-2024.09",
            snapshot_confidence=round(confidence, 3),
            missing_inputs=missing,
            stale_inputs=stale,
            valid_until=now_ms + MAX_VALID_AHEAD_MS,
            trigger_reason=reason,
            narrative_provider=provider,
            narrative_model=model,
        )

    def _actors(self, region: str, vocab: _Vocab) -> list[Actor]:
        rng = self._rng
        count = rng.randint(MIN_ACTORS, min(MAX_ACTORS, len(vocab.actors)))
        picked = rng.sample(vocab.actors, count)
        return [
            Actor(
                id=_ACTOR_IDS[name],
                name=name,
                role=role,
                leverage_score=round(rng.uniform(0.1, 0.95), 3),
                domains=rng.sample(_DOMAINS, rng.randint(1, 2)),
                stance=rng.choice(_STANCES),
            )
            for name, role in picked
        ]

    def _edges(self, actors: list[Actor]) -> list[LeverageEdge]:
        rng = self._rng
        edges = []
        for _ in range(rng.randint(2, len(actors) // 2 + 2)):
            a, b = rng.sample(actors, 2)
            edges.append(
                LeverageEdge(
                    from_actor_id=a.id,
                    to_actor_id=b.id,
                    mechanism=rng.choice(_MECHANISMS),
                    strength=round(rng.uniform(0.05, 0.9), 3),
                )
            )
        return edges

    def _balance(self, state: _RegionState, words: _Words) -> Balance:
        rng = self._rng
        ax = {k: round(v, 3) for k, v in state.axes.items()}
        pressure = sum(ax[a] for a in _PRESSURE_AXES) / len(_PRESSURE_AXES)
        buffer = sum(ax[a] for a in _BUFFER_AXES) / len(_BUFFER_AXES)
        return Balance(
            **ax,
            net_balance=round(buffer - pressure, 3),
            pressures=[words.fill(p) for p in rng.sample(_PRESSURE_PHRASES, rng.randint(2, 4))],
            buffers=[words.fill(b) for b in rng.sample(_BUFFER_PHRASES, rng.randint(1, 3))],
        )

    def _scenarios(self, state: _RegionState, words: _Words) -> list[ScenarioSet]:
        rng = self._rng
        active_ids = [t.id for t in state.triggers if t.state != "dormant"]
        sets = []
        for horizon in HORIZONS:
            probs = _lane_probabilities(rng, state.label, horizon)
            lanes = [
                ScenarioLane(
                    lane=lane,
                    probability=p,
                    summary=words.fill(_LANE_SUMMARY[lane]),
                    trigger_ids=rng.sample(active_ids, min(len(active_ids), rng.randint(0, 1))),
                )
                for lane, p in zip(LANES, probs, strict=True)
            ]
            sets.append(ScenarioSet(horizon=horizon, lanes=lanes))
        return sets

    def _paths(self, vocab: _Vocab) -> list[TransmissionPath]:
        rng = self._rng
        return [
            TransmissionPath(
                start=rng.choice(vocab.hotspots + vocab.chokepoints),
                mechanism=rng.choice(_MECHANISMS),
                end=rng.choice(vocab.commodities),
                severity=rng.choice(_SEVERITIES),
                confidence=round(rng.uniform(0.3, 0.9), 3),
                latency_hours=rng.choice((6, 12, 24, 48, 72, 168)),
            )
            for _ in range(rng.randint(2, 4))
        ]

    def _triggers(self, state: _RegionState) -> Triggers:
        rng = self._rng
        lists: dict[str, list[Trigger]] = {"active": [], "watching": [], "dormant": []}
        for t in state.triggers:
            ratio = {"active": 1.2, "watching": 0.8, "dormant": 0.3}[t.state]
            current = round(t.threshold * _clip(rng.gauss(ratio, 0.1), 0.0, 3.0), 2)
            lists[t.state].append(
                Trigger(
                    id=t.id,
                    description=t.description,
                    indicator=t.indicator,
                    threshold=t.threshold,
                    current=current,
                )
            )
        return Triggers(**lists)

    def _mobility(self, state: _RegionState, vocab: _Vocab) -> Mobility:
        rng = self._rng
        pressure = _REGIME_PRESSURE[state.label]
        airspace = [
            AirspaceStatus(
                fir=code, name=name, status="restricted" if rng.random() < pressure / 2 else "open"
            )
            for code, name in rng.sample(vocab.firs, rng.randint(2, len(vocab.firs)))
        ]
        corridors = [
            FlightCorridor(
                name=c,
                status="closed" if c in state.closed_corridors else "open",
                reroute_minutes=rng.randint(40, 180)
                if c in state.closed_corridors
                else rng.choice((0, 0, 5, 15)),
            )
            for c in vocab.corridors
        ]
        airports = [
            AirportStatus(
                iata=code,
                name=name,
                status=rng.choice(("normal", "normal", "delays", "disrupted")),
                delay_index=round(rng.uniform(0, pressure), 3),
            )
            for code, name in rng.sample(vocab.airports, rng.randint(3, len(vocab.airports)))
        ]
        closures = [
            f"{a.fir} {rng.choice(('SFC-FL250', 'SFC-UNL', 'FL100-FL390'))} closed"
            for a in airspace
            if a.status == "restricted"
        ]
        intensity = _clip(
            0.5 * len(state.closed_corridors) / len(vocab.corridors)
            + 0.5 * len(closures) / len(airspace)
            + rng.uniform(0, 0.1)
        )
        return Mobility(
            airspace=airspace,
            flight_corridors=corridors,
            airports=airports,
            reroute_intensity=round(intensity, 3),
            notam_closures=closures,
        )

    def _evidence(self, now_ms: int, words: _Words) -> list[Evidence]:
        rng = self._rng
        # Long-tailed: most snapshots cite around ten items, a few come close to the cap.
        count = MIN_EVIDENCE + min(MAX_EVIDENCE - MIN_EVIDENCE, int(rng.expovariate(1 / 5)))
        # Newest first, as a reader (and _fit_size, which trims from the end) wants them.
        ages = sorted(rng.randint(60_000, EVIDENCE_MAX_AGE_MS) for _ in range(count))
        return [
            Evidence(
                id=f"ev{j:02d}",
                source=rng.choice(_EVIDENCE_SOURCES),
                summary=words.fill(rng.choice(_EVIDENCE_TEMPLATES)),
                observed_at=now_ms - age,
                confidence=round(rng.uniform(0.3, 0.97), 3),
            )
            for j, age in enumerate(ages)
        ]

    # -- load-run templates -----------------------------------------------------------------

    def _region_templates(self, base_ms: int) -> dict[str, list[Snapshot]]:
        """A few full snapshots per region, built once by a private source (so building them
        does not advance this source's own world)."""
        if self._templates is None:
            seed = None if self._seed is None else self._seed ^ 0x5EED
            source = SyntheticSource(self.regions, seed=seed)
            templates: dict[str, list[Snapshot]] = {r: [] for r in self.regions}
            # Forward in time, so a template's regime.transitioned_at is never in its future.
            for j in reversed(range(TEMPLATES_PER_REGION)):
                for snap in source.cycle(base_ms - j * CYCLE_MS):
                    templates[snap.region_id].append(snap)
            self._templates = templates
        return self._templates


class _Words:
    """Fills ``{placeholder}`` templates with region vocabulary, picked at random per call."""

    __slots__ = ("_actor", "_hotspot", "actors", "region", "rng", "state", "vocab")

    def __init__(
        self,
        rng: random.Random,
        region: str,
        vocab: _Vocab,
        actors: list[Actor],
        state: _RegionState,
    ) -> None:
        self.rng = rng
        self.region = region
        self.vocab = vocab
        self.actors = [a.name for a in actors]
        self.state = state
        # Indices of the last {actor}/{hotspot} drawn, so {actor2}/{hotspot2} can differ.
        self._actor = 0
        self._hotspot = 0

    def fill(self, template: str, **extra: object) -> str:
        # Only the placeholders the template uses are drawn: fill runs ~80 times per snapshot,
        # and drawing every word each time doubled the cost of a cycle.
        values: dict[str, object] = {}
        for name in _placeholders(template):
            values[name] = extra[name] if name in extra else self._pick(name)
        return template.format_map(values)

    def _pick(self, name: str) -> object:
        rng, v = self.rng, self.vocab
        if name == "actor":
            self._actor = rng.randrange(len(self.actors))
            return self.actors[self._actor]
        if name == "actor2":  # a different actor from {actor}, which templates name first
            n = len(self.actors)
            return self.actors[(self._actor + rng.randrange(1, n)) % n]
        if name == "hotspot":
            self._hotspot = rng.randrange(len(v.hotspots))
            return v.hotspots[self._hotspot]
        if name == "hotspot2":  # likewise different from {hotspot}
            n = len(v.hotspots)
            return v.hotspots[(self._hotspot + rng.randrange(1, n)) % n]
        if name == "chokepoint":
            return rng.choice(v.chokepoints)
        if name == "commodity":
            return rng.choice(v.commodities)
        if name == "fir":
            return rng.choice(v.firs)[1]
        if name == "pct":
            return rng.randint(3, 45)
        if name == "region":
            return REGION_NAMES[self.region]
        if name == "regime":
            return self.state.label.replace("_", " ")
        raise KeyError(f"template placeholder {{{name}}} has no vocabulary")


_FORMATTER = string.Formatter()
_PLACEHOLDERS: dict[str, tuple[str, ...]] = {}


def _placeholders(template: str) -> tuple[str, ...]:
    """Field names of a format template, in order, cached (templates are a fixed set)."""
    names = _PLACEHOLDERS.get(template)
    if names is None:
        names = tuple(dict.fromkeys(f for _, f, _, _ in _FORMATTER.parse(template) if f))
        _PLACEHOLDERS[template] = names
    return names


def _lane_probabilities(rng: random.Random, label: RegimeLabel, horizon: Horizon) -> list[float]:
    """Lane probabilities for one horizon: regime-shaped weights with horizon-scaled noise.

    Rounded to 4 decimals for readable JSON; the last lane takes ``1 - sum(others)`` so the sum
    is 1 up to float rounding (far inside PROBABILITY_TOLERANCE).
    """
    spread = _HORIZON_SPREAD[horizon]
    weights = [w * rng.uniform(1 - spread, 1 + spread) for w in _LANE_WEIGHTS[label]]
    total = sum(weights)
    probs = [round(w / total, 4) for w in weights[:-1]]
    probs.append(round(1.0 - sum(probs), 4))
    return probs


def _narrative(words: _Words, balance: Balance, scenarios: list[ScenarioSet]) -> Narrative:
    rng = words.rng
    state = words.state
    probs: dict[Horizon, dict[Lane, float]] = {
        s.horizon: {lane.lane: lane.probability for lane in s.lanes} for s in scenarios
    }
    counts = {
        "count": sum(t.state == "active" for t in state.triggers),
        "watching": sum(t.state == "watching" for t in state.triggers),
    }
    numbers = {
        "net": balance.net_balance,
        "coercive": balance.coercive_pressure,
        "cohesion": balance.alliance_cohesion,
        "leverage": balance.energy_leverage,
        "pressure": rng.choice(balance.pressures),
        "buffer": rng.choice(balance.buffers),
    }

    def outlook(h: Horizon) -> str:
        p = probs[h]
        extra = {
            "base": p["base"],
            "esc": p["escalation"],
            "cont": p["containment"],
            "frag": p["fragmentation"],
            "pressure": numbers["pressure"],
        }
        picks = rng.sample(_OUTLOOK[h], rng.randint(1, 2))
        return " ".join(words.fill(t, **extra) for t in picks)

    situation = " ".join(words.fill(t, **counts) for t in rng.sample(_SITUATION, rng.randint(2, 4)))
    assessment = " ".join(
        words.fill(t, **numbers) for t in rng.sample(_BALANCE_TEXT, rng.randint(1, 3))
    )
    watch = [f"{t.description} ({t.indicator})" for t in state.triggers if t.state == "watching"]
    watch += [words.fill("Traffic through {chokepoint}"), words.fill("Statements by {actor}")]
    return Narrative(
        situation=situation,
        balance_assessment=assessment,
        outlook_24h=outlook("24h"),
        outlook_7d=outlook("7d"),
        outlook_30d=outlook("30d"),
        watch_items=watch[:6],
    )


def _fit_size(snap: Snapshot) -> Snapshot:
    """Trim the oldest evidence if a snapshot overshoots the upstream size band.

    The random draws rarely get here; this guarantees the bound for any seed rather than hoping.
    """
    size = len(encode(snap))
    if size <= MAX_ENCODED_BYTES:
        return snap
    evidence = list(snap.evidence)
    per_item = max(1, (size - 2) // max(1, len(evidence) + 8))  # rough bytes per list item
    while evidence and size > MAX_ENCODED_BYTES and len(evidence) > MIN_EVIDENCE:
        drop = max(1, (size - MAX_ENCODED_BYTES) // per_item)
        evidence = evidence[: max(MIN_EVIDENCE, len(evidence) - drop)]
        snap = msgspec.structs.replace(snap, evidence=evidence)
        size = len(encode(snap))
    return snap


def _fresh_salt() -> int:
    return random.SystemRandom().getrandbits(48)


def _restamp(template: Snapshot, generated_at: int, i: int, salt: int,
             trigger_reason: TriggerReason) -> Snapshot:
    """A copy of ``template`` moved to ``generated_at``, with a fresh id and confidence.

    Every timestamp shifts by the same delta so the copy stays internally consistent (evidence
    observed before generation, regime transition not in the future). The random half of the id
    is ``i`` through a bijection of 48-bit integers (odd multiplier, salted), so a run is
    reproducible and ids never collide within it.
    """
    delta = generated_at - template.generated_at
    meta = template.meta
    jitter = ((i * 2654435761) % 1000) / 10_000  # deterministic, spread, in [0, 0.1)
    meta = msgspec.structs.replace(
        meta,
        snapshot_id=f"{generated_at:012x}-{(i * 0x9E3779B1 + salt) & _MASK48:012x}",
        valid_until=meta.valid_until + delta,
        trigger_reason=trigger_reason,
        snapshot_confidence=round(_clip(meta.snapshot_confidence - 0.05 + jitter), 3),
    )
    regime = template.regime
    if regime.transitioned_at is not None:
        regime = msgspec.structs.replace(regime, transitioned_at=regime.transitioned_at + delta)
    evidence = [
        msgspec.structs.replace(e, observed_at=e.observed_at + delta) for e in template.evidence
    ]
    return msgspec.structs.replace(
        template, generated_at=generated_at, meta=meta, regime=regime, evidence=evidence
    )
