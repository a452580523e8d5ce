"""`fraudscore up` end to end in a subprocess: orders in, decisions out, Score over gRPC, clean stop."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from feature_state.definitions import load_feature_set
from fraudscore.bootstrap import bootstrap_history
from stream_app.embedded_broker import port_free
from tests.services import free_port
from training.train import train_and_register

REPO = Path(__file__).resolve().parents[2]
FRAUDSCORE = [sys.executable, "-m", "fraudscore"]


def _order(order_id: str, customer: str = "c-smoke", amount: float = 25.0) -> bytes:
    return json.dumps({
        "order_id": order_id, "event_time": "2026-11-25T12:00:00+00:00", "customer_id": customer,
        "amount": amount, "currency": "EUR", "channel": "web", "merchant_id": "m-1",
        "payment": {"method": "card", "card_fingerprint": "tok_smoke", "card_bin": "411111", "card_country": "DE"},
        "billing_country": "DE", "shipping_country": "DE", "ip_country": "DE", "device_id": "d-smoke",
    }).encode()


class Platform:
    def __init__(self, tmp: Path) -> None:
        self.data = tmp / "data"
        self.grpc_port, self.metrics_port, self.kafka_port = free_port(), free_port(), free_port()
        self.env = {
            **os.environ,
            "FRAUDSCORE_DATA_DIR": str(self.data),
            "FRAUDSCORE_GRPC_PORT": str(self.grpc_port),
            "FRAUDSCORE_METRICS_PORT": str(self.metrics_port),
            "FRAUDSCORE__KAFKA__EMBEDDED_PORT": str(self.kafka_port),
            "FRAUDSCORE__KAFKA__PARTITIONS": "2",
        }
        self.env.pop("KAFKA_BOOTSTRAP", None)
        self.env.pop("REDIS_URL", None)
        self.log = tmp / "up.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    def start(self, *args: str) -> None:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen([*FRAUDSCORE, "up", *args], env=self.env, cwd=self.data.parent,
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")
            if "fraudscore is up" in text:
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"fraudscore up exited with {self.proc.returncode}:\n{text}")
            time.sleep(0.2)
        raise AssertionError("fraudscore up did not come up:\n" + self.log.read_text(errors="replace"))

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("fraudscore up did not stop within 60 s:\n" + self.log.read_text()) from None


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    tmp = tmp_path_factory.mktemp("up")
    p = Platform(tmp)
    # a small model up front, so the test does not wait for the 60-day bootstrap training
    orders, labels = bootstrap_history(days=10, orders_per_day=1500)
    train_and_register(orders, labels, load_feature_set(), p.data / "models", rounds=40)
    p.start()
    yield p
    if p.proc is not None and p.proc.poll() is None:
        p.stop()


async def _produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def _collect(bootstrap: str, topic: str, want: set[str], key: str = "order_id",
                   timeout: float = 60.0,  # noqa: ASYNC109 - a collect window: returns what arrived by then
                   ) -> dict[str, dict[str, object]]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                group_id=f"smoke-{uuid.uuid4().hex[:6]}")
    await consumer.start()
    found: dict[str, dict[str, object]] = {}
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not want <= set(found):
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for r in records:
                    rec = json.loads(r.value)
                    ident = rec.get(key) if key != "payload" else json.loads(rec["payload"]).get("order_id")
                    if ident in want:
                        found[str(ident)] = rec
    finally:
        await consumer.stop()
    return found


def test_orders_are_decided_end_to_end(platform: Platform) -> None:
    ids = [f"smoke-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    asyncio.run(_produce(platform.bootstrap, "orders", [(b"c-smoke", _order(i)) for i in ids]))
    decisions = asyncio.run(_collect(platform.bootstrap, "decisions", set(ids)))
    assert set(decisions) == set(ids), platform.log.read_text()
    for d in decisions.values():
        assert d["decision"] in {"allow", "review", "challenge", "block"}
        assert d["model_version"] and d["ruleset_version"]
        assert isinstance(d["score"], float) and 0.0 <= d["score"] <= 1.0
        assert d["features"]["customer_order_count_1h"] is not None  # type: ignore[index]
    # the third order of the same customer sees the two before it
    counts = sorted(d["features"]["customer_order_count_1h"] for d in decisions.values())  # type: ignore[index]
    assert counts == [1.0, 2.0, 3.0]


def test_malformed_order_goes_to_dead_letters_and_the_next_is_decided(platform: Platform) -> None:
    bad_id = f"bad-{uuid.uuid4().hex[:8]}"
    good_id = f"good-{uuid.uuid4().hex[:8]}"
    bad = json.dumps({"order_id": bad_id, "event_time": "2026-11-25T12:00:00+00:00", "customer_id": "c-smoke",
                      "amount": -5, "currency": "EUR"}).encode()
    asyncio.run(_produce(platform.bootstrap, "orders", [(b"c-smoke", bad), (b"c-smoke", _order(good_id))]))
    decisions = asyncio.run(_collect(platform.bootstrap, "decisions", {good_id}))
    assert good_id in decisions
    dead = asyncio.run(_collect(platform.bootstrap, "dead-letters", {bad_id}, key="payload"))
    assert bad_id in dead
    assert "$.amount" in str(dead[bad_id]["error"])
    assert dead[bad_id]["topic"] == "orders"


def test_score_from_a_client_generated_from_the_proto(platform: Platform) -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "examples" / "score_client.py"), "--target", f"127.0.0.1:{platform.grpc_port}",
         "--deadline-ms", "5000"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert out.returncode == 0, out.stderr
    fields = dict(line.split(None, 1) for line in out.stdout.splitlines() if " " in line.strip())
    assert fields["decision"].strip() in {"ALLOW", "REVIEW", "CHALLENGE", "BLOCK"}
    assert fields["model"].strip().startswith("m")
    assert fields["ruleset"].strip()


def test_second_up_on_the_same_ports_fails_clearly(platform: Platform) -> None:
    out = subprocess.run([*FRAUDSCORE, "up"], env=platform.env, capture_output=True, text=True, timeout=60,
                         cwd=platform.data.parent, check=False)
    assert out.returncode == 2
    assert "already in use" in out.stderr
    assert str(platform.grpc_port) in out.stderr and str(platform.kafka_port) in out.stderr


def test_stop_leaves_nothing_behind(platform: Platform) -> None:
    assert platform.stop() == 0, platform.log.read_text()
    for port in (platform.grpc_port, platform.metrics_port, platform.kafka_port):
        assert port_free("127.0.0.1", port), f"port {port} still bound after stop"
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    assert f"tcp://127.0.0.1:{platform.kafka_port}" not in ps, "embedded broker left running"


def _decided(line: str) -> int:
    # "[    12s]     201 orders/s | decided     2210 | allow 2170 review 22 … | p99 order→decision 31 ms | …"
    return int(line.split("| decided", 1)[1].split("|", 1)[0])


def test_demo_decides_live_traffic_and_stops_on_ctrl_c(platform: Platform, tmp_path: Path) -> None:
    """`fraudscore up --demo` (what `make demo` runs): its own simulated traffic, a live summary, Ctrl-C."""
    import shutil

    demo = Platform(tmp_path)
    shutil.copytree(platform.data / "models", demo.data / "models")  # the module's small model: no bootstrap wait
    demo.start("--demo", "--rate", "100")
    try:
        deadline = time.monotonic() + 120
        summary: list[str] = []
        while time.monotonic() < deadline:
            lines = demo.log.read_text(errors="replace").splitlines()
            summary = [ln for ln in lines if "| decided" in ln and _decided(ln) > 0]
            if len(summary) >= 2 and _decided(summary[-1]) > _decided(summary[0]):
                break
            time.sleep(0.5)
        else:
            raise AssertionError("the demo summary never showed orders being decided:\n" + demo.log.read_text())
        last = summary[-1]
        for part in ("orders/s", "allow", "review", "challenge", "block", "dead letters", "p99 order→decision",
                     "model m", "rules "):
            assert part in last, f"{part!r} missing from the summary line {last!r}"
    finally:
        code = demo.stop(signal.SIGINT)  # Ctrl-C
    text = demo.log.read_text(errors="replace")
    assert code == 0, text
    assert "Traceback" not in text and " ERROR " not in text, text
    for port in (demo.grpc_port, demo.metrics_port, demo.kafka_port):
        assert port_free("127.0.0.1", port), f"port {port} still bound after Ctrl-C"
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    assert f"tcp://127.0.0.1:{demo.kafka_port}" not in ps, "embedded broker left running"
