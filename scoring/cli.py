"""``fraudscore serve``, ``fraudscore score`` and ``fraudscore artifact`` (contributed to the main CLI)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from contracts.config import Settings
from contracts.exceptions import ConfigError

SERVE_EPILOG = """\
examples:
  fraudscore serve                                  gRPC Score on 127.0.0.1:50051 (settings: scoring.*)
  fraudscore serve --host 0.0.0.0 --workers 2       two processes share the port (SO_REUSEPORT), one per core
  REDIS_URL=redis://redis:6379 fraudscore serve     features from Redis (shared with the stream workers)
  fraudscore serve --sagemaker --model-dir /opt/ml/model --host 0.0.0.0 --port 8080
                                                    the SageMaker serving container (GET /ping, POST /invocations)

the container entry point (infra/sagemaker/entrypoint.sh) runs:
  fraudscore serve --sagemaker --host 0.0.0.0 --port 8080 --model-dir /opt/ml/model

TLS / mTLS / tokens / reflection / limits are settings (scoring.tls.*, scoring.auth_tokens, scoring.reflection,
scoring.max_concurrency, scoring.max_message_bytes), e.g. FRAUDSCORE__SCORING__REFLECTION=true.
SIGTERM: health NOT_SERVING, new calls refused, in-flight calls drained (scoring.shutdown_grace_s), exit 0.
Metrics: http://<metrics.host>:<metrics.port + worker index>/metrics.
"""

SCORE_EPILOG = """\
examples:
  fraudscore score --input orders.jsonl --output decisions.jsonl
  fraudscore score --input march.parquet --output march-decisions.parquet --history feb.parquet
  fraudscore score --input orders.jsonl --output d.jsonl --model m20260101T000000-abcd1234 --no-reasons

