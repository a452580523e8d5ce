"""Stream pipeline throughput and freshness against a plain aiokafka loop, same broker, same run.

    .venv/bin/python loadtests/stream_bench.py [--orders 100000] [--partitions 4] [--rate 10000]

1. starts an embedded broker (or uses $KAFKA_BOOTSTRAP) and pre-produces N orders;
2. **baseline**: a plain aiokafka consumer-group loop — ``getmany(5000)``, produce every record
   (same key and value) with ``send()``, await the batch, commit — over the N orders;
3. **pipeline**: one ``StreamWorker`` (orders role) over the same N orders: decode, features
   (embedded memory store, or Redis when $REDIS_URL is set and the Redis store exists), model,
   rules, decisions + actions produced, commit;
4. **freshness**: orders produced live at ``--rate``/s for ``--seconds``; for each, the wall time
   from its append to the broker (record timestamp) until its feature update is applied and
   visible to ``read_as_of`` (p50 / p99);
5. prints the ratio pipeline / baseline (target ≥ 0.5) and writes reports/stream_bench.json.

Both rates exclude the consumer-group join (measured from the first record received).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "stream_app"))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: E402

from contracts.config import load_settings  # noqa: E402
from stream_app.embedded_broker import EmbeddedBroker  # noqa: E402
from stream_app.kafka import ensure_topics  # noqa: E402


async def produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=256 * 1024)
    await producer.start()
    t0 = time.perf_counter()
    futs = []
    for k, v in records:
        futs.append(await producer.send(topic, v, key=k))
        if len(futs) >= 10_000:
            await asyncio.gather(*futs)
            futs = []
    await asyncio.gather(*futs)
    await producer.stop()
    return time.perf_counter() - t0


async def baseline(bootstrap: str, src: str, dst: str, n: int, group: str) -> float:
    consumer = AIOKafkaConsumer(src, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
                                auto_offset_reset="earliest", max_poll_records=5000)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all", max_batch_size=256 * 1024)
    await producer.start()
    await consumer.start()
    seen = 0
    t0 = None
    try:
        while seen < n:
            batch = await consumer.getmany(timeout_ms=100, max_records=5000)
            if not batch:
                continue
            if t0 is None:
                t0 = time.perf_counter()
            futs = []
            for msgs in batch.values():
                for m in msgs:
                    futs.append(await producer.send(dst, m.value, key=m.key))
                seen += len(msgs)
            await asyncio.gather(*futs)
            await consumer.commit()
        return seen / (time.perf_counter() - (t0 or time.perf_counter()))
    finally:
        await consumer.stop()
        await producer.stop()


class NullStore:
    """Ablation only: a feature store that applies nothing and returns order-only features."""

    def __new__(cls, inner):  # type: ignore[no-untyped-def]
        from feature_state.stores.base import BatchResult, FeatureStore
        from feature_state.windows import derive

        class _Null(FeatureStore):
            async def read_as_of(self, orders):  # type: ignore[no-untyped-def]
                return [self._f(o) for o in orders]

            async def apply_batch(self, orders):  # type: ignore[no-untyped-def]
                return BatchResult(features=[self._f(o) for o in orders])

            def _f(self, o):  # type: ignore[no-untyped-def]
                empty = {f.name: None for f in self.features.aggregates}
                empty.update(derive(self.features, o, empty))
                return empty

        return _Null(inner.features)


async def pipeline_run(settings, n: int, *, live_rate: float = 0.0, live_s: float = 0.0,
                       live_records: bool = False, ablation: str = "full", group: str | None = None) -> dict:
    import functools

    from fraudscore.assemble import build_parts
    from stream_app.worker import StreamWorker

    if group:
        settings = settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"consumer_group": group})})
    parts = build_parts(settings)
    pipeline, store = parts.pipeline, parts.store
    if ablation in ("no_store", "rules_only"):
        store = NullStore(parts.store)
        pipeline.store = store
    if ablation in ("no_reasons", "no_store"):
        pipeline.decide = functools.partial(pipeline.decide, with_reasons=False)  # type: ignore[method-assign]
    if ablation == "rules_only":
        parts.models.current = None
    worker = StreamWorker(settings, pipeline, store, roles=("orders",))
    task = asyncio.create_task(worker.run())
    t_first = None
    while True:
        if task.done():
            task.result()
        st = worker.consumers["orders"].stats if worker.consumers else None
        if st and st.events and t_first is None:
            t_first = time.perf_counter() - 0.0
            ev0 = st.events
        if st and st.events >= n:
            break
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - (t_first or 0)
    rate = (n - ev0) / elapsed if elapsed > 0 else 0.0
    out = {"orders_per_s": rate, "store": settings.feature_store.type,
           "model": parts.models.current.version if parts.models.current else None}
    if live_records:
        proc = worker.orders_processor
        assert proc is not None
        proc.recent_freshness_ms.clear()
        stages_before = _stage_totals()
        # The load generator runs in its own process so it does not share this event loop / core.
        gen = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--produce-live", settings.kafka.bootstrap, settings.kafka.topics.orders,
            str(live_rate), str(live_s), stdout=asyncio.subprocess.PIPE,
        )
        stdout, _ = await gen.communicate()
        achieved = float(stdout.decode().strip().splitlines()[-1])
        target = n + int(live_rate * live_s)
        deadline = time.perf_counter() + 120
        while worker.consumers["orders"].stats.events < target and time.perf_counter() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        samples = sorted(proc.recent_freshness_ms)
        out["live_batches"] = _stage_means(stages_before, _stage_totals())
        out["freshness"] = {
            "offered_rate": achieved,
            "samples": len(samples),
            "p50_ms": statistics.median(samples) if samples else None,
            "p99_ms": samples[int(len(samples) * 0.99) - 1] if samples else None,
            "max_ms": samples[-1] if samples else None,
        }
    worker.stop()
    await asyncio.wait_for(task, 60)
    return out


def _stage_totals() -> dict[str, tuple[float, float]]:
    """(sum, count) of the worker's per-batch stage histograms and batch sizes, from this process."""
    from prometheus_client import REGISTRY

    out: dict[str, tuple[float, float]] = {}
    for metric in REGISTRY.collect():
        if metric.name not in ("fraudscore_stream_batch_seconds", "fraudscore_stream_batch_size"):
            continue
        for sample in metric.samples:
            key = sample.labels.get("stage", "size")
            total, count = out.get(key, (0.0, 0.0))
            if sample.name.endswith("_sum"):
                out[key] = (total + sample.value, count)
            elif sample.name.endswith("_count"):
                out[key] = (total, count + sample.value)
    return out


