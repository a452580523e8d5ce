"""``fraudscore simulate``: synthetic payment traffic to files, Kafka or Kinesis.

The composition root wires :func:`add_arguments` and :func:`run`; ``python -m
training.simulator.cli`` runs it stand-alone (settings from the environment).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from contracts.config import Settings, load_settings
from contracts.exceptions import ConfigError
from training.simulator.config import MAX_REORDER_WINDOW_S, SCENARIOS, ScenarioMix, SimulationConfig
from training.simulator.exceptions import SimulatorError
from training.simulator.generator import Simulation, simulate
from training.simulator.sinks.base import SinkReport, StopFlag

#: Orders per second in --live mode when --rate is not given.
LIVE_DEFAULT_RATE = 50.0

DESCRIPTION = """\
Generate realistic synthetic payment traffic, reproducible from a seed: customers with their own
spending habits, merchants and terminals, daily and weekly seasonality, five fraud scenarios and
labels that arrive days to months later (in event time). Writes JSONL or Parquet files (orders,
labels and a ground-truth side file), or produces to Kafka or Kinesis, as fast as possible or at a
fixed rate; --live stamps events with the current time and runs until stopped."""

EPILOG = """\
examples:
  # 6 months of traffic for training, as Parquet (about 1.8 M orders, a minute or so)
  fraudscore simulate --days 180 --format parquet --out data/sim-180d

  # exactly 100,000 orders as JSONL, with 2 % fraud and a different seed
  fraudscore simulate --orders 100000 --fraud-rate 0.02 --seed 7 --out /tmp/sim

  # stream-test traffic: duplicates, 60 s out-of-order window, malformed events
  fraudscore simulate --days 1 --duplicate-rate 0.01 --reorder-window 60 --bad-rate 0.001 --out /tmp/dirty

  # the demo: live traffic into the local platform's Kafka at 200 orders/s until Ctrl-C
  fraudscore simulate --target kafka --live --rate 200

  # one week of history into Kafka at 5,000 orders/s, keeping the ground truth
  KAFKA_BOOTSTRAP=localhost:9092 fraudscore simulate --target kafka --days 7 --rate 5000 --truth-dir /tmp/truth

  # a local Kinesis (moto_server / kinesalite)
  fraudscore simulate --target kinesis --kinesis-endpoint-url http://127.0.0.1:4567 --days 1

