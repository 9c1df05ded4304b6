"""Progress for people: a rich display on a terminal, plain lines otherwise (CI, pipes)."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import Protocol

PLAIN_EVERY_FRACTION = 0.25  # plain mode prints a progress line per quarter


class Display(Protocol):
    def line(self, text: str) -> None: ...

    def task(self, label: str, total: int) -> contextlib.AbstractContextManager[
        Callable[[int], None]]: ...


class PlainDisplay:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def line(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {text}", flush=True)

    @contextlib.contextmanager
    def task(self, label: str, total: int) -> Iterator[Callable[[int], None]]:
        step = max(1, int(total * PLAIN_EVERY_FRACTION))
        last = [0]

        def update(done: int) -> None:
            if done >= last[0] + step and done < total:
                last[0] = done - done % step
                self.line(f"  {label}: {done}/{total}")

        self.line(f"  {label}: 0/{total}")
        yield update
        self.line(f"  {label}: done")


class RichDisplay:
    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TimeElapsedColumn,
        )

        self.console = Console(stderr=False)
        self.progress = Progress(SpinnerColumn(), "[progress.description]{task.description}",
                                 BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 console=self.console, transient=True)

    def line(self, text: str) -> None:
        self.console.log(text)

    @contextlib.contextmanager
    def task(self, label: str, total: int) -> Iterator[Callable[[int], None]]:
        with self.progress:
            task = self.progress.add_task(label, total=total)
            yield lambda done: self.progress.update(task, completed=done)
            self.progress.remove_task(task)


def make_display() -> Display:
    return RichDisplay() if sys.stdout.isatty() else PlainDisplay()
