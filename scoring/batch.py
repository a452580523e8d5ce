"""Batch inference: score a file of orders through the decision pipeline (``fraudscore score``).

The offline twin of ``Score``: the same pipeline (features, model, rules, reasons) with
point-in-time features. Orders (plus optional earlier ``history`` orders that only warm the state)
are replayed in event-time order through a fresh embedded feature store, so each order sees exactly
the aggregates it would have seen online at its event time — never a later order. Model calls are
vectorised per chunk.

Formats by file suffix: ``.jsonl`` / ``.ndjson`` (one order / decision per line) or ``.parquet``
(pyarrow, a core dependency). Parquet decisions have scalar columns, nested fields as JSON strings
(``matched_rules``, ``reasons``, ``shadow``, ``degraded_reasons``) and one ``feature.<name>`` column per
feature.

An invalid order never stops the run and is never lost: it goes to ``<output>.rejected.jsonl`` with
``file:line`` and every invalid field (card numbers masked), and the command exits 1.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from contracts.events import Decision, Order, decode_order, from_builtins, to_builtins
from contracts.exceptions import ConfigError, ContractError
from contracts.pan import redact_bytes
from scoring.pipeline import DecisionPipeline

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")


@dataclass
class BatchReport:
    scored: int = 0
    rejected: int = 0
    decisions: dict[str, int] = field(default_factory=dict)
    degraded: int = 0
    rejected_file: Path | None = None


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() in (".parquet", ".pq")


def _check_format(path: Path, what: str) -> None:
    if not (_is_parquet(path) or path.suffix.lower() in JSONL_SUFFIXES):
        raise ConfigError(f"{what} {path}: unknown format (use .jsonl, .ndjson or .parquet)")


def read_orders(path: Path) -> Iterator[tuple[int, Order | None, bytes, str | None]]:
    """(line number, order or None, raw record, error) for every record of ``path``."""
    _check_format(path, "input")
    if not path.is_file():
        raise ConfigError(f"input {path} does not exist")
    if _is_parquet(path):
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise ConfigError(f"reading Parquet needs `pip install 'pyarrow>=15'` ({exc})") from None
        table = pq.read_table(path)
        for i, row in enumerate(table.to_pylist(), 1):
            clean = {k: v for k, v in row.items() if v is not None}
            for key in ("event_time", "account_created_at"):
                if hasattr(clean.get(key), "isoformat"):
                    clean[key] = clean[key].isoformat()
            raw = json.dumps(clean, default=str).encode()
            try:
                yield i, from_builtins(Order, clean), raw, None
            except ContractError as exc:
                yield i, None, raw, str(exc)
        return
    with path.open("rb") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield i, decode_order(line), line, None
            except ContractError as exc:
                yield i, None, line, str(exc)


def _parquet_rows(decisions: list[Decision], feature_names: list[str]) -> list[dict[str, Any]]:
    rows = []
    for d in decisions:
        b = to_builtins(d)
        row = {k: v for k, v in b.items() if k not in (*_JSON_FIELDS, "features")}
        for k in _JSON_FIELDS:
            row[k] = json.dumps(b[k])
        for name in feature_names:
            row[f"feature.{name}"] = d.features.get(name)
        rows.append(row)
    return rows


_JSON_FIELDS = ("matched_rules", "reasons", "shadow", "degraded_reasons")


def parquet_schema(feature_names: list[str]) -> Any:
    """A fixed schema, so a chunk where a column happens to be all-null still matches the others."""
    import pyarrow as pa

    types: dict[str, Any] = {
        "order_id": pa.string(), "decision": pa.string(), "score": pa.float64(), "model_version": pa.string(),
        "ruleset_version": pa.string(), "degraded": pa.bool_(), "latency_ms": pa.float64(),
        "event_time": pa.string(), "decided_at": pa.string(), "customer_id": pa.string(), "amount": pa.float64(),
        "source": pa.string(), "schema_version": pa.int64(),
    }
    fields = [pa.field(k, t) for k, t in types.items()]
    fields += [pa.field(k, pa.string()) for k in _JSON_FIELDS]
    fields += [pa.field(f"feature.{n}", pa.float64()) for n in feature_names]
    return pa.schema(fields)


class _Writer:
    def __init__(self, path: Path, feature_names: list[str]) -> None:
        self.path = path
        self.parquet = _is_parquet(path)
        self.feature_names = feature_names
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = None if self.parquet else path.open("wb")
        self._pq: Any = None
        self._enc = msgspec.json.Encoder()

    def write(self, decisions: list[Decision]) -> None:
        if not decisions:
            return
        if self._f is not None:
            self._f.write(b"".join(self._enc.encode(d) + b"\n" for d in decisions))
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = parquet_schema(self.feature_names)
        table = pa.Table.from_pylist(_parquet_rows(decisions, self.feature_names), schema=schema)
        if self._pq is None:
            self._pq = pq.ParquetWriter(self.path, schema)
        self._pq.write_table(table)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
        if self._pq is not None:
            self._pq.close()
        elif self.parquet:  # no rows: still leave a readable (empty) file
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.table({"order_id": pa.array([], pa.string())}), self.path)


def _reject(path: Path, line: int, error: str | None, raw: bytes) -> bytes:
    record = redact_bytes(raw).decode("utf-8", "replace").rstrip("\n")  # card numbers masked
    return json.dumps({"file": str(path), "line": line, "error": error, "record": record}).encode()


async def score_file(
    pipeline: DecisionPipeline,
    input_path: Path,
    output_path: Path,
    *,
    history: Path | None = None,
    chunk: int = 2000,
    with_reasons: bool = True,
    progress: bool = True,
) -> BatchReport:
    """Score every order of ``input_path`` into ``output_path``; see the module docstring."""
    _check_format(output_path, "output")
    report = BatchReport()
    rejected_path = output_path.with_name(output_path.name + ".rejected.jsonl")
    rejects: list[bytes] = []
    targets: list[Order] = []
    for line, order, raw, err in read_orders(input_path):
        if order is None:
            rejects.append(_reject(input_path, line, err, raw))
        else:
            targets.append(order)
    warm: list[Order] = []
    if history is not None:
        for line, order, raw, err in read_orders(history):
            if order is None:
                rejects.append(_reject(history, line, err, raw))
            else:
                warm.append(order)
    target_ids = {o.order_id for o in targets}
    stream = sorted([*warm, *targets], key=lambda o: (o.event_time, o.order_id))
    # Consecutive runs (in event-time order) of history-only orders are applied to the store without
    # being decided; runs of orders to score go through the pipeline. Same application order as one
    # stream, so the features are the same, without scoring the history.
    runs: list[tuple[bool, list[Order]]] = []
    for o in stream:
        scored = o.order_id in target_ids
        if runs and runs[-1][0] == scored and len(runs[-1][1]) < chunk:
            runs[-1][1].append(o)
        else:
            runs.append((scored, [o]))
    writer = _Writer(output_path, pipeline.store.feature_names)
    bar: Any = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(targets), unit="orders", desc="scoring", dynamic_ncols=True)
    try:
        for scored, part in runs:
            if not scored:
                await pipeline.store.apply_and_read(part)
                continue
            decisions = await pipeline.decide(part, source="batch", apply=True, with_reasons=with_reasons)
            mine = [d for d in decisions if d.order_id in target_ids]
            writer.write(mine)
            for d in mine:
                report.scored += 1
                report.decisions[d.decision] = report.decisions.get(d.decision, 0) + 1
                report.degraded += int(d.degraded)
            if bar is not None:
                bar.update(len(mine))
    finally:
        writer.close()
        if bar is not None:
            bar.close()
    report.rejected = len(rejects)
    if rejects:
        rejected_path.write_bytes(b"\n".join(rejects) + b"\n")
        report.rejected_file = rejected_path
    else:
        rejected_path.unlink(missing_ok=True)
    return report