outputs (files): orders.jsonl|parquet, labels.* (sorted by label_time), truth.* (fraud orders with
their scenario, injected duplicates and malformed events), summary.json (counts and options).
Same options and seed -> byte-identical output. Reference: docs/simulator.md"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``simulate`` options to ``parser`` (also sets its description and examples)."""
    parser.description = DESCRIPTION
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter

    time = parser.add_argument_group("time")
    time.add_argument("--start", metavar="DATE", type=_parse_start, default=None,
                      help="event time of the first day, RFC 3339 date or date-time (default 2025-01-01; "
                           "--live: now)")  # fmt: skip
    time.add_argument("--days", type=float, default=None,
                      help="event-time span in days (default 7; unbounded with --live or --orders)")  # fmt: skip
    time.add_argument("--orders", type=int, default=None, metavar="N",
                      help="stop after N orders (good, unique ones)")  # fmt: skip
    time.add_argument("--rate", type=float, default=None, metavar="R",
                      help=f"orders per second of wall-clock time (default: as fast as possible; --live: "
                           f"{LIVE_DEFAULT_RATE:g})")  # fmt: skip
    time.add_argument("--live", action="store_true",
                      help="stamp events with the current time and run until stopped (Ctrl-C / SIGTERM)")  # fmt: skip

    traffic = parser.add_argument_group("traffic")
    traffic.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    traffic.add_argument("--orders-per-day", type=int, default=10_000, metavar="N",
                         help="mean orders per simulated day before the weekly factor (default 10000)")  # fmt: skip
    traffic.add_argument("--customers", type=int, default=None, metavar="N",
                         help="customers in the world (default 10 x orders-per-day, at most 1,000,000)")  # fmt: skip
    traffic.add_argument("--merchants", type=int, default=None, metavar="N",
                         help="merchants in the world (default customers / 100)")  # fmt: skip
    traffic.add_argument("--fraud-rate", type=float, default=0.01, metavar="F",
                         help="share of orders that are fraud (default 0.01)")  # fmt: skip
    traffic.add_argument("--mix", type=_parse_mix, default=None, metavar="NAME=SHARE,...",
                         help="share of fraud orders per scenario, e.g. card_testing=0.5,high_amount=0.5 "
                              f"(scenarios: {', '.join(SCENARIOS)}; unnamed ones get 0)")  # fmt: skip
    traffic.add_argument("--review-rate", type=float, default=0.01, metavar="F",
                         help="base probability that an order is manually reviewed (default 0.01)")  # fmt: skip

    dirty = parser.add_argument_group("stream realism (for stream tests)")
    dirty.add_argument("--duplicate-rate", type=float, default=0.0, metavar="F",
                       help="share of orders emitted twice, byte-identical (default 0)")  # fmt: skip
    dirty.add_argument("--reorder-window", type=float, default=0.0, metavar="SECONDS",
                       help=f"shuffle emission order within this event-time window (0 .. {MAX_REORDER_WINDOW_S:g}; "
                            "default 0)")  # fmt: skip
    dirty.add_argument("--bad-rate", type=float, default=0.0, metavar="F",
                       help="malformed events per order: invalid JSON, missing fields, negative amount, naive "
                            "timestamp, card number in a field (default 0)")  # fmt: skip
    dirty.add_argument("--labels", choices=("all", "until-end", "none"), default="all",
                       help="all labels (default), only those known by the end of the span, or none")  # fmt: skip

    target = parser.add_argument_group("target")
    target.add_argument("--target", choices=("files", "kafka", "kinesis"), default="files",
                        help="where the events go (default files)")  # fmt: skip
    target.add_argument("--to", choices=("jsonl", "parquet", "kafka", "kinesis"), default=None,
                        help="shorthand for --target/--format: jsonl, parquet, kafka or kinesis")  # fmt: skip
    target.add_argument("--out", type=Path, default=Path("sim-out"), metavar="DIR",
                        help="files: output directory (default ./sim-out)")  # fmt: skip
    target.add_argument("--format", choices=("jsonl", "parquet"), default="jsonl",
                        help="files: JSONL (exact event bytes) or Parquet (typed tables) (default jsonl)")  # fmt: skip
    target.add_argument("--truth-dir", type=Path, default=None, metavar="DIR",
                        help="kafka/kinesis: also write truth.jsonl and summary.json here")  # fmt: skip
    target.add_argument("--bootstrap", default=None, metavar="HOST:PORT",
                        help="kafka: bootstrap servers (default: KAFKA_BOOTSTRAP / settings)")  # fmt: skip
    target.add_argument("--orders-topic", default=None, metavar="NAME",
                        help="kafka: orders topic (default from settings: orders)")  # fmt: skip
    target.add_argument("--labels-topic", default=None, metavar="NAME",
                        help="kafka: labels topic (default from settings: labels)")  # fmt: skip
    target.add_argument("--no-create", action="store_true",
                        help="kafka/kinesis: do not create missing topics / streams")  # fmt: skip
    target.add_argument("--kinesis-stream", default=None, metavar="NAME",
                        help="kinesis: orders stream (default from settings: orders)")  # fmt: skip
    target.add_argument("--kinesis-labels-stream", default=None, metavar="NAME",
                        help="kinesis: labels stream (default from settings: labels)")  # fmt: skip
    target.add_argument("--kinesis-endpoint-url", default=None, metavar="URL",
                        help="kinesis: endpoint of a local API server (default from settings, else AWS)")  # fmt: skip
    target.add_argument("--kinesis-shards", type=int, default=1, metavar="N",
                        help="kinesis: shards of streams it creates (default 1)")  # fmt: skip
    target.add_argument("--aws-region", default=None, metavar="REGION",
                        help="kinesis: AWS region (default: settings' region, us-east-1)")  # fmt: skip

    run_group = parser.add_argument_group("run")
    run_group.add_argument("--workers", type=int, default=None, metavar="N",
                           help="processes encoding days in parallel (default: 1, or several for big runs on "
                                ">2 CPUs); output is identical")  # fmt: skip
    run_group.add_argument("--quiet", action="store_true", help="no progress or summary on stderr")


def _parse_start(text: str) -> dt.datetime:
    try:
        if len(text) == 10:
            return dt.datetime.combine(dt.date.fromisoformat(text), dt.time(), tzinfo=dt.UTC)
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an RFC 3339 date (2025-01-01) or date-time (2025-01-01T00:00:00Z)"
        ) from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no UTC offset; add Z or +hh:mm")
    return value


def _parse_mix(text: str) -> ScenarioMix:
    shares: dict[str, float] = dict.fromkeys(SCENARIOS, 0.0)
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in shares:
            raise argparse.ArgumentTypeError(f"{part!r}: expected NAME=SHARE with NAME one of {', '.join(SCENARIOS)}")
        try:
            shares[name] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r}: {value!r} is not a number") from None
    try:
        return ScenarioMix(**shares)
    except SimulatorError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_config(args: argparse.Namespace) -> SimulationConfig:
    """The :class:`SimulationConfig` the options describe (raises SimulationConfigError)."""
    start = args.start
    if start is None:
        start = dt.datetime.now(dt.UTC).replace(microsecond=0) if args.live else dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    days = args.days
    if days is None and not args.live and args.orders is None:
        days = 7.0
    kw: dict[str, Any] = {
        "seed": args.seed,
        "start": start,
        "days": days,
        "max_orders": args.orders,
        "orders_per_day": args.orders_per_day,
        "customers": args.customers,
        "merchants": args.merchants,
        "fraud_rate": args.fraud_rate,
        "review_rate": args.review_rate,
        "duplicate_rate": args.duplicate_rate,
        "reorder_window_s": args.reorder_window,
        "bad_rate": args.bad_rate,
        "labels": args.labels.replace("-", "_"),
    }
    if args.mix is not None:
        kw["mix"] = args.mix
    return SimulationConfig(**kw)


