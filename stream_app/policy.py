"""The stream error policy: one typed callback that decides what happens to an event that failed.

It is called with the error, the record (topic, partition, offset — never logged with its payload)
and the stage that failed, and returns :class:`ErrorAction`:

* ``DEAD_LETTER`` (the default for every stage): publish a masked envelope and go on;
* ``SKIP``: count it (``fraudscore_stream_skipped_total``) and log it, then go on — never silent;
* ``STOP``: raise, stopping the consumer without committing the batch (it is replayed on restart).

Operators who prefer to stop on a class of errors pass their own policy to the worker.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable

from prometheus_client import Counter

from stream_app.deadletter import Stage
from stream_app.records import SourceRecord

log = logging.getLogger(__name__)

SKIPPED = Counter("fraudscore_stream_skipped_total", "Events skipped by the error policy", ["topic", "stage"])


class ErrorAction(enum.Enum):
    DEAD_LETTER = "dead_letter"
    SKIP = "skip"
    STOP = "stop"


ErrorPolicy = Callable[[BaseException, SourceRecord, Stage], ErrorAction]


#: at most one dead-letter log line per (topic, stage) in this many seconds; the rest are counted in the
#: next line (a flood of poison messages must not flood the logs: the metric counts every one)
LOG_EVERY_S = 10.0
_last_logged: dict[tuple[str, str], tuple[float, int]] = {}


def dead_letter_everything(exc: BaseException, rec: SourceRecord, stage: Stage) -> ErrorAction:
    """Default policy: every failed event goes to the dead-letter topic; the consumer goes on."""
    key = (rec.stream, str(stage))
    now = time.monotonic()
    last, suppressed = _last_logged.get(key, (float("-inf"), 0))
    if now - last < LOG_EVERY_S:
        _last_logged[key] = (last, suppressed + 1)
        return ErrorAction.DEAD_LETTER
    _last_logged[key] = (now, 0)
    more = f" (+{suppressed} more on this topic and stage since the last line)" if suppressed else ""
    log.warning(
        "dead-lettering %s[%s]@%s (stage %s): %s%s", rec.stream, rec.partition, rec.position, stage,
        type(exc).__name__, more,
    )
    return ErrorAction.DEAD_LETTER
