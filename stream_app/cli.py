"""Subcommands of the stream application: ``worker``, ``topics``, ``dlq``.

Registered by ``fraudscore/cli.py`` (``register(subparsers)``); each handler is
``(args, settings) -> int`` with exit codes 0 ok, 1 problems found, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter
from typing import TYPE_CHECKING, Any

from contracts.config import Settings

if TYPE_CHECKING:
    Sub = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    Sub = argparse._SubParsersAction

WORKER_EPILOG = """\
what it does:
  orders  : consumes `orders` in micro-batches (≤ stream.max_batch records or stream.max_batch_wait_ms),
            updates features once per order, scores, applies rules, publishes one decision per order
            to `decisions` and one action per non-allow decision to `actions` (keyed by order_id), and
            commits offsets only after those are acknowledged. Bad events go to `dead-letters`.
  labels  : consumes `labels` into label-derived features (own consumer group).
  webhook : delivers `actions` to stream.webhook.url (Idempotency-Key: order_id; retries; dead letters).

  Start several workers with the same settings to share partitions (Kafka) or shards (Kinesis);
  adding or removing one rebalances without losing or double-counting anything.
  HTTP on the metrics port: /healthz /readyz /metrics /stats.

examples:
  fraudscore worker                                  orders + labels from Kafka (KAFKA_BOOTSTRAP)
  fraudscore worker --role webhook                   deliver actions to the configured webhook
  fraudscore worker --source kinesis                 orders from the Kinesis stream in stream.kinesis_stream
  FRAUDSCORE__STREAM__MAX_BATCH=5000 fraudscore worker --metrics-port 9200
