"""Redis ACL users for a deployment: a producer, a consumer and a read-only operator, each
with only the commands and key patterns it uses (``regionstream acl`` prints them as an ACL
file; ``deploy/redis-acl.conf`` is that file for the default names).

The rules are built from a ``Keys`` layout, so a deployment with its own ``--stream`` or
``--prefix`` gets rules that match its keys:

* ``regionstream-producer``: publishes (XADD in MULTI/EXEC), creates the group, trims the
  stream; the stream and ``<stream>:*`` (the dead-letter stream ``<stream>:dlq``, and streams
  sharded per region as ``<stream>:{<region>}``). It cannot touch a snapshot key.
* ``regionstream-consumer``: ``consume`` and ``replay``: reads the group, persists through
  the scripts, dead-letters, reclaims; the stream, ``<stream>:*`` and ``<prefix>:*``.
* ``regionstream-operator``: ``top``, ``pending``, ``show``: read commands only, and read-only
  key access (``%R~``) to the stream, ``<stream>:*`` and ``<prefix>:*``.

Every user starts from ``-@all`` and gets commands one by one (``+xinfo|stream``, not
``+xinfo``). The lists come from the code and from running each role on a real Redis with
MONITOR; tests/test_acl.py runs the whole pipeline as these users and checks ACL LOG.

No password is written: a user loaded without one is on, but nobody can authenticate as it
until an administrator runs ``ACL SETUSER <user> ><password>``. Redis (up to 8.4 at least)
refuses an ACL file holding ``#`` comments, which is why the explanation lives here and in
``notes``, printed by ``regionstream acl`` on stderr, and the file holds ``user`` lines only.
"""

from __future__ import annotations

import re

from shared.keys import Keys

PRODUCER = "regionstream-producer"
CONSUMER = "regionstream-consumer"
OPERATOR = "regionstream-operator"

# Every user: the connection itself. HELLO and AUTH need no grant (Redis lets every user run
# them). redis-py also sends CLIENT SETINFO on connect, and ignores a refusal: Redis 7.0 does
# not know that subcommand (and refuses ``+client|setinfo`` in an ACL file), so it is left out.
_CONNECTION: tuple[tuple[str, str], ...] = (
    ("ping", "the start-up check, and redis-py's connection health check"),
    ("info", "cluster-mode detection (INFO cluster)"),
    ("cluster|slots", "on a Redis Cluster: which node holds each shard (the slot map)"),
    ("select", "a database other than 0 in --redis-url: redis-py selects it on connect"),
)

# user -> (command, why), in the order the rules list them.
COMMANDS: dict[str, tuple[tuple[str, str], ...]] = {
    PRODUCER: (
        *_CONNECTION,
        ("multi", "a cycle is published as one transaction"),
        ("exec", "a cycle is published as one transaction"),
        ("xadd", "publishing"),
        ("wait", "waiting for replicas after a publish (--min-replicas)"),
        ("xgroup|create", "creating the group (MKSTREAM) before publishing, so nothing is "
         "trimmed before a consumer runs"),
        ("xinfo|groups", "trimming keeps what any group needs; the group check; gauges"),
        ("xpending", "trimming: the oldest entry each group holds pending; gauges"),
        ("xtrim", "trimming acknowledged history past --stream-retention"),
        ("time", "group gauges (--metrics-port): ages on Redis's clock"),
        ("xinfo|stream", "group gauges (--metrics-port): stream and dead-letter lengths"),
        ("xinfo|consumers", "group gauges (--metrics-port): consumers and their idle times"),
    ),
    CONSUMER: (
        *_CONNECTION,
        ("xgroup|create", "creating the group at start, and again after NOGROUP"),
        ("xreadgroup", "workers read new entries and their own pending ones"),
        ("xautoclaim", "the reclaimer takes entries idle past --min-idle-ms"),
        ("xclaim", "replay --pending"),
        ("xpending", "delivery counts (retry budget, dead-letter script), replay --pending, "
         "the drain watch"),
        ("xack", "acknowledging: persist and dead-letter scripts; entries deleted while "
         "pending"),
        ("xadd", "dead-letter script; replay --dlq puts entries back on the stream"),
        ("xdel", "replay --dlq removes the moved dead letter; a half-done dead-letter is "
         "undone"),
        ("xrange", "replay --dlq and --range read history"),
        ("xgroup|delconsumer", "forgetting consumers idle past --consumer-timeout (script)"),
        ("xinfo|consumers", "finding idle consumers to forget; the drain watch"),
        ("xinfo|groups", "the group check at start; the drain watch"),
        ("xinfo|stream", "the drain watch and group gauges"),
        ("time", "persist script and the drain watch: Redis's clock"),
        ("script|load", "loading the scripts at start and after NOSCRIPT"),
        ("evalsha", "the persist, dead-letter, forget-consumer and replay scripts"),
        ("multi", "MULTI; MSET staging keys; EVALSHA persist; EXEC"),
        ("exec", "MULTI; MSET staging keys; EVALSHA persist; EXEC"),
        ("mset", "staging a batch's payloads for the persist script"),
        ("mget", "persist script: the batch's dedup markers"),
        ("zmscore", "persist script: are the batch's snapshots indexed already"),
        ("get", "persist script: the latest pointer"),
        ("zscore", "persist script: the latest snapshot's generated_at"),
        ("rename", "persist script: a staging key becomes the by-id key"),
        ("pexpireat", "persist script: the by-id key expires after the retention"),
        ("zadd", "persist script: the region's index"),
        ("zremrangebyscore", "persist script: pruning the index past the retention"),
        ("set", "persist script: latest pointer and dedup marker"),
        ("del", "persist script: staging keys of messages not persisted; those a persist "
         "whose script did not run left"),
    ),
    OPERATOR: (
        *_CONNECTION,
        ("time", "top and pending: ages on Redis's clock"),
        ("xinfo|stream", "top and pending: stream and dead-letter lengths"),
        ("xinfo|groups", "top and pending: the group's lag"),
        ("xinfo|consumers", "top and pending: consumers, pending, idle times"),
        ("xpending", "top and pending: pending summary; pending: oldest entry per consumer"),
        ("get", "show and top: latest pointer and snapshot payload"),
        ("zcard", "top: snapshots stored per region"),
    ),
}