Features are point-in-time: orders (and --history) are replayed in event-time order through a fresh
embedded store, so each order sees the aggregates it had online. Invalid orders go to
<output>.rejected.jsonl with file:line and the reason (exit code 1); nothing is dropped.
"""


# ------------------------------------------------------------------------------------------ serve


def _serve_sagemaker(args: argparse.Namespace, settings: Settings) -> int:
    from feature_state.definitions import load_feature_set
    from feature_state.stores import create_store
    from fraudscore.assemble import rules_dir, runtime_options
    from rules.reload import RulesHolder
    from scoring.models import ModelHolder
    from scoring.pipeline import DecisionPipeline
    from scoring.sagemaker_server import SageMakerApp, SageMakerServer

    model_dir: Path = args.model_dir
    pinned: str | None
    if (model_dir / "manifest.json").is_file():  # one version, as SageMaker unpacks model.tar.gz
        models_dir, pinned = model_dir.parent, model_dir.name
    else:  # a registry: serve its champion
        models_dir, pinned = model_dir, settings.scoring.model_version
    features = load_feature_set(settings.feature_store.definitions)
    opts = runtime_options(settings, batch_threads=max(1, os.cpu_count() or 1))
    if opts.runtime == "sagemaker":
        raise ConfigError("the serving container cannot itself use runtime=sagemaker; use auto, native or compiled")
    models = ModelHolder(models_dir, features.names, pinned=pinned, options=opts)
    models.refresh()
    if models.current is None:
        print(f"fraudscore serve --sagemaker: no model: {models.last_error or f'nothing to serve in {model_dir}'}",
              file=sys.stderr)
        return 2
    rules = RulesHolder(rules_dir(settings))
    rules.refresh()
    pipeline = DecisionPipeline(create_store(settings.feature_store, features), models, rules,
                                fail_mode=settings.scoring.fail_mode, reasons_top_k=settings.scoring.reasons_top_k)
    server = SageMakerServer(SageMakerApp(models, pipeline), args.host or "0.0.0.0",  # noqa: S104
                             args.port or settings.scoring.sagemaker_port).start()
    print(f"fraudscore serve --sagemaker: http://{args.host or '0.0.0.0'}:{server.port} (GET /ping, POST /invocations)"
          f" | model {models.current.version} ({models.current.kind})", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(settings.scoring.model_reload_interval_s):
        models.refresh()
    server.stop()
    return 0


async def _serve_one(settings: Settings, worker_index: int, publish: bool) -> int:
    from fraudscore.assemble import build_parts
    from monitoring.http import MetricsServer
    from scoring.serve import serve_grpc

    parts = build_parts(settings, background_compile=True)
    metrics_server = MetricsServer(settings.metrics.host, settings.metrics.port + worker_index, parts.health).start()
    sink: Any = None
    closers: list[Any] = []
    if publish:
        from aiokafka import AIOKafkaProducer

        from stream_app.kafka import client_kwargs
        from stream_app.publisher import DecisionPublisher

        # the decisions log is not on the answer's path: serve even while Kafka is unreachable
        publisher = DecisionPublisher.connecting(
            lambda: AIOKafkaProducer(**client_kwargs(settings.kafka), linger_ms=5),
            settings.kafka.topics.decisions, maxsize=settings.scoring.publish_buffer,
        ).start()
        sink = publisher.offer
        closers.append(publisher.stop)

    async def on_stop() -> None:
        for close in closers:
            await close()
        await parts.store.close()
        metrics_server.stop()

    return await serve_grpc(settings, parts.pipeline, sink=sink, on_stop=on_stop, worker_index=worker_index)


def _supervise(args: argparse.Namespace, workers: int) -> int:
    """Start ``workers`` copies of this command (each with --worker-index) and forward SIGTERM/SIGINT."""
    procs = [
        subprocess.Popen([sys.executable, "-m", "fraudscore", *sys.argv[1:], "--worker-index", str(i)])
        for i in range(workers)
    ]

    def forward(signum: int, _: Any) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [p.wait() for p in procs]
    return 0 if all(c == 0 for c in codes) else 1


def _cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    overrides: dict[str, Any] = {}
    if args.host:
        overrides["grpc_host"] = args.host
    if args.port and not args.sagemaker:
        overrides["grpc_port"] = args.port
    if args.workers:
        overrides["workers"] = args.workers
    if args.runtime:
        overrides["runtime"] = args.runtime
    if overrides:
        settings = settings.model_copy(update={"scoring": settings.scoring.model_copy(update=overrides)})
    if args.sagemaker:
        return _serve_sagemaker(args, settings)
    workers = settings.scoring.workers
    if workers > 1 and args.worker_index is None:
        return _supervise(args, workers)
    publish = settings.kafka.bootstrap is not None and not args.no_publish
    from fraudscore.loop import run

    return run(_serve_one(settings, args.worker_index or 0, publish), settings.event_loop)


# ------------------------------------------------------------------------------------------ score


def _cmd_score(args: argparse.Namespace, settings: Settings) -> int:
    from feature_state.definitions import load_feature_set
    from feature_state.stores.memory import MemoryStore
    from fraudscore.assemble import build_models, rules_dir
    from rules.reload import RulesHolder
    from scoring.batch import score_file
    from scoring.pipeline import DecisionPipeline

    if args.model:
        pinned = settings.scoring.model_copy(update={"model_version": args.model})
        settings = settings.model_copy(update={"scoring": pinned})
    if settings.scoring.runtime == "auto":  # a short-lived batch: no background compile
        settings = settings.model_copy(update={"scoring": settings.scoring.model_copy(update={"runtime": "native"})})
    features = load_feature_set(settings.feature_store.definitions)
    models = build_models(settings, features, background_compile=False, batch_threads=max(1, os.cpu_count() or 1))
    if models.current is None:
        print(f"fraudscore score: no model to score with: {models.last_error or 'the registry has no champion'} "
              f"(models dir {settings.models_dir}; `fraudscore train --promote` creates one)", file=sys.stderr)
        return 2
    rules = RulesHolder(rules_dir(settings))
    rules.refresh()
    if rules.current is None:
        print(f"fraudscore score: rules invalid ({rules.last_error}); scoring with default thresholds", file=sys.stderr)
    store = MemoryStore(features, allowed_lateness_s=settings.feature_store.allowed_lateness_s)
    pipeline = DecisionPipeline(store, models, rules, fail_mode=settings.scoring.fail_mode,
                                reasons_top_k=settings.scoring.reasons_top_k)
    report = asyncio.run(score_file(pipeline, args.input, args.output, history=args.history, chunk=args.chunk,
                                    with_reasons=not args.no_reasons, progress=not args.no_progress))
    summary = {"scored": report.scored, "rejected": report.rejected, "decisions": report.decisions,
               "degraded": report.degraded, "model": models.current.version, "output": str(args.output)}
    if report.rejected_file:
        summary["rejected_file"] = str(report.rejected_file)
    print(json.dumps(summary))
    return 1 if report.rejected else 0


# --------------------------------------------------------------------------------------- artifact


def _version_dir(settings: Settings, ref: str) -> Path:
    p = Path(ref)
    if (p / "manifest.json").is_file():
        return p
    d = settings.models_dir / ref
    if not d.is_dir():
        raise ConfigError(f"no model version {ref!r} in {settings.models_dir} (and {ref} is not a version directory)")
    return d


def _key(settings: Settings, required: bool) -> bytes | None:
    k = settings.scoring.model_signing_key
    if k is None and required:
        raise ConfigError("no signing key: set scoring.model_signing_key (e.g. FRAUDSCORE__SCORING__MODEL_SIGNING_KEY)")
    return k.get_secret_value().encode() if k else None


def _cmd_artifact_verify(args: argparse.Namespace, settings: Settings) -> int:
    from feature_state.definitions import load_feature_set
    from scoring.artifacts import verify
    from scoring.exceptions import ModelArtifactError

    vdir = _version_dir(settings, args.version)
    try:
        m = verify(vdir, load_feature_set(settings.feature_store.definitions).names, signing_key=_key(settings, False))
    except ModelArtifactError as exc:
        print(f"REFUSED {exc}", file=sys.stderr)
        return 1
    signed = "signed" if m.raw.get("signature") else "unsigned"
    print(f"OK {m.version}: {len(m.files)} file(s) match their sha256, {len(m.feature_names)} features, {signed}")
    return 0


def _cmd_artifact_sign(args: argparse.Namespace, settings: Settings) -> int:
    from scoring.artifacts import verify, write_signature

    vdir = _version_dir(settings, args.version)
    verify(vdir)  # never sign something whose checksums are wrong
    sig = write_signature(vdir, _key(settings, True) or b"")
    print(f"signed {vdir.name}: {sig[:24]}…")
    return 0


def _cmd_artifact_compile(args: argparse.Namespace, settings: Settings) -> int:
    from scoring.models import RuntimeOptions, load_model
    from scoring.runtimes.compiled import CompiledRuntime

    vdir = _version_dir(settings, args.version)
    opts = RuntimeOptions(runtime="compiled", cache_dir=settings.data_dir / "compiled",
                          signing_key=_key(settings, False))
    rt = load_model(vdir.parent, vdir.name, None, opts)
    if not isinstance(rt, CompiledRuntime):
        print(f"compiling {vdir.name} failed; the native runtime would serve (see the log above)", file=sys.stderr)
        return 1
    print(f"compiled {vdir.name} -> {rt.library} (parity with XGBoost within 1e-6 on sample rows)")
    return 0


# --------------------------------------------------------------------------------------- register


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    raw = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "serve",
        help="run the standalone gRPC scoring server (or the SageMaker serving container with --sagemaker)",
        description="Serve fraudscore.v1.FraudScoring (Score, ScoreBatch) and grpc.health.v1 over the shared "
        "decision pipeline: features from the configured store, the champion model (hot-swapped when the registry "
        "changes), analyst rules (hot-reloaded), reasons, documented fallbacks. Decisions go to the Kafka "
        "`decisions` topic when KAFKA_BOOTSTRAP is set.",
        epilog=SERVE_EPILOG, formatter_class=raw,
    )
    p.add_argument("--host", help="bind address (default scoring.grpc_host, 127.0.0.1; --sagemaker: 0.0.0.0)")
    p.add_argument("--port", type=int, help="port (default scoring.grpc_port 50051; --sagemaker: 8080)")
    p.add_argument("--workers", type=int, help="processes sharing the port with SO_REUSEPORT (default 1)")
    p.add_argument("--runtime", choices=("auto", "native", "compiled", "sagemaker"), help="model runtime")
    p.add_argument("--no-publish", action="store_true", help="do not publish decisions to Kafka")
    p.add_argument("--sagemaker", action="store_true", help="serve the SageMaker HTTP contract instead of gRPC")
    p.add_argument("--model-dir", type=Path, default=Path("/opt/ml/model"),
                   help="--sagemaker: a model version directory or a registry (default /opt/ml/model)")
    p.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    p.set_defaults(handler=_cmd_serve)

    s = sub.add_parser(
        "score",
        help="batch inference: score a JSONL / Parquet file of orders through the decision pipeline",
        description="Score every order of a file with the same pipeline as Score (point-in-time features, model, "
        "rules, reasons) at batch speed, and write one decision per order.",
        epilog=SCORE_EPILOG, formatter_class=raw,
    )
    s.add_argument("--input", type=Path, required=True, help="orders: .jsonl / .ndjson or .parquet")
    s.add_argument("--output", type=Path, required=True, help="decisions: .jsonl or .parquet")
    s.add_argument("--history", type=Path, help="earlier orders that warm the feature state (not scored)")
    s.add_argument("--model", help="model version (default: the registry's champion)")
    s.add_argument("--rules-dir", type=Path, help="rules directory (default rules.dir or the packaged example)")
    s.add_argument("--chunk", type=int, default=2000, help="orders per vectorised model call (default 2000)")
    s.add_argument("--no-reasons", action="store_true", help="skip reason codes (faster)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(handler=_cmd_score)

    a = sub.add_parser(
        "artifact",
        help="verify, sign or pre-compile a model artifact",
        description="Model artifacts are XGBoost JSON/UBJSON plus manifest.json (sha256 of every file, features, "
        "metrics, reference distributions; optional HMAC signature).",
        epilog="examples:\n  fraudscore artifact verify m20260101T000000-abcd1234\n"
        "  FRAUDSCORE__SCORING__MODEL_SIGNING_KEY=… fraudscore artifact sign m20260101T000000-abcd1234\n"
        "  fraudscore artifact compile m20260101T000000-abcd1234   (build the compiled runtime ahead of time)",
        formatter_class=raw,
    )
    asub = a.add_subparsers(dest="artifact_cmd", required=True, metavar="{verify,sign,compile}")
    v = asub.add_parser("verify",
                        help="check checksums, signature (when a key is set), format, features; exit 1 if refused")
    v.add_argument("version", help="version in the registry, or a version directory")
    v.set_defaults(handler=_cmd_artifact_verify)
    sg = asub.add_parser("sign", help="add an HMAC-SHA256 signature with scoring.model_signing_key")
    sg.add_argument("version", help="version in the registry, or a version directory")
    sg.set_defaults(handler=_cmd_artifact_sign)
    c = asub.add_parser("compile", help="build the compiled (tl2cgen) library now and check parity")
    c.add_argument("version", help="version in the registry, or a version directory")
    c.set_defaults(handler=_cmd_artifact_compile)