def _progress(report: SinkReport) -> None:
    rate = report.orders / report.seconds if report.seconds else 0.0
    print(
        f"simulate: {report.orders:,} orders, {report.labels:,} labels sent to {report.target} ({rate:,.0f} orders/s)",
        file=sys.stderr,
        flush=True,
    )


@contextmanager
def _stop_on_signals(stop: StopFlag) -> Iterator[None]:
    """SIGINT / SIGTERM set ``stop`` (the run ends after the current batch) instead of killing us."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run ``simulate``; returns the exit code (0 ok, 1 target failed, 2 invalid options)."""
    try:
        config = build_config(args)
    except ConfigError as exc:
        print(f"fraudscore simulate: {exc}", file=sys.stderr)
        return 2
    rate = args.rate if args.rate is not None else (LIVE_DEFAULT_RATE if args.live else None)
    if rate is not None and rate <= 0:
        print("fraudscore simulate: --rate must be > 0", file=sys.stderr)
        return 2
    if args.to is not None:
        args.target, args.format = ("files", args.to) if args.to in ("jsonl", "parquet") else (args.to, args.format)
    sim = simulate(config, workers=args.workers)
    stop = StopFlag()
    progress = None if args.quiet else _progress
    common: dict[str, Any] = {"rate": rate, "live": args.live, "stop": stop, "progress": progress}
    try:
        with _stop_on_signals(stop):
            report = _dispatch(args, settings, sim, common)
    except SimulatorError as exc:
        print(f"fraudscore simulate: {exc}", file=sys.stderr)
        return 1
    if not args.quiet:
        _print_summary(sim, report)
    return 0


def _dispatch(args: argparse.Namespace, settings: Settings, sim: Simulation, common: dict[str, Any]) -> SinkReport:
    if args.target == "files":
        from training.simulator.sinks.files import write_files

        return write_files(sim, args.out, fmt=args.format, **common)
    if args.target == "kafka":
        from training.simulator.sinks.kafka import KafkaTarget, send_to_kafka

        kafka = KafkaTarget.from_settings(
            settings.kafka, bootstrap=args.bootstrap, orders_topic=args.orders_topic,
            labels_topic=args.labels_topic, create_topics=False if args.no_create else None,
        )  # fmt: skip
        return asyncio.run(send_to_kafka(sim, kafka, truth_dir=args.truth_dir, **common))
    from training.simulator.sinks.kinesis import KinesisTarget, send_to_kinesis

    kinesis = KinesisTarget(
        orders_stream=args.kinesis_stream or settings.stream.kinesis_stream,
        labels_stream=args.kinesis_labels_stream or settings.kafka.topics.labels,
        region=args.aws_region or settings.feature_store.aws_region,
        endpoint_url=args.kinesis_endpoint_url or settings.stream.kinesis_endpoint_url,
        create_streams=not args.no_create,
        shards=args.kinesis_shards,
    )
    return send_to_kinesis(sim, kinesis, truth_dir=args.truth_dir, **common)


def _print_summary(sim: Simulation, report: SinkReport) -> None:
    s = sim.summary
    rate = report.orders / report.seconds if report.seconds else 0.0
    where = ", ".join(f"{k}: {v}" for k, v in report.outputs.items())
    by_scenario = ", ".join(f"{k} {v}" for k, v in s.fraud_by_scenario.items() if v)
    labels = ", ".join(f"{k} {v}" for k, v in sorted(s.labels.items()))
    extra = ""
    if s.duplicates or any(s.bad_events.values()):
        extra = f"\n  injected: {s.duplicates} duplicates, {sum(s.bad_events.values())} malformed events"
    print(
        f"simulate: {s.orders:,} orders over {s.days_generated} day(s) in {report.seconds:.1f} s "
        f"({rate:,.0f} events/s on the orders stream){' — stopped' if report.stopped else ''}\n"
        f"  fraud: {s.fraud_orders:,} orders ({s.fraud_rate:.2%}): {by_scenario or 'none'}\n"
        f"  labels: {labels or 'none'}{extra}\n"
        f"  wrote {where}",
        file=sys.stderr,
    )


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m training.simulator.cli``)."""
    parser = argparse.ArgumentParser(prog="python -m training.simulator.cli")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        settings = load_settings(environ=os.environ)
    except ConfigError as exc:
        print(f"fraudscore simulate: {exc}", file=sys.stderr)
        return 2
    return run(args, settings)


if __name__ == "__main__":
    sys.exit(main())
