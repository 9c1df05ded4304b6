"""Server-side scripts: loaded from the ``.lua`` files beside this module, once.

Calls go out as EVALSHA with the SHA computed locally, so a batch needs no SCRIPT EXISTS or
SCRIPT LOAD round trip; only when Redis answers NOSCRIPT (restart, SCRIPT FLUSH, failover) is
the script loaded again and the refused calls sent once more.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    body: bytes
    sha: str


@cache
def script(name: str) -> Script:
    body = resources.files("consumer").joinpath(f"{name}.lua").read_bytes()
    return Script(name, body, hashlib.sha1(body).hexdigest())


def persist() -> Script:
    return script("persist")


def dead_letter() -> Script:
    return script("dead_letter")


ALL = ("persist", "dead_letter")
