"""Scoring fixtures: a small trained model registry (synthetic orders until the simulator is used),
a pipeline factory and a real gRPC server on a free port."""

from __future__ import annotations

import datetime as dt
import random
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from contracts.config import Settings
from contracts.events import Label, Order, Payment
from feature_state.definitions import FeatureSet, load_feature_set
from tests.services import free_port

T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


def synthetic_orders(n: int = 3000, seed: int = 11) -> tuple[list[Order], list[Label]]:
    """Orders with a learnable fraud pattern: card bursts, foreign IPs, new accounts, big amounts."""
    rng = random.Random(seed)
    orders: list[Order] = []
    labels: list[Label] = []
    t = T0
    for i in range(n):
        t += dt.timedelta(seconds=rng.expovariate(1 / 60))
        fraud = rng.random() < 0.06
        cust = f"c{rng.randrange(300)}" if not fraud else f"f{rng.randrange(40)}"
        card = f"card-{cust}" if not fraud else f"fcard-{rng.randrange(15)}"
        created = t - dt.timedelta(days=rng.uniform(0.1, 3) if fraud else rng.uniform(30, 900))
        billing = "DE"
        orders.append(Order(
            order_id=f"o{i}", event_time=t, customer_id=cust,
            amount=round(rng.uniform(200, 900) if fraud and rng.random() < 0.7 else rng.lognormvariate(3.5, 0.8), 2),
            currency="EUR", account_created_at=created, merchant_id=f"m{rng.randrange(20)}", channel="web",
            payment=Payment(method="card", card_fingerprint=card, card_country="DE"),
            ip_address=f"10.0.{rng.randrange(50)}.{rng.randrange(250)}",
            ip_country=rng.choice(["NG", "RU", "BR"]) if fraud and rng.random() < 0.6 else "DE",
            device_id=f"d{rng.randrange(30)}" if fraud else f"d-{cust}",
            billing_country=billing,
            shipping_country=rng.choice(["US", "GB"]) if fraud and rng.random() < 0.5 else billing,
        ))
        if fraud:
            labels.append(Label(order_id=f"o{i}", label="fraud", source="chargeback",
                                label_time=t + dt.timedelta(days=30)))
    return orders, labels


@pytest.fixture(scope="session")
def feature_set() -> FeatureSet:
    return load_feature_set(None)


@pytest.fixture(scope="session")
def trained_registry(tmp_path_factory: pytest.TempPathFactory, feature_set: FeatureSet) -> tuple[Path, str]:
    """A registry with one trained, promoted model (trained once per session)."""
    from training.train import train_and_register

    models = tmp_path_factory.mktemp("registry") / "models"
    orders, labels = synthetic_orders()
    version = train_and_register(orders, labels, feature_set, models, rounds=60)
    return models, version


@pytest.fixture
def registry(trained_registry: tuple[Path, str], tmp_path: Path) -> tuple[Path, str]:
    """A private copy of the trained registry (tests may tamper with it)."""
    src, version = trained_registry
    dst = tmp_path / "data" / "models"
    shutil.copytree(src, dst)
    return dst, version


@pytest.fixture(scope="session")
def sample_orders() -> list[Order]:
    return synthetic_orders(400, seed=99)[0]


def order_msg(**over: Any) -> Any:
    """A valid proto order; keyword arguments override fields."""
    from scoring.proto.fraudscore.v1 import scoring_pb2 as pb

    fields: dict[str, Any] = dict(
        order_id="o-1", event_time="2026-03-02T10:00:00+00:00", customer_id="c1", amount=42.5, currency="EUR",
        account_created_at="2025-01-01T00:00:00+00:00", channel="web", ip_country="DE", billing_country="DE",
        shipping_country="DE", ip_address="10.0.0.1", device_id="d1", merchant_id="m1",
        payment=pb.Payment(method="card", card_fingerprint="tok_abc", card_country="DE"),
    )
    fields.update(over)
    return pb.Order(**fields)


ServerFactory = Callable[..., Any]


@pytest.fixture
async def grpc_server(registry: tuple[Path, str], make_settings: Any) -> AsyncIterator[ServerFactory]:
    """Factory: start a real scoring server over a socket with settings overrides; stopped after the test."""
    from fraudscore.assemble import build_parts
    from scoring.server import FraudScoringServicer, start_server, stop_server

    started: list[Any] = []

    async def factory(*, store: Any = None, sink: Any = None, tokens: tuple[str, ...] = (), tls: Any = None,
                      **overrides: Any) -> Any:
        settings: Settings = make_settings(**{"scoring.runtime": "native", **overrides})
        parts = build_parts(settings)
        if store is not None:
            parts.pipeline.store = store
        sc = settings.scoring
        servicer = FraudScoringServicer(parts.pipeline, max_concurrency=sc.max_concurrency,
                                        default_deadline_s=sc.default_deadline_ms / 1000.0,
                                        min_deadline_s=sc.min_deadline_ms / 1000.0,
                                        **({"sink": sink} if sink else {}))
        server, health, port = await start_server(servicer, "127.0.0.1", free_port(), tls=tls or sc.tls,
                                                  tokens=tokens, reflection=sc.reflection,
                                                  max_message_bytes=sc.max_message_bytes)
        handle = type("H", (), {})()
        handle.server, handle.health, handle.port, handle.parts, handle.servicer = server, health, port, parts, servicer
        handle.settings = settings
        handle.target = f"127.0.0.1:{port}"
        started.append((server, health, parts, store))
        return handle

    yield factory
    for server, health, parts, store in started:
        await stop_server(server, health, grace_s=0.5)
        await parts.store.close()
        if store is not None:
            await store.close()


@pytest.fixture
async def channel_for() -> AsyncIterator[Callable[..., grpc.aio.Channel]]:
    chans: list[grpc.aio.Channel] = []

    def make(target: str, creds: grpc.ChannelCredentials | None = None, **kw: Any) -> grpc.aio.Channel:
        ch = grpc.aio.secure_channel(target, creds, **kw) if creds else grpc.aio.insecure_channel(target, **kw)
        chans.append(ch)
        return ch

    yield make
    for ch in chans:
        await ch.close()
