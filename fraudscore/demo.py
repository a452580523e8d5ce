"""Live simulated traffic for ``fraudscore up --demo``: orders (and late labels) produced to Kafka."""

from __future__ import annotations

import asyncio
import contextlib
import random

from contracts.config import Settings
from training.simulator import KafkaTarget, SimulationConfig, StopFlag, send_to_kafka, simulate

#: Size of the simulated world behind the demo (its daily volume sets how many customers, merchants, …
#: exist; the wall-clock rate is --rate).
DEMO_ORDERS_PER_DAY = 20_000
DEMO_CUSTOMERS = 50_000


async def demo_traffic(settings: Settings, rate: float, stop: asyncio.Event) -> None:
    """Produce live orders at ``rate`` per second until ``stop`` is set.

    Event times are "now" (live mode), so the summary's order→decision latency is real. A small
    share of malformed events shows the dead-letter path at work.
    """
    flag = StopFlag()
    config = SimulationConfig(
        seed=random.randrange(1 << 30),  # noqa: S311 - demo traffic, not security
        days=None,
        orders_per_day=DEMO_ORDERS_PER_DAY,
        customers=DEMO_CUSTOMERS,
        bad_rate=0.001,
        duplicate_rate=0.002,
    )
    target = KafkaTarget.from_settings(settings.kafka, create_topics=False)
    task = asyncio.create_task(send_to_kafka(simulate(config), target, rate=rate, live=True, stop=flag))
    stopped = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # the traffic generator failed: surface its error
            raise RuntimeError("demo traffic ended unexpectedly")
    finally:
        stopped.cancel()
        flag.set()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(task, timeout=5.0)
