"""Helpers for tests that run `fraudscore serve` as a real process and read its /metrics and /healthz."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.services import free_port

T = TypeVar("T")


class ServeProcess:
    """`fraudscore serve` on free gRPC and metrics ports, output in a log file under ``tmp_path``."""

    def __init__(self, models_dir: Path, tmp_path: Path, *args: str, env: dict[str, str] | None = None,
                 publish: bool = False) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.log_path = tmp_path / f"serve-{self.port}.log"
        self._log: IO[bytes] = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fraudscore", "--data-dir", str(models_dir.parent), "serve", "--port",
             str(self.port), "--runtime", "native", *([] if publish else ["--no-publish"]), *args],
            env={**os.environ, **(env or {}), "FRAUDSCORE_METRICS_PORT": str(self.metrics_port)},
            stdout=self._log, stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_serving(self, wait_s: float = 60.0) -> None:
        deadline = time.monotonic() + wait_s
        async with grpc.aio.insecure_channel(self.target) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, f"server exited early:\n{self.log()[-3000:]}"
                try:
                    r = await stub.Check(health_pb2.HealthCheckRequest(service="fraudscore.v1.FraudScoring"),
                                         timeout=1)
                    if r.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.1)
        raise TimeoutError(f"server never became SERVING:\n{self.log()[-3000:]}")

    def _get(self, path: str) -> tuple[int, str, str]:
        url = f"http://127.0.0.1:{self.metrics_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 - loopback test server
                return r.status, r.headers.get("Content-Type", ""), r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()

    async def healthz(self) -> tuple[int, dict[str, Any]]:
        code, ctype, body = await asyncio.to_thread(self._get, "/healthz")
        assert ctype == "application/json", (code, ctype, body)
        return code, json.loads(body)

    async def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """Every sample of the /metrics page: (sample name, labels) → value."""
        code, ctype, body = await asyncio.to_thread(self._get, "/metrics")
        assert code == 200 and ctype.startswith("text/plain"), (code, ctype)
        return {(s.name, frozenset(s.labels.items())): s.value
                for family in text_string_to_metric_families(body) for s in family.samples}

    async def stop(self, wait_s: float = 30.0) -> int:
        """SIGTERM and the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.proc.wait, wait_s)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def sample(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], metric: str, /,
           **labels: str) -> float | None:
    return samples.get((metric, frozenset(labels.items())))


def samples_named(samples: dict[tuple[str, frozenset[tuple[str, str]]], float],
                  name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


async def poll_until(probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], what: str,
                     wait_s: float = 30.0) -> T:
    """Call ``probe`` until ``done(result)``; fail with the last result after ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        last = await probe()
        if done(last):
            return last
        assert time.monotonic() < deadline, f"{what}: not reached within {wait_s}s; last: {last!r}"
        await asyncio.sleep(0.05)