"""


def register(sub: Sub) -> None:
    _add_worker(sub)
    _add_topics(sub)
    _add_dlq(sub)


# ---------------------------------------------------------------------------------------- worker


def _worker_settings(args: argparse.Namespace, settings: Settings) -> Settings:
    updates: dict[str, Any] = {}
    stream: dict[str, Any] = {}
    if args.source:
        stream["source"] = args.source
    if args.max_batch:
        stream["max_batch"] = args.max_batch
    if stream:
        updates["stream"] = settings.stream.model_copy(update=stream)
    if args.metrics_port:
        updates["metrics"] = settings.metrics.model_copy(update={"port": args.metrics_port})
    if updates:
        from contracts.config import Settings as S

        return S.model_validate({**settings.model_dump(), **{k: v.model_dump() for k, v in updates.items()}})
    return settings


def _cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from fraudscore.assemble import build_parts
    from stream_app.app import build_app, run_app
    from stream_app.kafka import ensure_topics
    from stream_app.worker import ROLES, StreamWorker

    settings = _worker_settings(args, settings)
    roles = [r.strip() for r in args.role.split(",") if r.strip()]
    bad = [r for r in roles if r not in ROLES]
    if bad or not roles:
        print(f"fraudscore worker: unknown role(s) {bad}; choose from {', '.join(ROLES)}", file=sys.stderr)
        return 2
    if "webhook" in roles and settings.stream.webhook.url is None:
        print("fraudscore worker: --role webhook needs stream.webhook.url "
              "(FRAUDSCORE__STREAM__WEBHOOK__URL=https://…)", file=sys.stderr)
        return 2
    if settings.stream.source == "kinesis" and "labels" in roles and settings.stream.kinesis_labels_stream is None:
        roles.remove("labels")
    sink = settings.stream.source if settings.stream.sink == "auto" else settings.stream.sink
    if settings.stream.source == "kafka" or sink == "kafka":
        asyncio.run(ensure_topics(settings.kafka))
    parts = build_parts(settings)
    worker = StreamWorker(settings, parts.pipeline, parts.store, roles=roles)

    def health() -> tuple[bool, dict[str, Any]]:
        ok, detail = worker.health()
        pok, pdetail = parts.health()
        return ok and pok, {**detail, **pdetail}

    def reload() -> None:
        parts.rules.refresh()
        parts.models.refresh()

    from fraudscore.loop import install_policy, loop_name, run

    print(f"fraudscore worker: roles {','.join(roles)} | source {settings.stream.source} | sink {sink} | "
          f"http://{settings.metrics.host}:{settings.metrics.port}/healthz | loop {loop_name(settings.event_loop)}",
          flush=True)

    if settings.stream.source == "kinesis" and sink == "kinesis":
        from stream_app.app import run_without_kafka

        return run(run_without_kafka(settings, worker, health=health, reload=reload), settings.event_loop)
    install_policy(settings.event_loop)  # faust's worker creates its own loop
    app = build_app(settings, worker, health=health, reload=reload, web_port=settings.metrics.port)
    return run_app(app)


def _add_worker(sub: Sub) -> None:
    p = sub.add_parser(
        "worker",
        help="run one stream worker: orders → features → score → rules → decisions + actions",
        description="Run one stream worker process (a faust-streaming app whose orders hot path runs in "
        "batched aiokafka / Kinesis consumers). Stops cleanly on SIGTERM / Ctrl-C: the batch in flight "
        "finishes and is committed, then the worker leaves its group.",
        epilog=WORKER_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--role", default="orders,labels",
                   help="comma-separated roles: orders, labels, webhook (default orders,labels)")
    p.add_argument("--source", choices=("kafka", "kinesis"), help="where orders come from (default stream.source)")
    p.add_argument("--max-batch", type=int, help="max records per micro-batch (default stream.max_batch)")
    p.add_argument("--metrics-port", type=int, help="port of /healthz, /metrics, /stats (default metrics.port)")
    p.set_defaults(handler=_cmd_worker)


# ---------------------------------------------------------------------------------------- topics


def _cmd_topics_create(args: argparse.Namespace, settings: Settings) -> int:
    from stream_app.kafka import all_topics, ensure_topics

    asyncio.run(ensure_topics(settings.kafka))
    for t in all_topics(settings.kafka):
        print(f"{t}: ok (created with {settings.kafka.partitions} partitions if it was missing)")
    return 0


def _cmd_topics_list(args: argparse.Namespace, settings: Settings) -> int:
    from stream_app.kafka import describe_topics

    rows = asyncio.run(describe_topics(settings.kafka))
    missing = [t for t, n in rows if n is None]
    for t, n in rows:
        print(f"{t}: {'MISSING' if n is None else f'{n} partitions'}")
    return 1 if missing else 0


def _add_topics(sub: Sub) -> None:
    p = sub.add_parser("topics", help="create or list the Kafka topics the platform uses",
                       description="The topics: orders, labels, decisions, actions, dead-letters, retrain-requests "
                       "(names and partitions from the settings: kafka.topics.*, kafka.partitions).")
    tsub = p.add_subparsers(dest="topics_cmd", required=True, metavar="{create,list}")
    c = tsub.add_parser("create", help="create missing topics (existing ones are left alone)")
    c.set_defaults(handler=_cmd_topics_create)
    ls = tsub.add_parser("list", help="show each topic's partitions; exit 1 when one is missing")
    ls.set_defaults(handler=_cmd_topics_list)


# ------------------------------------------------------------------------------------------- dlq


def _cmd_dlq_inspect(args: argparse.Namespace, settings: Settings) -> int:
    from stream_app.dlq import read_dead_letters

    letters, foreign = asyncio.run(read_dead_letters(settings.kafka, timeout_s=args.timeout))
    if args.json:
        from stream_app.deadletter import as_dict

        for dl in letters[-args.limit:] if args.limit else letters:
            print(json.dumps(as_dict(dl), default=str))
        return 1 if letters else 0
    if not letters:
        print(f"{settings.kafka.topics.dead_letters}: empty")
        return 0
    print(f"{settings.kafka.topics.dead_letters}: {len(letters)} dead letters"
          + (f" ({foreign} records that are not dead-letter envelopes)" if foreign else ""))
    by = Counter((dl.topic, dl.stage, dl.error_type) for dl in letters)
    print(f"{'topic':<20} {'stage':<12} {'error':<28} count")
    for (topic, stage, etype), n in by.most_common():
        print(f"{topic:<20} {stage:<12} {etype:<28} {n}")
    if args.limit:
        print(f"\nlast {min(args.limit, len(letters))}:")
        for dl in letters[-args.limit:]:
            print(f"- {dl.failed_at:%Y-%m-%d %H:%M:%S} {dl.topic}[{dl.partition}]@{dl.offset} {dl.stage} "
                  f"{dl.error[:160]}")
            print(f"  payload{' (card numbers masked)' if dl.masked else ''}: {dl.payload[:200]}")
    return 1


def _cmd_dlq_replay(args: argparse.Namespace, settings: Settings) -> int:
    from stream_app.dlq import read_dead_letters, replay

    letters, _ = asyncio.run(read_dead_letters(settings.kafka, timeout_s=args.timeout))
    chosen = [dl for dl in letters
              if (not args.stage or dl.stage in args.stage)
              and (not args.error_type or dl.error_type in args.error_type)]
    masked = [dl for dl in chosen if dl.masked]
    todo = [dl for dl in chosen if not dl.masked]
    print(f"{len(chosen)} dead letters match; {len(masked)} had card numbers masked and are never replayed; "
          f"{len(todo)} to replay{' (dry run)' if args.dry_run else ''}")
    if args.dry_run or not todo:
        return 0
    n = asyncio.run(replay(settings.kafka, todo))
    print(f"replayed {n} events to their original topics")
    return 0


def _add_dlq(sub: Sub) -> None:
    p = sub.add_parser(
        "dlq", help="inspect and replay dead letters",
        description="Dead letters hold the error, the source topic/partition/offset and the payload with card "
        "numbers masked. `inspect` summarises them (exit 1 when there are any); `replay` re-publishes "
        "selected payloads to their original topic (e.g. after a processing bug is fixed). Payloads that "
        "had card numbers masked are never replayed.",
        epilog="examples:\n  fraudscore dlq inspect --limit 5\n  fraudscore dlq replay --stage processing --dry-run",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dsub = p.add_subparsers(dest="dlq_cmd", required=True, metavar="{inspect,replay}")
    i = dsub.add_parser("inspect", help="counts by topic, stage and error; the last few envelopes")
    i.add_argument("--limit", type=int, default=5, help="show the last N envelopes (default 5; 0 = none)")
    i.add_argument("--json", action="store_true", help="print envelopes as JSON lines (all, or the last --limit)")
    i.add_argument("--timeout", type=float, default=10.0, help="seconds to spend reading (default 10)")
    i.set_defaults(handler=_cmd_dlq_inspect)
    r = dsub.add_parser("replay", help="re-publish selected dead letters to their original topic")
    r.add_argument("--stage", action="append", choices=("decode", "late", "processing", "delivery"),
                   help="only this stage (repeatable)")
    r.add_argument("--error-type", action="append", help="only this error type, e.g. EventValidationError")
    r.add_argument("--dry-run", action="store_true", help="say what would be replayed")
    r.add_argument("--timeout", type=float, default=10.0, help="seconds to spend reading (default 10)")
    r.set_defaults(handler=_cmd_dlq_replay)
