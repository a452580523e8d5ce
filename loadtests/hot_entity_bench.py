"""The embedded store with one hot entity: per-order cost as that entity's event log grows.

    .venv/bin/python loadtests/hot_entity_bench.py [--blocks 8]

Every order shares one e-mail domain (as ``gmail.com`` does in real traffic), at 60 orders per
second of event time, applied in batches of 10 (a live stream's batch size at a few hundred orders/s).
Prints µs per order after each 10,000 orders. The embedded store rewrites an entity's packed event log
(kept for the lateness window, 61 minutes by default) on every batch that touches it, so the cost grows
with the hot entity's log until the window is full (docs/feature_state.md, "Limits").
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from contracts.events import Order  # noqa: E402
from feature_state.definitions import load_feature_set  # noqa: E402
from feature_state.stores.memory import MemoryStore  # noqa: E402

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


async def main(blocks: int) -> None:
    store = MemoryStore(load_feature_set(None))
    n = 0
    for _ in range(blocks):
        t = time.perf_counter()
        for _ in range(1000):
            orders = []
            for _ in range(10):
                orders.append(Order(order_id=f"o{n}", event_time=T0 + dt.timedelta(seconds=n / 60),
                                    customer_id=f"c{n % 5000}", merchant_id=f"m{n % 50}", amount=10.0,
                                    currency="EUR", email_domain="gmail.com"))
                n += 1
            await store.apply_and_read(orders)
        print(f"after {n:>7,} orders ({n / 3600:5.1f} min of event time): "
              f"{1e6 * (time.perf_counter() - t) / 10_000:6.0f} µs/order", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=8, help="blocks of 10,000 orders (default 8)")
    asyncio.run(main(ap.parse_args().blocks))
