"""File targets: ``orders``, ``labels`` and ``truth`` as JSONL or Parquet, plus ``summary.json``.

JSONL files hold the exact bytes of the stream, one event per line, in emission order (so
``orders.jsonl`` contains duplicates and malformed events when they are injected; ``labels.jsonl``
is sorted by ``label_time``). Parquet files hold the same events as typed tables: nested
``payment`` is flattened into ``payment_*`` columns, ``items`` is a list of structs, timestamps are
``timestamp[ms, UTC]``; malformed events cannot be typed and are left out (the truth table still
lists them), duplicates are kept as repeated rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import IO, Literal

import msgspec

from training.simulator.exceptions import SinkError
from training.simulator.generator import Simulation
from training.simulator.records import SimEvent
from training.simulator.sinks.base import Driver, ProgressFn, SinkReport, StopFlag
from training.simulator.sinks.parquet import ParquetWriter

FileFormat = Literal["jsonl", "parquet"]
STREAMS: tuple[str, ...] = ("orders", "labels", "truth")
_FLUSH_BYTES = 1 << 20


class JsonlWriter:
    """Appends each event's bytes and a newline to ``<dir>/<stream>.jsonl``."""

    def __init__(self, out_dir: Path, streams: tuple[str, ...] = STREAMS) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.paths = {s: out_dir / f"{s}.jsonl" for s in streams}
        self._files: dict[str, IO[bytes]] = {s: p.open("wb") for s, p in self.paths.items()}
        self._buf: dict[str, list[bytes]] = {s: [] for s in streams}
        self._size: dict[str, int] = dict.fromkeys(streams, 0)

    def write_batch(self, batch: list[SimEvent]) -> list[SimEvent]:
        """Write a batch; return the events that were written (those of this writer's streams)."""
        bufs = self._buf
        if len(bufs) == len(STREAMS):
            for event in batch:
                bufs[event.stream].append(event.value)
            written = batch
        else:
            written = [e for e in batch if e.stream in bufs]
            for event in written:
                bufs[event.stream].append(event.value)
        for stream in bufs:
            self._flush(stream)
        return written

    def write(self, event: SimEvent) -> bool:
        """Write one event; False when its stream is not written here."""
        buf = self._buf.get(event.stream)
        if buf is None:
            return False
        buf.append(event.value)
        self._size[event.stream] += len(event.value) + 1
        if self._size[event.stream] > _FLUSH_BYTES:
            self._flush(event.stream)
        return True

    def _flush(self, stream: str) -> None:
        buf = self._buf[stream]
        if buf:
            buf.append(b"")
            self._files[stream].write(b"\n".join(buf))
            buf.clear()
        self._size[stream] = 0

    def close(self) -> None:
        for stream, f in self._files.items():
            self._flush(stream)
            f.close()


def write_files(
    events: Iterable[SimEvent],
    out_dir: str | Path,
    *,
    fmt: FileFormat = "jsonl",
    rate: float | None = None,
    live: bool = False,
    stop: StopFlag | None = None,
    progress: ProgressFn | None = None,
) -> SinkReport:
    """Write a simulation (or any event stream) to ``out_dir`` as JSONL or Parquet.

    When ``events`` is a :class:`~training.simulator.generator.Simulation`, ``summary.json`` is written
    too. Returns what was written.
    """
    out = Path(out_dir)
    try:
        writer: JsonlWriter | ParquetWriter = JsonlWriter(out) if fmt == "jsonl" else ParquetWriter(out)
    except OSError as exc:
        raise SinkError(f"cannot write to {out}: {exc}") from exc
    report = SinkReport(target=f"files:{fmt}", outputs={s: str(p) for s, p in writer.paths.items()})
    driver = Driver(events, rate=rate, live=live, max_batch=10_000, stop=stop, progress=progress)
    try:
        for due, batch in driver.batches():
            wait = driver.delay(due)
            if wait > 0 and driver.stop.wait(wait):
                break
            report.count_batch(writer.write_batch(driver.prepare(batch)))
            driver.tick(report)
    except OSError as exc:
        raise SinkError(f"writing {out} failed: {exc}") from exc
    finally:
        writer.close()
    if isinstance(events, Simulation):
        write_summary(events, out / "summary.json")
        report.outputs["summary"] = str(out / "summary.json")
    return driver.finish(report)


def write_summary(sim: Simulation, path: Path) -> None:
    """``summary.json``: the run's counts and its options."""
    doc = msgspec.to_builtins(sim.summary)
    doc["fraud_rate"] = sim.summary.fraud_rate
    doc["config"] = msgspec.to_builtins(sim.config)
    path.write_bytes(msgspec.json.format(msgspec.json.encode(doc)) + b"\n")


def read_jsonl(path: str | Path) -> list[bytes]:
    """Lines of a JSONL file (helper for tests and notebooks)."""
    with Path(path).open("rb") as f:
        return [line.rstrip(b"\n") for line in f]