PURPOSE = {
    PRODUCER: "regionstream produce",
    CONSUMER: "regionstream consume, and replay (--dlq, --pending, --range)",
    OPERATOR: "regionstream top, pending and show (read-only)",
}

_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


def glob_escape(name: str) -> str:
    """``name`` as a Redis glob matching only itself."""
    return _GLOB_SPECIAL.sub(r"\\\1", name)


def _checked(what: str, name: str) -> str:
    """``name`` as a glob; one that cannot be a single token of an ACL file is refused."""
    if not name or any(c.isspace() or not c.isprintable() for c in name):
        raise ValueError(f"{what} {name!r}: an ACL rule cannot hold an empty name, whitespace "
                         "or control characters")
    return glob_escape(name)


def acl_rules(keys: Keys) -> dict[str, str]:
    """User name -> ACL rules (``ACL SETUSER <name> <rules...>``, or an ACL file's
    ``user <name> <rules...>``). The rules set no password; applied to an existing user they
    replace its keys, channels and commands and keep its passwords."""
    stream, prefix = _checked("stream", keys.stream), _checked("prefix", keys.prefix)
    streams = [stream, stream + ":*"]  # the stream, its dead-letter stream, region shards
    key_rules = {
        PRODUCER: [f"~{k}" for k in streams],
        CONSUMER: [f"~{k}" for k in (*streams, prefix + ":*")],
        OPERATOR: [f"%R~{k}" for k in (*streams, prefix + ":*")],
    }
    return {
        user: " ".join(["on", "resetkeys", "resetchannels", *key_rules[user], "-@all",
                        *(f"+{c}" for c, _ in commands)])
        for user, commands in COMMANDS.items()
    }


def render(keys: Keys) -> str:
    """The ACL file (``aclfile`` in redis.conf, or ``redis-server --aclfile``): one ``user``
    line per user and nothing else, since Redis refuses comment lines in an ACL file."""
    return "".join(f"user {user} {rule}\n" for user, rule in acl_rules(keys).items())


def notes(keys: Keys) -> str:
    """What the ACL file cannot say itself (``regionstream acl`` prints it on stderr)."""
    lines = [
        f"ACL users for stream {keys.stream!r} and key prefix {keys.prefix!r}, generated by "
        "`regionstream acl`",
        "(stdout is the ACL file; this note goes to stderr: Redis refuses comments in an "
        "ACL file):",
    ]
    lines += [f"  {user}: {PURPOSE[user]}" for user in COMMANDS]
    lines += [
        "The users have no password: they load switched on, but nobody can log in as one "
        "until you run",
        "  ACL SETUSER <user> ><password>   (ACL SAVE then keeps it, hashed, in the ACL file)",
        "Add the lines to your ACL file, which also defines `default` and your admin users; "
        "connect with",
        "  --redis-url redis://<user>:<password>@<host>:<port>/<db>",
        "On Redis >= 7.2 you may add +client|setinfo to each user: redis-py sends CLIENT "
        "SETINFO on connect",
        "and ignores the refusal, but ACL LOG records it (Redis 7.0 rejects that rule).",
    ]
    return "\n".join(lines) + "\n"
