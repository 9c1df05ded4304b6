"""Standard output that fails as one exception, whatever went wrong with it.

A command's report can fail to reach its reader in several ways: the reader went away
(``pending --json | head -1``: EPIPE), the disk is full (``> /dev/full``: ENOSPC), stdout was
closed before start (``>&-``: ``sys.stdout`` is None). Each used to end in a different
traceback, and ``replay`` lost the report of what it had already moved. ``guard_stdout``
wraps ``sys.stdout`` so every one of them raises ``OutputLost``, which ``cli.main`` turns into
one line (none for a reader that went away) and exit 1 (``runtime.exit_code``), and which
``replay`` answers by writing its report to standard error instead."""

from __future__ import annotations

import errno
import sys

# Not typing.TYPE_CHECKING: importing typing costs ``--help`` a few ms (mypy and ruff treat a
# module's own TYPE_CHECKING = False the same way; see regionstream/__init__.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class OutputLost(Exception):
    """Standard output could not be written; ``cause`` says why."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause

    @property
    def reader_left(self) -> bool:
        """The reader closed its end (EPIPE): normal for ``| head``, said by nobody."""
        return isinstance(self.cause, BrokenPipeError)

    def reason(self) -> str:
        if isinstance(self.cause, OSError) and self.cause.strerror:
            return self.cause.strerror
        return str(self.cause) or type(self.cause).__name__


class _Guarded:
    """A text or binary stream whose write and flush failures are ``OutputLost``."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, data: Any) -> int:
        try:
            written: int = self._stream.write(data)
        except (OSError, ValueError) as exc:  # ValueError: written after a close
            raise OutputLost(exc) from exc
        return written

    def flush(self) -> None:
        try:
            self._stream.flush()
        except (OSError, ValueError) as exc:
            raise OutputLost(exc) from exc

    @property
    def buffer(self) -> _Guarded:
        return _Guarded(self._stream.buffer)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _Closed:
    """``sys.stdout`` when the process started with standard output closed."""

    def write(self, data: Any) -> int:
        raise OutputLost(OSError(errno.EBADF, "standard output is closed"))

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        raise OutputLost(OSError(errno.EBADF, "standard output is closed"))

    @property
    def buffer(self) -> _Closed:
        return self

    encoding = "utf-8"
    errors = "strict"


def guard_stdout() -> None:
    if isinstance(sys.stdout, _Guarded | _Closed):
        return
    sys.stdout = _Closed() if sys.stdout is None else _Guarded(sys.stdout)


def unguard_stdout() -> None:
    """The stream as it was (tests call ``main`` in-process, one after another)."""
    if isinstance(sys.stdout, _Guarded):
        sys.stdout = sys.stdout._stream
