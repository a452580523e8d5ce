"""Real services for the tests, started as child processes on free loopback ports.

Each service is a small class with ``start()`` / ``stop()``; fixtures in ``tests/conftest.py``
wrap them. When a service's program is missing the test is skipped locally but **fails** under
``CI=true`` (CI must never pass by skipping).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from stream_app.embedded_broker import EmbeddedBroker

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ROOT = Path(__file__).resolve().parents[1]


def missing(what: str) -> None:
    """Skip locally, fail under CI=true."""
    msg = f"required test service unavailable: {what}"
    if IN_CI:
        pytest.fail(msg + " (CI=true: failing instead of skipping)")
    pytest.skip(msg)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_HANDED_OUT: set[int] = set()


def free_port_below(limit: int) -> int:
    """A free port below ``limit`` whose port + 10000 is free too (Redis Cluster nodes also listen
    on port + 10000, the cluster bus, which must stay below 65536). Never the same port twice."""
    import random

    for _ in range(1000):
        port = random.randrange(20000, limit)  # noqa: S311 - not security relevant
        if port in _HANDED_OUT:
            continue
        try:
            for p in (port, port + 10000):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.bind(("127.0.0.1", p))
        except OSError:
            continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free port pair below {limit}")


def wait_port(port: int, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class KafkaBroker:
    """The embedded Tansu broker on a free port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.broker = EmbeddedBroker("127.0.0.1", self.port)

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    def start(self) -> KafkaBroker:
        self.broker.start()
        return self

    def stop(self) -> None:
        self.broker.stop()


class RedisServer:
    """A throw-away redis-server (no persistence) that tests may stop and restart."""

    def __init__(self, port: int | None = None, extra: list[str] | None = None) -> None:
        if shutil.which("redis-server") is None:
            missing("redis-server on PATH")
        self.port = port or free_port()
        self.extra = extra or []
        self.dir = Path(tempfile.mkdtemp(prefix="fs-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), "--protected-mode", "no", *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_port(self.port, proc=self.proc)
        return self

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None


class RedisCluster:
    """Three redis-server masters forming a Redis Cluster on loopback ports."""

    def __init__(self, masters: int = 3) -> None:
        if shutil.which("redis-cli") is None:
            missing("redis-cli on PATH (to create a Redis Cluster)")
        # a cluster node also listens on port + 10000 (the cluster bus), which must stay below 65536
        self.nodes = [RedisServer(port=free_port_below(55000),
                                  extra=["--cluster-enabled", "yes", "--cluster-node-timeout", "2000",
                                         "--cluster-config-file", "nodes.conf"]) for _ in range(masters)]

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", n.port) for n in self.nodes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    def start(self) -> RedisCluster:
        for n in self.nodes:
            n.start()
        addrs = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(["redis-cli", "--cluster", "create", *addrs, "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # every node must agree (the first one to say ok is not enough)
            outs = [subprocess.run(["redis-cli", "-p", str(n.port), "cluster", "info"],
                                   capture_output=True, text=True, timeout=10).stdout for n in self.nodes]
            if all("cluster_state:ok" in out for out in outs):
                return self
            time.sleep(0.1)
        raise TimeoutError("redis cluster did not reach cluster_state:ok")

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


class MotoServer:
    """moto in server mode: DynamoDB, Kinesis, S3 … over HTTP, reached through boto3."""

    def __init__(self) -> None:
        exe = Path(sys.executable).parent / "moto_server"
        if not exe.exists():
            missing("moto_server (pip install 'moto[server]')")
        self.exe = str(exe)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoServer:
        self.proc = subprocess.Popen([self.exe, "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, proc=self.proc)
        return self

    def reset(self) -> None:
        import urllib.request

        req = urllib.request.Request(self.endpoint_url + "/moto-api/reset", method="POST")
        urllib.request.urlopen(req, timeout=10).read()  # noqa: S310 - loopback test server

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None


class Kinesalite:
    """kinesalite (npm), a local Kinesis API server, in memory. Unlike moto it closes a shard on a
    split or merge: GetRecords on the parent ends with ``NextShardIterator = null`` and new records go
    to the children. Installed by ``scripts/install_kinesalite.sh`` into ``.cache/kinesalite``;
    ``KINESALITE_BIN`` (path to its ``bin/kinesalite`` script) overrides where it is found."""

    def __init__(self) -> None:
        script = os.environ.get("KINESALITE_BIN") or str(ROOT / ".cache/kinesalite/node_modules/.bin/kinesalite")
        node = shutil.which("node")
        if node is None or not Path(script).is_file():
            missing("kinesalite (scripts/install_kinesalite.sh)")
        self.cmd = [str(node), script]
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Kinesalite:
        # streams are created, deleted and resharded at once (no CREATING/UPDATING delay to wait out)
        self.proc = subprocess.Popen([*self.cmd, "--port", str(self.port), "--shardLimit", "100",
                                      "--createStreamMs", "0", "--deleteStreamMs", "0", "--updateStreamMs", "0"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, proc=self.proc)
        return self

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None
