"""Live simulated traffic for ``fraudscore up --demo``: orders (and late labels) produced to Kafka."""

from __future__ import annotations

import asyncio
import contextlib
import random

from contracts.config import Settings
from training.simulator import KafkaTarget, SimulationConfig, StopFlag, send_to_kafka, simulate


async def demo_traffic(settings: Settings, rate: float, stop: asyncio.Event) -> None:
    """Produce live orders at ``rate`` per second until ``stop`` is set.

    Event times are "now" (live mode), so the summary's order→decision latency is real. A small
    share of malformed events shows the dead-letter path at work.
    """
    flag = StopFlag()
    config = SimulationConfig(
        seed=random.randrange(1 << 30),  # noqa: S311 - demo traffic, not security
        days=None,
        orders_per_day=max(1000, int(rate * 3600)),
        bad_rate=0.001,
        duplicate_rate=0.002,
    )
    target = KafkaTarget.from_settings(settings.kafka, create_topics=False)
    task = asyncio.create_task(send_to_kafka(simulate(config), target, rate=rate, live=True, stop=flag))
    try:
        await stop.wait()
    finally:
        flag.set()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(task, timeout=5.0)
