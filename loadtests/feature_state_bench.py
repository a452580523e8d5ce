"""Feature store benchmark: updates/s and as-of read latency per store, and replay events/s.

    .venv/bin/python loadtests/feature_state_bench.py                 # memory + Redis (+ cluster, DynamoDB)
    .venv/bin/python loadtests/feature_state_bench.py --quick         # smaller, for a smoke run

Traffic comes from the simulator (``fraudscore simulate``, seeded). For each store the first
``--orders`` orders are applied in event-time batches of ``--batch`` (updates/s = orders applied per
second, each touching ~7 entity keys), then ``--reads`` held-out later orders are read one at a time
with ``read_as_of`` (the gRPC path: one order per call, serial). On Redis each read is paired with a
raw redis-py ``HGETALL`` of a 20-field hash on the same server, same client library, same event loop,
alternating, so the ratio ``read p99 / HGETALL p99`` is measured under the same noise (target ≤ 1.5).
Replay, best of 3 over every simulated order and label: ``feature_state.replay.replay`` over decoded
``Order``/``Label`` objects, and ``replay_table`` over the same events written by the simulator as
Parquet and read as validated Arrow columns (what ``fraudscore features replay`` and training use; the
file read and validation timed separately). Prints ratios, writes
``reports/feature_state_bench.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgspec  # noqa: E402

from contracts.events import Label, Order  # noqa: E402
from feature_state.definitions import load_feature_set  # noqa: E402
from feature_state.io import read_events  # noqa: E402
from feature_state.replay import replay, replay_table  # noqa: E402
from feature_state.stores.base import FeatureStore  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def simulate(n: int, out: Path, fmt: str = "jsonl") -> tuple[list[Order], list[Label]]:
    exe = str(Path(sys.executable).parent / "fraudscore")
    subprocess.run([exe, "simulate", "--orders", str(n), "--seed", "11", "--out", str(out), "--quiet",
                    "--format", fmt], check=True)
    if fmt != "jsonl":
        return [], []
    orders = read_events(Order, out / "orders.jsonl").events
    labels = read_events(Label, out / "labels.jsonl").events
    orders.sort(key=lambda o: (o.event_time, o.order_id))
    labels.sort(key=lambda lb: lb.label_time)
    return orders, labels


def start_redis() -> tuple[subprocess.Popen[bytes], str, Path]:
    from tests.services import free_port, wait_port

    port = free_port()
    d = Path(tempfile.mkdtemp(prefix="fs-bench-redis-"))
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(d)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_port(port, proc=proc)
    return proc, f"redis://127.0.0.1:{port}/0", d


async def apply_all(store: FeatureStore, orders: list[Order], labels: list[Label], batch: int) -> dict[str, float]:
    """Apply orders (and the labels known by then) in event-time batches; updates/s."""
    li = 0
    t0 = time.perf_counter()
    label_s = 0.0
    for i in range(0, len(orders), batch):
        chunk = orders[i : i + batch]
        end = chunk[-1].event_time
        due = []
        while li < len(labels) and labels[li].label_time <= end:
            due.append(labels[li])
            li += 1
        if due:
            t = time.perf_counter()
            await store.apply_labels(due)
            label_s += time.perf_counter() - t
        await store.apply_batch(chunk)
    total = time.perf_counter() - t0
    return {"orders": len(orders), "seconds": round(total, 3), "updates_per_s": round(len(orders) / (total - label_s)),
            "labels": li}


async def read_latency(store: FeatureStore, probes: list[Order], baseline: Any = None) -> dict[str, Any]:
    """Serial one-order reads; with ``baseline`` (an async fn) alternate a raw call for the ratio."""
    ours: list[float] = []
    raw: list[float] = []
    for o in probes[:50]:  # warm-up
        await store.read_as_of([o])
        if baseline is not None:
            await baseline()
    for o in probes:
        t = time.perf_counter()
        await store.read_as_of([o])
        ours.append((time.perf_counter() - t) * 1e6)
        if baseline is not None:
            t = time.perf_counter()
            await baseline()
            raw.append((time.perf_counter() - t) * 1e6)
    out: dict[str, Any] = {"reads": len(ours), "p50_us": round(pct(ours, 0.5), 1), "p99_us": round(pct(ours, 0.99), 1),
                           "mean_us": round(statistics.fmean(ours), 1)}
    if raw:
        out["hgetall_p50_us"] = round(pct(raw, 0.5), 1)
        out["hgetall_p99_us"] = round(pct(raw, 0.99), 1)
        out["p99_ratio_vs_hgetall"] = round(out["p99_us"] / out["hgetall_p99_us"], 2)
        out["p50_ratio_vs_hgetall"] = round(out["p50_us"] / out["hgetall_p50_us"], 2)
    return out


async def bench_store(name: str, store: FeatureStore, orders: list[Order], labels: list[Label], n_apply: int,
                      n_reads: int, batch: int, redis_url: str | None = None, cluster: bool = False) -> dict[str, Any]:
    history, probes = orders[:n_apply], orders[n_apply : n_apply + n_reads]
    res: dict[str, Any] = {"store": name}
    res["apply"] = await apply_all(store, history, labels, batch)
    baseline = None
    client = None
    if redis_url is not None:
        if cluster:
            from redis.asyncio.cluster import RedisCluster

            client = RedisCluster.from_url(redis_url)
        else:
            from redis.asyncio import Redis

            client = Redis.from_url(redis_url)
        await client.hset("bench:{raw}:h", mapping={f"feature_{i:02d}": f"{i * 1.2345:.4f}" for i in range(20)})

        async def baseline() -> Any:
            return await client.hgetall("bench:{raw}:h")

    res["read"] = await read_latency(store, probes, baseline)
    if client is not None:
        await client.aclose()
    await store.close()
    return res


def _best(fn: Any, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def bench_replay(orders: list[Order], labels: list[Label], sim: Path, repeat: int = 3) -> dict[str, Any]:
    """Replay from objects, and from Parquet columns (simulated into ``sim`` with the same seed)."""
    from feature_state.io import LoadedTable, read_table

    fs = load_feature_set()
    best = _best(lambda: replay(fs, orders, labels), repeat)
    events = len(orders) + len(labels)
    out: dict[str, Any] = {
        "orders": len(orders), "labels": len(labels), "best_seconds": round(best, 3),
        "events_per_s": round(events / best), "target_events_per_s": 200_000,
        "ratio_vs_target": round(events / best / 200_000, 2),
    }
    t = time.perf_counter()
    otab = read_table(Order, sim / "orders.parquet")
    ltab = read_table(Label, sim / "labels.parquet")
    read_s = time.perf_counter() - t
    if not isinstance(otab, LoadedTable) or not isinstance(ltab, LoadedTable):
        out["parquet"] = {"error": f"not read as columns: {otab if isinstance(otab, str) else ltab}"}
        return out
    n = len(otab.table) + len(ltab.table)
    best_t = _best(lambda: replay_table(fs, otab.table, ltab.table), repeat)
    out["parquet"] = {"events": n, "read_validate_seconds": round(read_s, 3), "best_seconds": round(best_t, 3),
                      "events_per_s": round(n / best_t), "ratio_vs_target": round(n / best_t / 200_000, 2),
                      "with_read_events_per_s": round(n / (best_t + read_s))}
    return out


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    from feature_state.stores.memory import MemoryStore
    from feature_state.stores.redis import RedisStore

    tmp = Path(tempfile.mkdtemp(prefix="fs-bench-"))
    procs: list[Any] = []
    try:
        t = time.perf_counter()
        orders, labels = simulate(args.orders + args.reads, tmp / "sim")
        print(f"simulated {len(orders)} orders, {len(labels)} labels in {time.perf_counter() - t:.1f}s", flush=True)
        fs = load_feature_set()
        report: dict[str, Any] = {"command": " ".join(sys.argv), "cpus": os.cpu_count(),
                                  "load_average": os.getloadavg(), "stores": []}
        want = set(args.stores.split(","))

        async def guarded(name: str, make: Any, *a: Any, **kw: Any) -> None:
            try:
                r = await bench_store(name, make(), *a, **kw)
            except Exception as exc:  # noqa: BLE001 - a failing store is reported, the others still run
                r = {"store": name, "error": f"{type(exc).__name__}: {exc}"}
            report["stores"].append(r)
            print(json.dumps(r), flush=True)

        if "replay" in want:
            simulate(args.orders + args.reads, tmp / "sim-parquet", "parquet")
            report["replay"] = bench_replay(orders, labels, tmp / "sim-parquet")
            print("replay:", json.dumps(report["replay"]), flush=True)
        if "memory" in want:
            await guarded("memory", lambda: MemoryStore(fs, allowed_lateness_s=3600), orders, labels, args.orders,
                          args.reads, args.batch)

        url = os.environ.get("REDIS_URL")
        if "redis" not in want:
            url = None
        elif url is None and shutil.which("redis-server"):
            proc, url, _ = start_redis()
            procs.append(proc)
        if url:
            redis_url = url
            await guarded("redis", lambda: RedisStore(fs, redis_url, allowed_lateness_s=3600, timeout_ms=1000,
                                                      write_timeout_ms=30_000, key_prefix=f"bench{int(time.time())}"),
                          orders, labels, args.orders, args.reads, args.batch, redis_url=url)
        if "redis_cluster" in want and shutil.which("redis-cli"):
            from tests.services import RedisCluster

            cl = RedisCluster().start()
            procs.append(cl)
            await guarded("redis_cluster", lambda: RedisStore(fs, cl.url, allowed_lateness_s=3600, timeout_ms=1000,
                                                              write_timeout_ms=30_000, cluster=True),
                          orders, labels, args.cluster_orders, args.reads, args.batch, redis_url=cl.url, cluster=True)
        if "dynamodb" in want:
            from feature_state.stores.dynamodb import DynamoDBStore
            from tests.services import MotoServer

            os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
            os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
            moto = MotoServer().start()
            procs.append(moto)
            endpoint = moto.endpoint_url
            await guarded("dynamodb (moto server)",
                          lambda: DynamoDBStore(fs, "fs-bench", endpoint_url=endpoint, allowed_lateness_s=3600,
                                                timeout_ms=10_000, write_timeout_ms=120_000, commit_concurrency=1),
                          orders, labels, args.dynamodb_orders, min(args.reads, 200), 50)
        return report
    finally:
        for p in procs:
            if hasattr(p, "terminate"):
                p.terminate()
                p.wait(10)
            else:
                p.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--orders", type=int, default=100_000, help="orders applied to memory and Redis")
    ap.add_argument("--reads", type=int, default=3000, help="serial as-of reads per store")
    ap.add_argument("--batch", type=int, default=500, help="orders per apply batch")
    ap.add_argument("--stores", default="replay,memory,redis,redis_cluster,dynamodb",
                    help="what to measure (comma list); DynamoDB runs on moto's server: functional numbers only")
    ap.add_argument("--cluster-orders", type=int, default=30_000)
    ap.add_argument("--dynamodb-orders", type=int, default=500)
    ap.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "feature_state_bench.json")
    args = ap.parse_args()
    if args.quick:
        args.orders, args.reads, args.cluster_orders, args.dynamodb_orders = 10_000, 500, 5_000, 200
    report = asyncio.run(main_async(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(msgspec.json.format(msgspec.json.encode(report), indent=2))
    print()
    print(f"{'store':<24}{'updates/s':>12}{'read p50 µs':>14}{'read p99 µs':>14}{'HGETALL p99':>14}{'p99 ratio':>11}")
    for s in report["stores"]:
        if "error" in s:
            print(f"{s['store']:<24} failed: {s['error']}")
            continue
        rd = s["read"]
        print(f"{s['store']:<24}{s['apply']['updates_per_s']:>12}{rd['p50_us']:>14}{rd['p99_us']:>14}"
              f"{rd.get('hgetall_p99_us', '-'):>14}{rd.get('p99_ratio_vs_hgetall', '-'):>11}")
    rp = report.get("replay")
    if rp:
        print(f"replay: {rp['events_per_s']} events/s ({rp['orders']} orders + {rp['labels']} labels), "
              f"{rp['ratio_vs_target']}× the 200,000 events/s target")
        pq = rp.get("parquet", {})
        if "events_per_s" in pq:
            print(f"replay from Parquet columns (the CLI and training path): {pq['events_per_s']} events/s "
                  f"({pq['events']} events), {pq['ratio_vs_target']}× the target; with the file read and "
                  f"validation ({pq['read_validate_seconds']} s): {pq['with_read_events_per_s']} events/s")
        elif pq:
            print(f"replay from Parquet: {pq['error']}")
    print(f"report: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
