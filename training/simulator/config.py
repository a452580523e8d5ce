"""Simulation options (:class:`SimulationConfig`) and the fixed distributions the docs state.

Everything that shapes the generated traffic is either an option here or a named constant in
this module, so ``docs/simulator.md`` and the tests quote one source.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field, fields
from typing import Literal

import numpy as np

from training.simulator.exceptions import SimulationConfigError

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
MINUTE_MS = 60_000

#: Scenario names, in the order of :class:`ScenarioMix` (also the ``scenario`` values in the truth file).
SCENARIOS: tuple[str, ...] = (
    "card_testing",
    "account_takeover",
    "compromised_merchant",
    "stolen_card_spree",
    "high_amount",
)

# --- label delays (event time) ---------------------------------------------------------------
#: Share of fraud orders whose fraud label is a chargeback; the rest are customer reports.
CHARGEBACK_SHARE = 0.8
#: Chargeback delay in days after the order: triangular(min, mode, max).
CHARGEBACK_DELAY_DAYS = (30.0, 40.0, 90.0)
#: Customer-report delay in hours after the order: uniform(min, max).
CUSTOMER_REPORT_DELAY_HOURS = (2.0, 120.0)
#: Manual-review delay in days after the order: uniform(min, max).
REVIEW_DELAY_DAYS = (1.0, 7.0)
#: Review sampling: a reviewed order is sampled with ``review_rate``, multiplied by this for
#: "suspicious-looking" orders (amount ≥ 5 × the customer's typical amount, or ≥ 300 USD with no history).
REVIEW_SUSPICIOUS_BOOST = 15.0
#: Cap on the review probability of one order.
REVIEW_MAX_PROBABILITY = 0.5
#: Probability that a review of a fraud order says ``fraud`` (else ``legit``: a miss).
REVIEW_DETECTS_FRAUD = 0.9
#: Probability that a review of a legit order says ``fraud`` (a false positive).
REVIEW_FALSE_POSITIVE = 0.005

#: Cap on the default number of customers (the world costs about 0.5 s and 60 MB per 100,000).
MAX_DEFAULT_CUSTOMERS = 1_000_000

#: Largest accepted reorder window; it must stay below the smallest label delay.
MAX_REORDER_WINDOW_S = 3600.0

LabelHorizon = Literal["all", "until_end", "none"]

# purposes of the random streams: every (seed, day, purpose) has its own PCG64 stream
WORLD, LEGIT, FRAUD, DECORATE, EMIT, RUN, EPISODES, ANOMALIES = 0, 1, 2, 3, 4, 5, 6, 7


def rng_for(seed: int, *key: int) -> np.random.Generator:
    """The random stream for ``(seed, *key)``: numpy ``Generator(PCG64(SeedSequence([seed, *key])))``."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, *key])))


@dataclass(frozen=True, kw_only=True)
class ScenarioMix:
    """Relative share of fraud *orders* per scenario (normalised; need not sum to 1)."""

    card_testing: float = 0.2
    account_takeover: float = 0.2
    compromised_merchant: float = 0.2
    stolen_card_spree: float = 0.25
    high_amount: float = 0.15

    def __post_init__(self) -> None:
        values = self.as_tuple()
        if any(not math.isfinite(v) or v < 0 for v in values) or sum(values) <= 0:
            raise SimulationConfigError(
                f"scenario mix {dict(zip(SCENARIOS, values, strict=True))}: shares must be ≥ 0 and not all 0"
            )

    def as_tuple(self) -> tuple[float, ...]:
        """Shares in the order of :data:`SCENARIOS`."""
        return tuple(float(getattr(self, f.name)) for f in fields(self))

    def normalised(self) -> dict[str, float]:
        """Shares per scenario name, summing to 1."""
        values = self.as_tuple()
        total = sum(values)
        return {name: v / total for name, v in zip(SCENARIOS, values, strict=True)}


def _default_start() -> dt.datetime:
    return dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True, kw_only=True)
