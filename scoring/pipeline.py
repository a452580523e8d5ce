"""The decision pipeline shared by the gRPC and stream paths.

features as of the order → model score + reasons → rules → :class:`contracts.events.Decision`.

Fallbacks (``degraded = true`` in the answer, reason listed in ``degraded_reasons``):

* feature store down or late → score with the features derivable from the order alone
  (velocity aggregates missing; XGBoost treats them as missing values), rules still run;
* no model loaded → rules and thresholds decide without a score;
* no valid ruleset → the model's score against the default thresholds (review ≥ 0.5, block ≥ 0.9);
* neither model nor rules → ``fail_mode``: open → allow, closed → review.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import time
from collections.abc import Sequence

import msgspec
import numpy as np

from contracts.events import Decision, Order
from feature_state.exceptions import FeatureStoreUnavailable
from feature_state.stores.base import FeatureStore
from feature_state.windows import Features, derive
from monitoring import metrics
from rules.engine import RuleOutcome, evaluate
from rules.reload import RulesHolder
from scoring.models import ModelHolder
from scoring.reasons import top_reasons

DEFAULT_THRESHOLDS = ((0.9, "block"), (0.5, "review"))


def _threshold(score: float | None) -> str:
    if score is None:
        return "allow"
    for value, action in DEFAULT_THRESHOLDS:
        if score >= value:
            return action
    return "allow"


class DecisionPipeline:
    def __init__(
        self,
        store: FeatureStore,
        models: ModelHolder,
        rules: RulesHolder,
        *,
        fail_mode: str = "open",
        reasons_top_k: int = 3,
        store_timeout_s: float = 0.05,
    ) -> None:
        self.store = store
        self.models = models
        self.rules = rules
        self.fail_mode = fail_mode
        self.top_k = reasons_top_k
        self.store_timeout_s = store_timeout_s

    async def _features(self, orders: Sequence[Order], apply: bool, timeout: float) -> tuple[list[Features], bool]:
        try:
            if apply:
                return await self.store.apply_and_read(orders), False
            return await asyncio.wait_for(self.store.read_as_of(orders), timeout), False
        except (FeatureStoreUnavailable, TimeoutError):
            if apply:
                raise  # the stream retries the batch: applying must not be skipped
            fs = self.store.features
            out = []
            for o in orders:
                empty: Features = {f.name: None for f in fs.aggregates}
                empty.update(derive(fs, o, empty))
                out.append(empty)
            return out, True

    async def decide(
        self, orders: Sequence[Order], *, source: str = "stream", apply: bool = False, timeout_s: float | None = None
    ) -> list[Decision]:
        """Decide a batch of orders. ``apply`` also updates the feature store (stream path)."""
        t0 = time.perf_counter()
        feats, store_down = await self._features(orders, apply, timeout_s or self.store_timeout_s)
        t1 = time.perf_counter()
        model = self.models.current
        scores: list[float | None] = [None] * len(orders)
        reasons: list[list] = [[] for _ in orders]
        if model is not None:
            matrix = np.array(
                [[math.nan if (v := f.get(n)) is None else v for n in model.feature_names] for f in feats],
                dtype=np.float32,
            ).reshape(len(orders), len(model.feature_names))
            probs = model.predict(matrix)
            scores = [float(p) for p in probs]
            if self.top_k:
                contribs = model.contributions(matrix)
                reasons = [top_reasons(model.feature_names, matrix[i], contribs[i], self.top_k) for i in range(len(orders))]
        t2 = time.perf_counter()
        ruleset = self.rules.current
        outcomes: list[RuleOutcome | None] = []
        for order, f, s in zip(orders, feats, scores, strict=True):
            if ruleset is None:
                outcomes.append(None)
                continue
            outcome = evaluate(ruleset, msgspec.to_builtins(order), f, s)
            for m in outcome.matched:
                if m.error:
                    metrics.RULE_ERRORS.labels(m.name).inc()
            outcomes.append(outcome)
        t3 = time.perf_counter()
        now = dt.datetime.now(dt.UTC)
        per_order_ms = (t3 - t0) * 1000.0 / max(1, len(orders)) if len(orders) > 1 else (t3 - t0) * 1000.0
        degraded: list[str] = []
        if store_down:
            degraded.append("feature_store_unavailable")
        if model is None:
            degraded.append("model_unavailable")
        if ruleset is None:
            degraded.append("rules_unavailable")
        for r in degraded:
            metrics.DEGRADED.labels(r).inc(len(orders))
        out = []
        for order, f, s, rs, outcome in zip(orders, feats, scores, reasons, outcomes, strict=True):
            if outcome is not None:
                decision, matched = outcome.decision, outcome.matched
            elif s is not None:
                decision, matched = _threshold(s), []
            else:
                decision, matched = ("allow" if self.fail_mode == "open" else "review"), []
            metrics.DECISIONS.labels(decision, source).inc()
            out.append(
                Decision(
                    order_id=order.order_id,
                    decision=decision,  # type: ignore[arg-type]
                    score=s,
                    model_version=model.version if model else None,
                    ruleset_version=ruleset.version if ruleset else None,
                    matched_rules=matched,
                    reasons=rs,
                    features=f,
                    degraded=bool(degraded),
                    degraded_reasons=degraded,
                    latency_ms=round(per_order_ms, 3),
                    event_time=order.event_time,
                    decided_at=now,
                    customer_id=order.customer_id,
                    amount=order.amount,
                    source=source,  # type: ignore[arg-type]
                )
            )
        metrics.STAGE_SECONDS.labels("features", source).observe(t1 - t0)
        metrics.STAGE_SECONDS.labels("model", source).observe(t2 - t1)
        metrics.STAGE_SECONDS.labels("rules", source).observe(t3 - t2)
        metrics.STAGE_SECONDS.labels("total", source).observe(t3 - t0)
        return out
