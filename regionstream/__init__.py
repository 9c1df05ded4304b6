"""regionstream: regional intelligence snapshots streamed through Redis Streams.

The public API for embedding it (``__all__``), each name imported on first use, so that
``import regionstream`` stays cheap (it imports neither redis, rich nor prometheus_client):

- ``Settings`` (``shared.settings``): every setting, from flags, the environment or by hand.
- ``Producer`` (``producer.service``) and ``Consumer`` (``consumer.service``): the two services.
- ``open_deployment`` and ``Deployment`` (``shared.shards``): the stream shards on one Redis
  server or a Redis Cluster.
- ``__version__``: the installed distribution's version; pyproject.toml is its one source.
  ``"0+unknown"`` when regionstream is not installed (imported from a bare checkout).

Anything else (the modules under ``shared``, ``producer``, ``consumer``) may change between
releases without notice.
"""

from __future__ import annotations

import importlib

# Not typing.TYPE_CHECKING: importing typing would double the cost of `import regionstream`
# (mypy and ruff treat a module's own TYPE_CHECKING = False the same way).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from consumer.service import Consumer
    from producer.service import Producer
    from shared.settings import Settings
    from shared.shards import Deployment, open_deployment

    __version__: str

__all__ = ["Consumer", "Deployment", "Producer", "Settings", "__version__", "open_deployment"]

DISTRIBUTION = "regionstream"
UNKNOWN_VERSION = "0+unknown"  # PEP 440: a local version below every release

# Public name -> the module that defines it (imported on first access, then cached here).
_LAZY = {
    "Settings": "shared.settings",
    "Producer": "producer.service",
    "Consumer": "consumer.service",
    "open_deployment": "shared.shards",
    "Deployment": "shared.shards",
}


def _version() -> str:
    """The installed distribution's version (from its metadata, which pyproject.toml's
    ``version`` wrote at install time), or ``UNKNOWN_VERSION`` if it is not installed."""
    from importlib import metadata  # here, not above: ~10 ms that only a version needs

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return UNKNOWN_VERSION


def __getattr__(name: str) -> Any:
    if name == "__version__":
        value: Any = _version()
    elif name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # resolved once; later lookups do not reach __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
