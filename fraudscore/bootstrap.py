"""A first model for a fresh install: simulated history → point-in-time features → XGBoost → registry.

Runs when ``fraudscore up`` finds no champion in the model registry, so the platform scores with a
real model from the first minute. The history is the simulator's (seeded, so every fresh install
trains the same model); replace it by training on your own data (``fraudscore train``) and promoting.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from typing import TextIO

from contracts.config import Settings
from contracts.events import Label, Order, decode_label, decode_order
from feature_state.definitions import load_feature_set
from scoring.artifacts import champion_version
from training.simulator import SimulationConfig, simulate
from training.train import train_and_register

#: Size of the bootstrap history: ~120k orders over 60 days, fraud ~1 %.
BOOTSTRAP_DAYS = 60
BOOTSTRAP_ORDERS_PER_DAY = 2_000
BOOTSTRAP_SEED = 20_261_125


def bootstrap_history(days: int = BOOTSTRAP_DAYS, orders_per_day: int = BOOTSTRAP_ORDERS_PER_DAY,
                      seed: int = BOOTSTRAP_SEED) -> tuple[list[Order], list[Label]]:
    """Simulated, fully labelled history ending today (labels of every order, as in a matured dataset)."""
    start = (dt.datetime.now(dt.UTC) - dt.timedelta(days=days)).replace(hour=0, minute=0, second=0, microsecond=0)
    config = SimulationConfig(seed=seed, start=start, days=float(days), orders_per_day=orders_per_day, labels="all")
    orders: list[Order] = []
    labels: list[Label] = []
    for ev in simulate(config):
        if ev.stream == "orders" and ev.kind == "order":
            orders.append(decode_order(ev.value))
        elif ev.stream == "labels":
            labels.append(decode_label(ev.value))
    return orders, labels


def ensure_model(settings: Settings, out: TextIO = sys.stdout) -> str:
    """The champion's version; trains and promotes a first model when the registry has none."""
    existing = champion_version(settings.models_dir)
    if existing is not None:
        return existing
    t0 = time.monotonic()
    print(f"no model in {settings.models_dir}: training a first one on {BOOTSTRAP_DAYS} days of simulated history…",
          file=out, flush=True)
    orders, labels = bootstrap_history()
    features = load_feature_set(settings.feature_store.definitions)
    version = train_and_register(orders, labels, features, settings.models_dir, promote_now=True)
    print(f"trained {version} on {len(orders):,} orders in {time.monotonic() - t0:.0f}s", file=out, flush=True)
    return version
