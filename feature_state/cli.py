"""``fraudscore features …``: check feature definitions, replay history into point-in-time features,
and read an order's live features from the configured store.

Exit codes: 0 ok, 1 problems found (invalid definitions, invalid input events), 2 usage or
configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from contracts.config import Settings

_DESCRIPTION = """\
Feature definitions (YAML), point-in-time replay and live reads.

A feature is a rolling aggregate of an entity's orders (count, sum, mean, min, max, distinct_count)
or fraud labels (count, rate) over an event-time window from 1 minute to 90 days, or a feature derived
from the order. The same window arithmetic runs in every store (embedded, Redis, Redis Cluster,
DynamoDB) and in the replay, so a training set holds, bit for bit, the values the model sees online.
Reference: docs/feature_state.md."""

_EPILOG = """\
examples:
  fraudscore features check                                   the packaged defaults
  fraudscore features check my-features.yaml                  validate; file:line errors, exit 1
  fraudscore features replay --orders data/orders.jsonl --labels data/labels.jsonl --out features.parquet
  fraudscore features replay --defs my-features.yaml --orders orders.parquet --out f.jsonl --skip-invalid
  fraudscore features read '{"order_id":"o1","event_time":"2026-01-01T12:00:00Z","customer_id":"c1",
                              "amount":20,"currency":"EUR"}'      features as of that order, from the store
