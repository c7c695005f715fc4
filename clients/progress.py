"""Progress of a long command: a line on stderr now and then, as pip and docker show
theirs. Stdout keeps only the results (text, or one JSON document with `--json`), so
`xec ... --json | jq` works while the user still sees that something happens.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO


class Progress:
    """Calling it prints `text` with the seconds since the start, at most once per
    `every` seconds unless `force`d (the first and last lines of a stage)."""

    def __init__(self, every: float = 1.0, out: TextIO | None = None) -> None:
        self.every = every
        self.out = out
        self.started = time.monotonic()
        self._last = -every

    def __call__(self, text: str, force: bool = False) -> None:
        now = time.monotonic() - self.started
        if force or now - self._last >= self.every:
            self._last = now
            print(f"  {now:6.1f} s  {text}", file=self.out or sys.stderr, flush=True)


@contextlib.contextmanager
def results_as_json(as_json: bool) -> Iterator[Callable[[Any], None]]:
    """With `--json`, what the command prints as text goes to stderr (it is progress
    then) and the JSON document given to the yielded function is stdout's only line."""
    documents: list[Any] = []
    if not as_json:
        yield lambda _document: None
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield documents.append
    for document in documents:
        print(json.dumps(document, sort_keys=True), flush=True)
