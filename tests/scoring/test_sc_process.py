"""`fraudscore serve` as real processes: SIGTERM under load drains and exits 0; several workers share a port."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from scoring.proto.fraudscore.v1 import scoring_pb2 as pb
from scoring.proto.fraudscore.v1 import scoring_pb2_grpc as pb_grpc
from tests.scoring.conftest import order_msg
from tests.services import free_port


def _start(registry: tuple[Path, str], tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    models, _ = registry
    port = free_port()
    log = (tmp_path / f"serve-{port}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fraudscore", "--data-dir", str(models.parent), "serve", "--port", str(port),
         "--runtime", "native", *args],
        env={**os.environ, "FRAUDSCORE_METRICS_PORT": str(free_port()), **(env or {})},
        stdout=log, stderr=subprocess.STDOUT,
    )
    return proc, port, log


async def _wait_serving(target: str, proc: subprocess.Popen[bytes], wait_s: float = 60.0) -> None:
    deadline = time.monotonic() + wait_s
    async with grpc.aio.insecure_channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            assert proc.poll() is None, "server exited early"
            try:
                r = await stub.Check(health_pb2.HealthCheckRequest(service="fraudscore.v1.FraudScoring"), timeout=1)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError("server never became SERVING")


@contextlib.asynccontextmanager
async def _serving(registry: tuple[Path, str], tmp_path: Path, *args: str,
                   env: dict[str, str] | None = None) -> AsyncIterator[int]:
    """A `serve` process that answers health checks; on leaving, SIGTERM must stop it with exit 0."""
    proc, port, log = _start(registry, tmp_path, *args, env=env)
    try:
        await _wait_serving(f"127.0.0.1:{port}", proc)
        yield port
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


async def test_sigterm_under_load_drains_in_flight_and_exits_zero(registry: tuple[Path, str], tmp_path: Path) -> None:
    proc, port, log = _start(registry, tmp_path, "--no-publish")
    target = f"127.0.0.1:{port}"
    try:
        await _wait_serving(target, proc)
        sigterm_at: list[float] = []
        outcomes: list[tuple[float, float, str]] = []  # (start, end, code)
        batch = pb.ScoreBatchRequest(orders=[order_msg(order_id=f"l{i}", customer_id=f"c{i % 7}") for i in range(150)])

        async def client(ch: grpc.aio.Channel) -> None:
            stub = pb_grpc.FraudScoringStub(ch)
            while not sigterm_at or time.monotonic() < sigterm_at[0] + 2.0:
                start = time.monotonic()
                try:
                    await stub.ScoreBatch(batch, timeout=10)
                    code = "OK"
                except grpc.aio.AioRpcError as exc:
                    code = exc.code().name
                outcomes.append((start, time.monotonic(), code))
                if code != "OK":
                    await asyncio.sleep(0.05)

        async def terminate() -> None:
            await asyncio.sleep(1.0)
            sigterm_at.append(time.monotonic())
            proc.send_signal(signal.SIGTERM)

        async with grpc.aio.insecure_channel(target) as ch:
            await asyncio.gather(*[client(ch) for _ in range(8)], terminate())
        code = await asyncio.to_thread(proc.wait, 30)
        assert code == 0, (tmp_path / f"serve-{port}.log").read_text()[-3000:]
        t = sigterm_at[0]
        codes = {c for _, _, c in outcomes}
        failures = [(round(s - t, 3), round(e - t, 3), c) for s, e, c in outcomes if c != "OK"]
        assert codes <= {"OK", "UNAVAILABLE"}, failures  # never CANCELLED / INTERNAL mid-call
        drained = [o for o in outcomes if o[0] < t < o[1] and o[2] == "OK"]
        assert drained, "no call was in flight at SIGTERM and completed after it"
        assert any(c == "UNAVAILABLE" for s, _, c in outcomes if s > t + 0.5), "new calls were not refused"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


async def test_two_workers_share_one_port_and_stop_on_sigterm(registry: tuple[Path, str], tmp_path: Path) -> None:
    async with _serving(registry, tmp_path, "--workers", "2", "--no-publish") as port:
        target = f"127.0.0.1:{port}"
        # both workers print their banner once they serve
        deadline = time.monotonic() + 60
        text = ""
        while time.monotonic() < deadline:
            text = (tmp_path / f"serve-{port}.log").read_text()
            if "serve[0]" in text and "serve[1]" in text:
                break
            await asyncio.sleep(0.2)
        assert "serve[0]" in text and "serve[1]" in text, text[-2000:]
        async with grpc.aio.insecure_channel(target) as ch:
            stub = pb_grpc.FraudScoringStub(ch)
            for i in range(20):
                r = await stub.Score(pb.ScoreRequest(order=order_msg(order_id=f"w{i}")), timeout=5)
                assert r.order_id == f"w{i}"


@pytest.mark.parametrize("bad", ["missing", "tampered"])
async def test_serve_starts_degraded_with_a_bad_model_and_says_why(registry: tuple[Path, str], tmp_path: Path,
                                                                   bad: str) -> None:
    models, version = registry
    if bad == "missing":
        (models / "champion").write_text("m-does-not-exist\n")
    else:
        (models / version / "model.ubj").write_bytes(b"{" + b"0" * 100)
    async with _serving(registry, tmp_path, "--no-publish") as port:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            r = await pb_grpc.FraudScoringStub(ch).Score(pb.ScoreRequest(order=order_msg()), timeout=5)
        assert r.degraded and "model_unavailable" in r.degraded_reasons
    text = (tmp_path / f"serve-{port}.log").read_text()
    assert ("no such model version" in text) if bad == "missing" else ("sha256 mismatch" in text)


async def test_serve_publishes_decisions_to_kafka(registry: tuple[Path, str], tmp_path: Path, kafka_broker: Any,
                                                  unique: str) -> None:
    import json

    from aiokafka import AIOKafkaConsumer

    from contracts.config import load_settings
    from stream_app.kafka import ensure_topics

    topic = f"decisions-{unique}"
    env = {"KAFKA_BOOTSTRAP": kafka_broker.bootstrap, "FRAUDSCORE__KAFKA__TOPICS__DECISIONS": topic}
    await ensure_topics(load_settings(environ=env).kafka)
    async with _serving(registry, tmp_path, env=env) as port:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.FraudScoringStub(ch)
            for i in range(5):
                await stub.Score(pb.ScoreRequest(order=order_msg(order_id=f"pub{i}")), timeout=5)
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka_broker.bootstrap, auto_offset_reset="earliest",
                                    group_id=f"t-{unique}")
        await consumer.start()
        got: set[str] = set()
        try:
            deadline = time.monotonic() + 30
            while len(got) < 5 and time.monotonic() < deadline:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    got.update(json.loads(r.value)["order_id"] for r in records)
        finally:
            await consumer.stop()
        assert got == {f"pub{i}" for i in range(5)}


@pytest.mark.parametrize(("choice", "expected"), [("auto", "uvloop"), ("asyncio", "asyncio")])
async def test_serve_runs_on_the_configured_event_loop(registry: tuple[Path, str], tmp_path: Path, choice: str,
                                                       expected: str) -> None:
    """``event_loop: auto`` serves on uvloop (a dependency on Linux), ``asyncio`` on the standard loop; both score."""
    async with _serving(registry, tmp_path, "--no-publish", env={"FRAUDSCORE__EVENT_LOOP": choice}) as port:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.FraudScoringStub(ch)
            for i in range(10):
                r = await stub.Score(pb.ScoreRequest(order=order_msg(order_id=f"loop{i}")), timeout=5)
                assert r.order_id == f"loop{i}" and r.model_version and not r.degraded
    text = (tmp_path / f"serve-{port}.log").read_text()
    assert f"| loop {expected}" in text, text[-2000:]