"""


def _defs(args: argparse.Namespace, settings: Settings) -> Path | None:
    path: Path | None = getattr(args, "defs", None) or settings.feature_store.definitions
    return path


def _cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    from feature_state.definitions import format_seconds, load_feature_set
    from feature_state.exceptions import FeatureDefinitionError
    from feature_state.layout import Layout

    path = args.file or _defs(args, settings)
    try:
        fs = load_feature_set(path)
    except FeatureDefinitionError as exc:
        print(exc, file=sys.stderr)
        return 1
    layout = Layout(fs, settings.feature_store.allowed_lateness_s)
    if args.json:
        print(json.dumps({
            "source": fs.source, "features": fs.names,
            "namespaces": {n.name: {"levels_s": list(n.levels), "retention_s": n.retention_s,
                                    "log_retention_s": n.log_retention_s} for n in layout.namespaces.values()},
        }, indent=2))
        return 0
    print(f"{fs.source}: {len(fs.aggregates)} aggregates, {len(fs.derived)} derived features OK")
    for f in fs.aggregates:
        extra = f", delay {format_seconds(f.delay_s)}" if f.delay_s else ""
        fld = f"({f.field})" if f.field else ""
        print(f"  {f.name:<34} {f.source:<6} {f.entity:<12} {f.aggregation}{fld} over {format_seconds(f.window_s)} "
              f"in {format_seconds(f.resolution_s)} tiles{extra}")
    for d in fs.derived:
        print(f"  {d.name:<34} derived {d.kind}")
    print(f"state per entity value (allowed lateness {format_seconds(int(layout.lateness_s))}):")
    for n in layout.namespaces.values():
        tiles = sum(n.retention_s[r] // r + 1 for r in n.levels)
        levels = ", ".join(f"{format_seconds(r)}×{n.retention_s[r] // r + 1}" for r in n.levels)
        print(f"  {n.name:<22} at most {tiles} tiles ({levels}); event log {format_seconds(n.log_retention_s)}")
    return 0


def _cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from contracts.events import Label, Order
    from feature_state.definitions import load_feature_set
    from feature_state.exceptions import FeatureDefinitionError
    from feature_state.io import LoadedTable, read_events, read_table, write_features, write_rows
    from feature_state.replay import replay, replay_table

    try:
        fs = load_feature_set(_defs(args, settings))
    except FeatureDefinitionError as exc:
        print(exc, file=sys.stderr)
        return 1
    t0 = time.perf_counter()
    # Parquet in the simulator's layout is read as validated columns (no object per event); anything
    # else (JSONL, other schemas) is decoded event by event — same valid rows, same problems.
    otab = read_table(Order, args.orders, args.format)
    ltab = read_table(Label, args.labels, args.format) if args.labels else None
    columnar = isinstance(otab, LoadedTable) and (ltab is None or isinstance(ltab, LoadedTable))
    fallback = None if columnar else next(r for r in (otab, ltab) if isinstance(r, str))
    if columnar:
        assert isinstance(otab, LoadedTable)
        problems = otab.problems + (ltab.problems if isinstance(ltab, LoadedTable) else [])
        n_orders_in = len(otab.table)
        n_labels = len(ltab.table) if isinstance(ltab, LoadedTable) else 0
    else:
        orders = read_events(Order, args.orders, args.format)
        labels = read_events(Label, args.labels, args.format) if args.labels else None
        problems = orders.problems + (labels.problems if labels else [])
        n_orders_in = len(orders.events)
        n_labels = len(labels.events) if labels else 0
    for p in problems:
        print(p, file=sys.stderr)
    if problems and not args.skip_invalid:
        print(f"fraudscore features replay: {len(problems)} invalid events; nothing written "
              "(fix them, or pass --skip-invalid to replay the valid ones)", file=sys.stderr)
        return 1
    t1 = time.perf_counter()
    if columnar:
        assert isinstance(otab, LoadedTable)
        result = replay_table(fs, otab.table, ltab.table if isinstance(ltab, LoadedTable) else None,
                              fill_label_entities=args.fill_label_entities)
        t2 = time.perf_counter()
        times = otab.table.table.column("event_time").take(result.source_index)
        write_rows(args.out, result.order_ids, times, result.names, result.columns, args.out_format)
    else:
        result = replay(fs, orders.events, labels.events if labels else (),
                        fill_label_entities=args.fill_label_entities)
        t2 = time.perf_counter()
        kept = [orders.events[i] for i in result.source_index.tolist()]
        write_features(args.out, kept, result.names, result.columns, args.out_format)
    t3 = time.perf_counter()
    summary = {
        "out": str(args.out), "orders": len(result), "duplicates": n_orders_in - len(result),
        "labels": n_labels, "invalid": len(problems), "features": len(result.names),
        "input": "columns" if columnar else "objects",
        "read_s": round(t1 - t0, 3), "replay_s": round(t2 - t1, 3), "write_s": round(t3 - t2, 3),
        "replay_events_per_s": round((n_orders_in + n_labels) / max(t2 - t1, 1e-9)),
    }
    if fallback:
        summary["objects_because"] = fallback
    print(json.dumps(summary))
    return 0


def _cmd_read(args: argparse.Namespace, settings: Settings) -> int:
    from contracts.events import decode_order
    from contracts.exceptions import ContractError
    from feature_state.definitions import load_feature_set
    from feature_state.stores import create_store

    raw = Path(args.order[1:]).read_bytes() if args.order.startswith("@") else args.order.encode()
    try:
        order = decode_order(raw)
    except ContractError as exc:
        print(f"invalid order: {exc}", file=sys.stderr)
        return 1
    fs = load_feature_set(_defs(args, settings))

    async def go() -> dict[str, Any]:
        store = create_store(settings.feature_store, fs)
        try:
            return (await store.read_as_of([order]))[0]
        finally:
            await store.close()

    print(json.dumps(asyncio.run(go()), indent=2))
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``features`` and its subcommands to the ``fraudscore`` parser."""
    p = sub.add_parser("features", help="check feature definitions, replay point-in-time features, read live ones",
                       description=_DESCRIPTION, epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    fsub = p.add_subparsers(dest="features_cmd", required=True, metavar="{check,replay,read}")

    cp = fsub.add_parser(
        "check", help="validate a definitions file; list features and the state each entity keeps",
        description="Validate feature definitions: file:line errors with 'did you mean' suggestions (exit 1). "
        "On success, list every feature and the tiles and event log each entity value keeps.",
        epilog="examples:\n  fraudscore features check\n  fraudscore features check my-features.yaml --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cp.add_argument("file", nargs="?", type=Path,
                    help="definitions YAML (default: feature_store.definitions, else the packaged defaults)")
    cp.add_argument("--json", action="store_true", help="machine-readable output")
    cp.set_defaults(handler=_cmd_check)

    rp = fsub.add_parser(
        "replay", help="compute every order's features as of its event time (training sets, backtests)",
        description="Point-in-time replay: each order's features as of its own event time, including itself; "
        "label-derived features see only labels known by then (label_time + delay). Orders are de-duplicated "
        "by order_id (first wins). The values equal what the online stores compute for the same stream, bit "
        "for bit. Prints a JSON summary (counts, timings, events/s).",
        epilog="examples:\n"
        "  fraudscore features replay --orders data/orders.jsonl --labels data/labels.jsonl --out f.parquet\n"
        "  fraudscore features replay --orders o.parquet --out f.jsonl --skip-invalid",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rp.add_argument("--orders", type=Path, required=True, help="orders, JSONL or Parquet")
    rp.add_argument("--labels", type=Path, help="labels, JSONL or Parquet (label-derived features are 0 without)")
    rp.add_argument("--out", type=Path, required=True, help="output file: .jsonl or .parquet")
    rp.add_argument("--defs", type=Path, help="feature definitions YAML (default: settings, else packaged)")
    rp.add_argument("--format", choices=("jsonl", "parquet"), help="input format when the suffix does not tell")
    rp.add_argument("--out-format", choices=("jsonl", "parquet"), help="output format when the suffix does not tell")
    rp.add_argument("--skip-invalid", action="store_true",
                    help="replay the valid events when some are invalid (each invalid one is still listed)")
    rp.add_argument("--fill-label-entities", action="store_true",
                    help="take a label's missing merchant_id/customer_id from its order (online stores cannot; "
                    "off by default so the training set matches what the model sees online)")
    rp.set_defaults(handler=_cmd_replay)

    gp = fsub.add_parser(
        "read", help="features of one order as of its event time, from the configured store (applies nothing)",
        description="Read an order's features from the configured feature store (memory, redis, redis_cluster, "
        "dynamodb), exactly as the gRPC Score path does, without applying the order.",
        epilog="examples:\n  REDIS_URL=redis://localhost:6379 fraudscore features read @order.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    gp.add_argument("order", help="the order as JSON, or @FILE")
    gp.add_argument("--defs", type=Path, help="feature definitions YAML")
    gp.set_defaults(handler=_cmd_read)