class SimulationConfig:
    """Everything that determines a simulation. Same config → byte-identical output."""

    seed: int = 42
    """Seed of every random draw (numpy ``PCG64``)."""
    start: dt.datetime = field(default_factory=_default_start)
    """Event time of the first simulated day (timezone-aware; midnight UTC is usual)."""
    days: float | None = 7.0
    """Event-time span in days; ``None`` = unbounded (live mode, or ``max_orders`` decides)."""
    max_orders: int | None = None
    """Stop after this many (good, unique) orders; ``None`` = no limit."""
    orders_per_day: int = 10_000
    """Mean orders per day (before the weekly factor)."""
    customers: int | None = None
    """Number of customers; ``None`` = ``10 × orders_per_day`` within [1,000, 1,000,000]."""
    merchants: int | None = None
    """Number of merchants; ``None`` = ``max(50, customers // 100)``."""
    fraud_rate: float = 0.01
    """Target share of orders that are fraud."""
    mix: ScenarioMix = field(default_factory=ScenarioMix)
    """Share of fraud orders per scenario."""
    review_rate: float = 0.01
    """Base probability that an order is manually reviewed (see :data:`REVIEW_SUSPICIOUS_BOOST`)."""
    duplicate_rate: float = 0.0
    """Probability that an order is emitted a second time, byte-identical, a little later."""
    reorder_window_s: float = 0.0
    """Emission order is shuffled within this event-time window (seconds); 0 = event-time order."""
    bad_rate: float = 0.0
    """Malformed events injected per good order (invalid JSON, missing fields, …)."""
    labels: LabelHorizon = "all"
    """``all``: every label (those after the span at the end); ``until_end``: only labels known by the
    end of the span; ``none``: no labels."""

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.seed < 0:
            problems.append(f"seed must be ≥ 0, got {self.seed}")
        if self.start.tzinfo is None or self.start.utcoffset() is None:
            problems.append("start must be timezone-aware (e.g. 2025-01-01T00:00:00Z)")
        if self.days is not None and not (math.isfinite(self.days) and self.days > 0):
            problems.append(f"days must be > 0, got {self.days}")
        if self.max_orders is not None and self.max_orders < 1:
            problems.append(f"max_orders must be ≥ 1, got {self.max_orders}")
        if self.orders_per_day < 1:
            problems.append(f"orders_per_day must be ≥ 1, got {self.orders_per_day}")
        if self.customers is not None and self.customers < 10:
            problems.append(f"customers must be ≥ 10, got {self.customers}")
        if self.merchants is not None and self.merchants < 10:
            problems.append(f"merchants must be ≥ 10, got {self.merchants}")
        for name, hi in (("fraud_rate", 0.5), ("review_rate", 0.5), ("duplicate_rate", 0.5), ("bad_rate", 0.5)):
            v = getattr(self, name)
            if not (math.isfinite(v) and 0.0 <= v <= hi):
                problems.append(f"{name} must be between 0 and {hi}, got {v}")
        if not (0.0 <= self.reorder_window_s <= MAX_REORDER_WINDOW_S):
            problems.append(
                f"reorder_window_s must be between 0 and {MAX_REORDER_WINDOW_S:g} s "
                f"(below the shortest label delay), got {self.reorder_window_s}"
            )
        if self.labels not in ("all", "until_end", "none"):
            problems.append(f"labels must be all, until_end or none, got {self.labels!r}")
        if problems:
            raise SimulationConfigError("invalid simulation options: " + "; ".join(problems))

    @property
    def n_customers(self) -> int:
        """Customers in the world (resolved default)."""
        if self.customers is not None:
            return self.customers
        return min(MAX_DEFAULT_CUSTOMERS, max(1000, 10 * self.orders_per_day))

    @property
    def n_merchants(self) -> int:
        """Merchants in the world (resolved default)."""
        return self.merchants if self.merchants is not None else max(50, self.n_customers // 100)

    @property
    def start_ms(self) -> int:
        """Start as epoch milliseconds."""
        return int(round(self.start.timestamp() * 1000))

    @property
    def end_ms(self) -> int | None:
        """End of the event-time span as epoch milliseconds, or None when unbounded."""
        if self.days is None:
            return None
        return self.start_ms + int(round(self.days * DAY_MS))

    @property
    def horizon_days(self) -> float:
        """Expected span in days, for spreading new accounts over it (90 when unbounded)."""
        if self.days is not None:
            return self.days
        if self.max_orders is not None:
            return max(1.0, self.max_orders / self.orders_per_day)
        return 90.0
