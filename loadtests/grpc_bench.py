"""gRPC load generator: ``Score`` end to end against a bare echo gRPC server, same client, same run.

    .venv/bin/python loadtests/grpc_bench.py [--rate 1000] [--seconds 8] [--rounds 2] [--store redis|memory]
                                             [--concurrency 16] [--closed-seconds 5] [--runtime compiled]

What it does, all on loopback:

1. trains a 200-tree depth-6 model on synthetic orders and registers it in a temporary registry;
2. starts a real Redis (``--store redis``, the default when ``redis-server`` is on PATH) and loads order
   history into it, so ``Score`` reads real velocity features;
3. starts ``fraudscore serve`` (one process) and an *echo* server — a grpc.aio server with the same
   service, options and process model that returns a canned ``ScoreResponse`` without doing any work;
4. open loop: sends at a fixed rate (default 1,000 rps) from one client process, alternating echo and
   Score blocks (``--rounds``), latency measured from each call's *scheduled* send time (no
   coordinated omission); reports p50 / p90 / p99 / p99.9;
5. closed loop: ``--concurrency`` callers back to back, maximum throughput of each server;
6. per-stage breakdown (features, model, rules, total) from the Score server's Prometheus histograms;
7. writes ``reports/grpc_bench.json`` and ``reports/grpc_bench.png`` (latency percentiles and CDF).

Target (DESIGN.md): p99 of Score ≤ 2 × the echo server's p99 at the same offered load.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import numpy as np  # noqa: E402

from scoring.proto.fraudscore.v1 import scoring_pb2 as pb  # noqa: E402
from scoring.proto.fraudscore.v1 import scoring_pb2_grpc as pb_grpc  # noqa: E402

N_CUSTOMERS = 2000


# ---------------------------------------------------------------------------------- echo server


class EchoServicer(pb_grpc.FraudScoringServicer):
    """Same service, no work: a canned answer of a typical size."""

    def __init__(self) -> None:
        self.resp = pb.ScoreResponse(
            order_id="echo", decision=pb.ALLOW, score=0.0123, model_version="m20260101T000000-00000000",
            ruleset_version="1-000000000000", latency_ms=0.5,
            reasons=[pb.Reason(feature="card_order_count_1h", value=3.0, contribution=0.4,
                               text="card placed 3 orders in the last hour")] * 3,
        )

    async def Score(self, request: pb.ScoreRequest, context: Any) -> pb.ScoreResponse:  # noqa: N802
        return self.resp


async def run_echo(port: int) -> None:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 4 << 20), ("grpc.so_reuseport", 0)])
    pb_grpc.add_FraudScoringServicer_to_server(EchoServicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1)


# ----------------------------------------------------------------------------------------- setup


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 60) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing on port {port}")


def synthetic_history(n: int, seed: int = 5) -> tuple[list[Any], list[Any]]:
    from contracts.events import Label, Order, Payment

    rng = random.Random(seed)
    t = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    step = dt.timedelta(days=10) / n
    orders, labels = [], []
    for i in range(n):
        t += step
        fraud = rng.random() < 0.05
        c = rng.randrange(N_CUSTOMERS)
        orders.append(Order(
            order_id=f"h{i}", event_time=t, customer_id=f"c{c}",
            amount=round(rng.uniform(200, 900) if fraud else rng.lognormvariate(3.5, 0.8), 2), currency="EUR",
            account_created_at=t - dt.timedelta(days=rng.uniform(0.1, 2) if fraud else rng.uniform(30, 900)),
            merchant_id=f"m{rng.randrange(50)}", channel="web",
            payment=Payment(method="card", card_fingerprint=f"card{c if not fraud else rng.randrange(30)}",
                            card_country="DE"),
            ip_address=f"10.1.{c % 250}.{rng.randrange(250)}", ip_country="NG" if fraud and rng.random() < .6 else "DE",
            device_id=f"d{c}", billing_country="DE", shipping_country="GB" if fraud and rng.random() < .5 else "DE",
        ))
        if fraud:
            labels.append(Label(order_id=f"h{i}", label="fraud", source="chargeback", label_time=t))
    return orders, labels


def request_for(i: int) -> pb.ScoreRequest:
    c = i % N_CUSTOMERS
    now = dt.datetime.now(dt.UTC).isoformat()
    return pb.ScoreRequest(order=pb.Order(
        order_id=f"bench-{i}", event_time=now, customer_id=f"c{c}", amount=float(20 + i % 500), currency="EUR",
        account_created_at="2025-01-01T00:00:00+00:00", merchant_id=f"m{i % 50}", channel="web",
        payment=pb.Payment(method="card", card_fingerprint=f"card{c}", card_country="DE"),
        ip_address=f"10.1.{c % 250}.7", ip_country="DE", device_id=f"d{c}", billing_country="DE",
        shipping_country="DE",
    ))


# ----------------------------------------------------------------------------------------- load


async def open_loop(stubs: list[Any], rate: float, seconds: float, offset: int) -> tuple[list[float], int]:
    """Send at a fixed rate; latency from the scheduled send time. Returns (latencies s, errors)."""
    n = int(rate * seconds)
    reqs = [request_for(offset + i) for i in range(n)]
    lat: list[float] = []
    errors = 0
    clock = time.perf_counter  # not loop.time(): uvloop's clock has 1 ms resolution
    start = clock() + 0.05
    tasks = []

    async def one(i: int, due: float) -> None:
        nonlocal errors
        try:
            await stubs[i % len(stubs)](reqs[i], timeout=2.0)
            lat.append(clock() - due)
        except grpc.aio.AioRpcError:
            errors += 1

    for i in range(n):
        due = start + i / rate
        delay = due - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    return lat, errors


async def closed_loop(stubs: list[Any], concurrency: int, seconds: float, offset: int) -> tuple[list[float], float]:
    lat: list[float] = []
    clock = time.perf_counter
    end = clock() + seconds
    counter = [offset]

    async def worker(k: int) -> None:
        while clock() < end:
            counter[0] += 1
            t0 = clock()
            try:
                await stubs[k % len(stubs)](request_for(counter[0]), timeout=2.0)
                lat.append(clock() - t0)
            except grpc.aio.AioRpcError:
                pass

    t0 = clock()
    await asyncio.gather(*[worker(k) for k in range(concurrency)])
    return lat, len(lat) / (clock() - t0)


def pct(lat: list[float]) -> dict[str, float]:
    a = np.asarray(lat) * 1000.0
    if not len(a):
        return {}
    return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "p99.9_ms": float(np.percentile(a, 99.9)),
            "max_ms": float(a.max()), "n": int(len(a))}


# -------------------------------------------------------------------------------------- metrics


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its direct children (Linux /proc), in seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ppid = int(fields[1])
        if int(entry.name) == pid or ppid == pid:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total

_LINE = re.compile(r'^fraudscore_stage_seconds_(bucket|sum|count)\{(.*)\} (\S+)$')


def scrape(port: int) -> dict[tuple[str, str, str], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()  # noqa: S310
    out: dict[tuple[str, str, str], float] = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        labels = dict(kv.split("=", 1) for kv in m.group(2).split(","))
        if labels.get("source") != '"grpc"':
            continue
        stage = labels["stage"].strip('"')
        out[(m.group(1), stage, labels.get("le", "").strip('"'))] = float(m.group(3))
    return out


def stage_breakdown(before: dict[Any, float], after: dict[Any, float]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for stage in ("features", "model", "rules", "total"):
        count = after.get(("count", stage, ""), 0) - before.get(("count", stage, ""), 0)
        total = after.get(("sum", stage, ""), 0) - before.get(("sum", stage, ""), 0)
        buckets = sorted(((float("inf") if le == "+Inf" else float(le)), v - before.get(k, 0))
                         for k, v in after.items() if k[0] == "bucket" and k[1] == stage for le in [k[2]])
        est: dict[str, float] = {}
        for q in (0.5, 0.99):
            target = q * count
            for le, c in buckets:
                if c >= target:
                    est[f"p{int(q * 100)}_le_ms"] = le * 1000.0
                    break
        out[stage] = {"mean_ms": 1000.0 * total / count if count else 0.0, "calls": count, **est}
    return out


# ------------------------------------------------------------------------------------------ main


def plot(echo: list[float], score: list[float], path: Path, rate: float, store: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    qs = [50, 90, 99, 99.9]
    e = [np.percentile(np.asarray(echo) * 1000, q) for q in qs]
    s = [np.percentile(np.asarray(score) * 1000, q) for q in qs]
    x = np.arange(len(qs))
    ax1.bar(x - 0.2, e, 0.4, label="echo server")
    ax1.bar(x + 0.2, s, 0.4, label=f"Score ({store} features, model, rules, reasons)")
    ax1.set_xticks(x, [f"p{q}" for q in qs])
    ax1.set_ylabel("latency (ms)")
    ax1.set_title(f"open loop, {rate:.0f} requests/s")
    ax1.legend()
    for arr, label in ((echo, "echo"), (score, "Score")):
        a = np.sort(np.asarray(arr) * 1000)
        ax2.plot(a, np.arange(1, len(a) + 1) / len(a), label=label)
    ax2.set_xscale("log")
    ax2.set_xlabel("latency (ms, log)")
    ax2.set_ylabel("fraction of calls")
    ax2.set_title("latency CDF")
    ax2.grid(True, which="both", alpha=0.3)
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


async def bench(args: argparse.Namespace) -> int:
    from feature_state.definitions import load_feature_set
    from fraudscore.loop import loop_name
    from training.train import train_and_register

    work = Path(tempfile.mkdtemp(prefix="grpc-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    try:
        features = load_feature_set(None)
        orders, labels = synthetic_history(args.history)
        print(f"training a {args.trees}-tree model on {len(orders)} synthetic orders …", flush=True)
        version = await asyncio.to_thread(train_and_register, orders, labels, features, work / "models",
                                          rounds=args.trees)
        env = {**os.environ, "FRAUDSCORE_METRICS_PORT": str(free_port()), "FRAUDSCORE__EVENT_LOOP": args.event_loop,
               **dict(kv.split("=", 1) for kv in args.server_env)}
        metrics_port = int(env["FRAUDSCORE_METRICS_PORT"])
        if args.store == "redis":
            rport = free_port()
            procs.append(subprocess.Popen(  # noqa: ASYNC220 - start-up, before any timing
                ["redis-server", "--port", str(rport), "--save", "", "--appendonly", "no"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_port(rport)
            env["REDIS_URL"] = f"redis://127.0.0.1:{rport}/0"
            from contracts.config import load_settings
            from feature_state.stores import create_store

            store = create_store(load_settings(environ={"REDIS_URL": env["REDIS_URL"]}).feature_store, features)
            from feature_state.exceptions import FeatureStoreUnavailable

            for i in range(0, len(orders), 500):
                for attempt in range(5):  # a busy machine can push a write past its timeout: retry
                    try:
                        await store.apply_and_read(orders[i : i + 500])
                        break
                    except FeatureStoreUnavailable:
                        if attempt == 4:
                            raise
                        await asyncio.sleep(0.5)
            await store.close()
        sport, eport = free_port(), free_port()
        slog = (work / "serve.log").open("wb")
        logs.append(slog)
        score_proc = subprocess.Popen(  # noqa: ASYNC220 - start-up, before any timing
            [sys.executable, "-m", "fraudscore", "--data-dir", str(work), "serve", "--port", str(sport),
             "--no-publish", "--runtime", args.runtime, "--workers", str(args.workers)],
            env=env, stdout=slog, stderr=subprocess.STDOUT, cwd=ROOT)
        echo_proc = subprocess.Popen(  # noqa: ASYNC220 - start-up, before any timing
            [sys.executable, __file__, "--echo-server", str(eport), "--event-loop", args.event_loop], cwd=ROOT)
        procs += [score_proc, echo_proc]
        wait_port(sport, 120)
        wait_port(eport)
        print(f"model {version}; Score on :{sport} ({args.store} features, {args.runtime} runtime), echo on :{eport}",
              flush=True)
        chans = [grpc.aio.insecure_channel(f"127.0.0.1:{p}") for p in (sport, eport) for _ in range(args.channels)]
        score_stubs = [pb_grpc.FraudScoringStub(c).Score for c in chans[: args.channels]]
        echo_stubs = [pb_grpc.FraudScoringStub(c).Score for c in chans[args.channels :]]
        first = await score_stubs[0](request_for(0), timeout=10)
        print(f"first answer: decision {pb.Decision.Name(first.decision)} score {first.score:.4f} "
              f"degraded {first.degraded} reasons {[r.feature for r in first.reasons]}", flush=True)
        await open_loop(echo_stubs, args.rate, 1.5, 10_000_000)  # warm up both
        await open_loop(score_stubs, args.rate, 1.5, 20_000_000)
        echo_lat: list[float] = []
        score_lat: list[float] = []
        errors = {"echo": 0, "score": 0}
        cpu = {"echo": 0.0, "score": 0.0}
        before = scrape(metrics_port)
        for r in range(args.rounds):
            c0 = cpu_seconds(echo_proc.pid)
            lat, err = await open_loop(echo_stubs, args.rate, args.seconds, 30_000_000 + r * 1_000_000)
            cpu["echo"] += cpu_seconds(echo_proc.pid) - c0
            echo_lat += lat
            errors["echo"] += err
            c0 = cpu_seconds(score_proc.pid)
            lat, err = await open_loop(score_stubs, args.rate, args.seconds, 40_000_000 + r * 1_000_000)
            cpu["score"] += cpu_seconds(score_proc.pid) - c0
            score_lat += lat
            errors["score"] += err
        after = scrape(metrics_port)
        server_cpu_us = {k: round(1e6 * v / max(1, len(echo_lat if k == "echo" else score_lat)), 1)
                         for k, v in cpu.items()}
        closed_echo, echo_tput = await closed_loop(echo_stubs, args.concurrency, args.closed_seconds, 50_000_000)
        closed_score, score_tput = await closed_loop(score_stubs, args.concurrency, args.closed_seconds, 60_000_000)
        for c in chans:
            await c.close()
        e, s = pct(echo_lat), pct(score_lat)
        ratio = s["p99_ms"] / e["p99_ms"]
        # The comparison only means something when the echo server (and so the client and the machine)
        # kept up with the offered load; otherwise both sides measure a saturated machine.
        expected = int(args.rate * args.seconds) * args.rounds
        valid = errors["echo"] == 0 and e["n"] == expected and e["p99_ms"] < 50.0
        met = valid and errors["score"] == 0 and ratio <= 2.0
        report = {
            "command": "python loadtests/grpc_bench.py " + " ".join(sys.argv[1:]),
            "offered_rps": args.rate, "seconds_per_block": args.seconds, "rounds": args.rounds,
            "store": args.store, "runtime": args.runtime, "server_env": args.server_env, "workers": args.workers,
            "model_trees": args.trees, "event_loop": loop_name(args.event_loop),
            "open_loop": {"echo": e, "score": s, "errors": errors},
            "p99_ratio_score_over_echo": round(ratio, 3),
            "server_cpu_us_per_call": server_cpu_us,
            "target_p99_ratio_max": 2.0, "valid_run": valid, "target_met": met,
            "stages_score_open_loop": stage_breakdown(before, after),
            "closed_loop": {"concurrency": args.concurrency,
                            "echo": {"rps": round(echo_tput), **pct(closed_echo)},
                            "score": {"rps": round(score_tput), **pct(closed_score)}},
            "cpus": os.cpu_count(), "load_average_1m": os.getloadavg()[0],
        }
        out = ROOT / "reports"
        out.mkdir(exist_ok=True)
        (out / f"{args.out}.json").write_text(json.dumps(report, indent=2))
        plot(echo_lat, score_lat, out / f"{args.out}.png", args.rate, args.store)
        print(json.dumps(report, indent=2))
        print(f"\nScore p99 {s['p99_ms']:.2f} ms vs echo p99 {e['p99_ms']:.2f} ms at {args.rate:.0f} rps: "
              f"ratio {ratio:.2f} (target ≤ 2.0) → {'MET' if met else 'NOT MET'}"
              f"{'' if valid else ' (INVALID RUN: the echo server did not keep up — machine or client saturated)'}; "
              f"Score errors {errors['score']}; closed loop {score_tput:.0f} vs {echo_tput:.0f} rps; "
              f"server CPU per call: Score {server_cpu_us['score']:.0f} µs, echo {server_cpu_us['echo']:.0f} µs")
        return 0 if met else 1
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
        for f in logs:
            f.close()
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--echo-server", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--rate", type=float, default=1000.0, help="open-loop requests per second (default 1000)")
    ap.add_argument("--seconds", type=float, default=8.0, help="seconds per open-loop block (default 8)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating echo/Score blocks (default 2)")
    ap.add_argument("--concurrency", type=int, default=16, help="closed-loop callers (default 16)")
    ap.add_argument("--closed-seconds", type=float, default=5.0, help="closed-loop seconds per server (default 5)")
    ap.add_argument("--channels", type=int, default=2, help="client channels per server (default 2)")
    ap.add_argument("--store", choices=("redis", "memory"),
                    default="redis" if shutil.which("redis-server") else "memory")
    ap.add_argument("--runtime", default="compiled", choices=("auto", "native", "compiled"))
    ap.add_argument("--workers", type=int, default=1, help="Score server processes (SO_REUSEPORT; default 1)")
    ap.add_argument("--trees", type=int, default=200, help="boosting rounds of the model (default 200)")
    ap.add_argument("--history", type=int, default=30000, help="history orders loaded into the store")
    ap.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for the Score server (ablations), e.g. "
                    "FRAUDSCORE__SCORING__REASONS_TOP_K=0")
    ap.add_argument("--event-loop", default="auto", choices=("auto", "uvloop", "asyncio"),
                    help="event loop of the Score and echo servers (default auto: uvloop when installed, as "
                    "`fraudscore serve`); the client always runs the standard loop")
    ap.add_argument("--out", default="grpc_bench", help="report name under reports/ (default grpc_bench)")
    args = ap.parse_args()
    from fraudscore.loop import run

    if args.echo_server:
        run(run_echo(args.echo_server), args.event_loop)
        return 0
    return asyncio.run(bench(args))  # the client: the standard loop (finer timers), whatever the servers run


if __name__ == "__main__":
    sys.exit(main())
