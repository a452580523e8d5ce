"""feature_state fixtures: one factory that builds any store on its real service.

``store_kind`` is parametrized over every backend (``ALL_STORES``); ``make_store(features,
lateness)`` returns a fresh, empty store of that kind (unique key prefix / table per call), so a
hypothesis test can build one per example. ``engine`` chooses the compiled kernel (default) or the
pure-Python reference path; tests that must hold for both parametrize it (``ENGINES``). Tests are
synchronous and drive the stores with ``run(coro)`` on one event loop per test; stores are closed
on that loop at teardown.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from feature_state.definitions import FeatureSet
from feature_state.stores.base import FeatureStore
from tests.services import missing

ALL_STORES = ["memory", "redis", "redis_cluster", "dynamodb"]
#: the compiled batch kernel and the pure-Python reference path (feature_state.windows)
ENGINES = ["compiled", "python"]

StoreFactory = Callable[..., FeatureStore]


@pytest.fixture(params=ALL_STORES)
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


Runner = Callable[[Any], Any]


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.run_until_complete(lp.shutdown_asyncgens())
    lp.close()


@pytest.fixture
def run(loop: asyncio.AbstractEventLoop) -> Runner:
    """Run a coroutine to completion on this test's event loop."""
    return loop.run_until_complete


@pytest.fixture
def engine(request: pytest.FixtureRequest) -> str:
    """``compiled`` (the default) or ``python``; parametrize indirectly to run both."""
    name = str(getattr(request, "param", "compiled"))
    if name == "compiled":
        from feature_state import kernel

        if kernel.load() is None:
            missing("a C compiler (cc/gcc) for the compiled feature kernel")
    return name


@pytest.fixture
def make_store(
    store_kind: str, engine: str, request: pytest.FixtureRequest, run: Runner
) -> Iterator[StoreFactory]:
    """Factory of empty stores of ``store_kind`` on the real service, using ``engine``."""
    made: list[FeatureStore] = []
    use_kernel = engine == "compiled"
    service: Any = None
    if store_kind == "redis":
        service = request.getfixturevalue("redis_url")
    elif store_kind == "redis_cluster":
        service = request.getfixturevalue("redis_cluster")
    elif store_kind == "dynamodb":
        service = request.getfixturevalue("moto_server")

    def factory(features: FeatureSet, lateness_s: float = 600.0, **kw: Any) -> FeatureStore:
        store: FeatureStore
        if store_kind == "memory":
            from feature_state.stores.memory import MemoryStore

            store = MemoryStore(features, lateness_s, use_kernel=use_kernel, **kw)
        elif store_kind in ("redis", "redis_cluster"):
            from feature_state.stores.redis import RedisStore

            url = service if store_kind == "redis" else service.url
            store = RedisStore(features, url, allowed_lateness_s=lateness_s, timeout_ms=kw.pop("timeout_ms", 5000),
                               write_timeout_ms=10_000, cluster=store_kind == "redis_cluster",
                               key_prefix=kw.pop("key_prefix", "t" + uuid.uuid4().hex[:10]), use_kernel=use_kernel,
                               **kw)
        else:
            from feature_state.stores.dynamodb import DynamoDBStore

            store = DynamoDBStore(features, kw.pop("table", "fs-" + uuid.uuid4().hex[:10]),
                                  endpoint_url=service.endpoint_url, allowed_lateness_s=lateness_s, timeout_ms=20_000,
                                  write_timeout_ms=20_000, commit_concurrency=1, use_kernel=use_kernel, **kw)
        made.append(store)
        return store

    yield factory
    for s in made:
        run(s.close())
