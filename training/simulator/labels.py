"""Per-order outcomes drawn when an order is generated: its basket and its (late) labels.

Label rules (constants in :mod:`training.simulator.config`):

* every fraud order gets one ``fraud`` label: a ``chargeback`` (share ``CHARGEBACK_SHARE``,
  delay triangular(30, 40, 90) days) or else a ``customer_report`` (delay uniform 2–120 hours);
* any order may also be manually ``review``-ed (delay uniform 1–7 days), with probability
  ``review_rate``, × ``REVIEW_SUSPICIOUS_BOOST`` for suspicious-looking orders, capped at
  ``REVIEW_MAX_PROBABILITY``; a review says ``fraud`` for 90 % of fraud orders and for 0.5 %
  of legit ones, else ``legit``.
"""

from __future__ import annotations

import numpy as np

from training.simulator.config import (
    CHARGEBACK_DELAY_DAYS,
    CHARGEBACK_SHARE,
    CUSTOMER_REPORT_DELAY_HOURS,
    DAY_MS,
    HOUR_MS,
    REVIEW_DELAY_DAYS,
    REVIEW_DETECTS_FRAUD,
    REVIEW_FALSE_POSITIVE,
    REVIEW_MAX_PROBABILITY,
    REVIEW_SUSPICIOUS_BOOST,
)
from training.simulator.rows import Rows, or_none
from training.simulator.world import CATEGORIES, CATEGORY_SHIPPED

_SHIPPED = {name for name, shipped in zip(CATEGORIES, CATEGORY_SHIPPED, strict=True) if shipped}


def decorate(rows: Rows, review_rate: float, rng: np.random.Generator) -> None:
    """Fill the basket and label columns of ``rows`` in place."""
    n = len(rows["t"])
    if n == 0:
        return
    shipped = np.isin(rows["category"], list(_SHIPPED))
    count = np.where(shipped, rng.choice((1, 2, 3), size=n, p=(0.6, 0.25, 0.15)), 1)
    rows["n_items"] = np.where(rows["channel"] == "pos", 0, count)  # card-present orders send no basket
    share = rng.gamma(1.0, size=(3, n))
    share[1:][np.arange(1, 3)[:, None] >= count[None, :]] = 0.0
    share /= share.sum(axis=0)
    qty = np.where(rng.random((3, n)) < 0.15, 2, 1)
    price = np.round(rows["amount"][None, :] * share / qty, 2)
    sku = rng.integers(0, 20_000, size=(3, n))
    for k in range(3):
        rows[f"sku{k}"] = sku[k]
        rows[f"qty{k}"] = qty[k]
        rows[f"price{k}"] = price[k]

    fraud = rows["fraud"]
    chargeback = rng.random(n) < CHARGEBACK_SHARE
    lo, mode, hi = CHARGEBACK_DELAY_DAYS
    cb_delay = np.floor(rng.triangular(lo, mode, hi, n) * DAY_MS).astype(np.int64)
    h_lo, h_hi = CUSTOMER_REPORT_DELAY_HOURS
    cr_delay = np.floor(rng.uniform(h_lo, h_hi, n) * HOUR_MS).astype(np.int64)
    rows["fraud_source"] = or_none(fraud, np.where(chargeback, "chargeback", "customer_report").astype(object))
    rows["fraud_delay"] = np.where(fraud, np.where(chargeback, cb_delay, cr_delay), 0)

    typical = rows["typical_usd"]
    usd = rows["amount_usd"]
    no_history = np.isnan(typical)
    suspicious = np.where(no_history, usd >= 300.0, usd >= 5.0 * np.where(no_history, 1.0, typical))
    p = np.minimum(review_rate * np.where(suspicious, REVIEW_SUSPICIOUS_BOOST, 1.0), REVIEW_MAX_PROBABILITY)
    rows["review"] = rng.random(n) < p
    r_lo, r_hi = REVIEW_DELAY_DAYS
    rows["review_delay"] = np.floor(rng.uniform(r_lo, r_hi, n) * DAY_MS).astype(np.int64)
    says_fraud = rng.random(n)
    rows["review_fraud"] = np.where(fraud, says_fraud < REVIEW_DETECTS_FRAUD, says_fraud < REVIEW_FALSE_POSITIVE)