def _stage_means(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Per live batch: mean orders and mean ms of each stage (decode, decide, publish, commit)."""
    means: dict[str, float] = {}
    for key, (total, count) in after.items():
        t0, c0 = before.get(key, (0.0, 0.0))
        if count > c0:
            scale = 1 if key == "size" else 1000
            means[key if key == "size" else f"{key}_ms"] = round((total - t0) / (count - c0) * scale, 2)
    means["batches"] = after.get("size", (0, 0))[1] - before.get("size", (0, 0))[1]
    return means


async def produce_live(bootstrap: str, topic: str, rate: float, seconds: float) -> None:
    """Child process of the freshness run: produce live orders at ``rate``/s; print the achieved rate."""
    from streamkit import make_traffic

    # a hex prefix: order ids with a 10-digit timestamp and a counter can pass the card-number check
    records = make_traffic(int(rate * seconds), seed=3, customers=10_000, duplicate_rate=0, reorder_window_s=0,
                           rate_per_s=50, prefix=f"live{int(time.time()):x}").emitted
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=1)
    await producer.start()
    step = max(1, int(rate / 200))  # 200 sends of `step` orders per second
    t0 = time.perf_counter()
    for i in range(0, len(records), step):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        for k, v in records[i:i + step]:
            await producer.send(topic, v, key=k)
    await producer.flush()
    print(len(records) / (time.perf_counter() - t0), flush=True)
    await producer.stop()


async def main() -> int:
    if len(sys.argv) == 6 and sys.argv[1] == "--produce-live":
        await produce_live(sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--orders", type=int, default=100_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--rate", type=float, default=10_000.0, help="live rate for the freshness run")
    ap.add_argument("--seconds", type=float, default=5.0, help="length of the freshness run")
    ap.add_argument("--max-batch", type=int, default=2000)
    ap.add_argument("--event-loop", default="auto", choices=("auto", "uvloop", "asyncio"),
                    help="event loop of this process, so of the baseline and the pipeline alike (default auto: "
                    "uvloop when installed, as `fraudscore worker`)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a settings override for the pipeline (dotted path), e.g. scoring.reasons_for=non_allow")
    ap.add_argument("--ablations", action="store_true",
                    help="also run the pipeline without reasons, without the feature store, and rules only "
                         "(each over the same orders, in its own consumer group): where the time goes")
    args = ap.parse_args()

    from streamkit import make_traffic

    from tests.services import free_port

    broker = None
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP")
    if not bootstrap:
        broker = EmbeddedBroker("127.0.0.1", free_port()).start()
        bootstrap = broker.bootstrap
    data = Path(tempfile.mkdtemp(prefix="stream-bench-"))
    run = str(int(time.time()))
    try:
        # a small model, trained on simulated history, so the pipeline scores for real
        from feature_state.definitions import load_feature_set
        from training.train import train_and_register

        hist = make_traffic(4000, seed=1, duplicate_rate=0, reorder_window_s=0)
        from streamkit import labels_for

        await asyncio.to_thread(train_and_register, hist.orders, labels_for(hist.orders, every=20),
                                load_feature_set(None), data / "models", rounds=200)
        overrides = {"data_dir": str(data), "kafka.bootstrap": bootstrap, "kafka.partitions": args.partitions,
                     "kafka.consumer_group": f"bench-{run}", "stream.max_batch": args.max_batch,
                     "stream.max_batch_wait_ms": 5}
        for name in ("orders", "labels", "decisions", "actions", "dead_letters", "retrain_requests"):
            overrides[f"kafka.topics.{name}"] = f"bench-{name.replace('_', '-')}-{run}"
        overrides.update(kv.split("=", 1) for kv in args.set)
        env = {k: v for k, v in os.environ.items() if k == "REDIS_URL"}
        settings = load_settings(environ=env, overrides=overrides)
        await ensure_topics(settings.kafka)
        traffic = make_traffic(args.orders, seed=2, customers=max(1000, args.orders // 10), duplicate_rate=0,
                               reorder_window_s=0, rate_per_s=50)
        t = settings.kafka.topics
        prod_s = await produce(bootstrap, t.orders, traffic.emitted)
        print(f"pre-produced {len(traffic.emitted):,} orders in {prod_s:.1f}s ({len(traffic.emitted) / prod_s:,.0f}/s)")
        base = await baseline(bootstrap, t.orders, f"bench-sink-{run}", len(traffic.emitted), f"bench-base-{run}")
        print(f"baseline  plain aiokafka consume+produce: {base:,.0f} events/s")
        pipe = await pipeline_run(settings, len(traffic.emitted), live_rate=args.rate, live_s=args.seconds,
                                  live_records=True)
        ratio = pipe["orders_per_s"] / base
        print(f"pipeline  orders → decisions + actions ({pipe['store']} store, model {pipe['model']}): "
              f"{pipe['orders_per_s']:,.0f} orders/s")
        print(f"ratio     pipeline / baseline = {ratio:.2f} (target ≥ 0.5)")
        f = pipe.get("freshness") or {}
        if f.get("p99_ms") is not None:
            print(f"freshness at {f['offered_rate']:,.0f} orders/s offered: p50 {f['p50_ms']:.1f} ms, "
                  f"p99 {f['p99_ms']:.1f} ms, max {f['max_ms']:.1f} ms (target p99 ≤ 100 ms; {pipe['store']} store)")
            lb = pipe.get("live_batches") or {}
            print("live batches: " + ", ".join(f"{k} {v:g}" for k, v in lb.items()))
        ablations = {}
        if args.ablations:
            for name in ("no_reasons", "no_store", "rules_only"):
                res = await pipeline_run(settings, len(traffic.emitted), ablation=name, group=f"bench-{name}-{run}")
                ablations[name] = res["orders_per_s"]
                rate = res["orders_per_s"]
                print(f"ablation  {name:<11} {rate:>9,.0f} orders/s  ratio {rate / base:.2f}")
        report = {"orders": len(traffic.emitted), "partitions": args.partitions, "max_batch": args.max_batch,
                  "baseline_events_per_s": base, "pipeline": pipe, "event_loop": _loop_choice(), "ratio": ratio,
                  "ablations": ablations,
                  "command": "python loadtests/stream_bench.py " + " ".join(sys.argv[1:])}
        out = ROOT / "reports"
        out.mkdir(exist_ok=True)
        (out / "stream_bench.json").write_text(json.dumps(report, indent=2, default=str))
        print(f"wrote {out / 'stream_bench.json'}")
        return 0
    finally:
        if broker is not None:
            broker.stop()


def _loop_choice() -> str:
    argv = sys.argv[1:]
    if "--event-loop" in argv and argv.index("--event-loop") + 1 < len(argv):
        return argv[argv.index("--event-loop") + 1]
    return next((a.split("=", 1)[1] for a in argv if a.startswith("--event-loop=")), "auto")


if __name__ == "__main__":
    from fraudscore.loop import run

    sys.exit(run(main(), _loop_choice()))
