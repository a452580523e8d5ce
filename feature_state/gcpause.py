"""Pause the cyclic garbage collector while a store call folds or reads a batch.

A batch allocates many small tiles, lists and dicts while the process holds a large heap of
long-lived state; each allocation burst triggers collections that rescan that heap (measured: the
largest single cost of a batch on the embedded store). Nothing a store call creates forms reference
cycles — reference counting frees it — so the collector is paused for the call and resumes after.
Blocks may nest: the outermost one pauses, and the collector resumes when it ends (a collector that
was already off stays off). Callers keep network waits outside the block, so overlapping requests
can never hold the collector off indefinitely.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

_depth = 0
_resume = False


@contextmanager
def gc_paused() -> Iterator[None]:
    global _depth, _resume
    if _depth == 0:
        _resume = gc.isenabled()
        if _resume:
            gc.disable()
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _resume:
            gc.enable()
