"""The decision pipeline shared by the gRPC, stream and batch paths.

features as of the order → model score + reasons (+ shadow scores) → rules → :class:`contracts.events.Decision`.

Deadlines: ``budget_s`` is the time the caller can still wait. The feature read gets
``min(store_timeout_s, budget_s × feature_budget_fraction)``; a remote model (SageMaker) gets what is
left minus a small reserve for rules and the answer. Local models and rules take microseconds.

Fallbacks (``degraded = true`` in the answer; the reason is listed in ``degraded_reasons``):

=============================  ==================================================================
failure                        answer
=============================  ==================================================================
feature store down or late     ``feature_store_unavailable``: with ``on_feature_store_down=score``
                               (default) the model scores the features derivable from the order
                               alone (velocity aggregates missing, as XGBoost's missing values) and
                               the rules run; with ``rules_only`` no score, rules decide.
                               The stream path (``apply=True``) raises instead, so the batch retries.
no model loaded                ``model_unavailable``: rules and thresholds decide without a score
model call failed (endpoint)   ``model_error``: as above
no valid ruleset               ``rules_unavailable``: the score against the default thresholds
                               (review ≥ 0.5, block ≥ 0.9)
neither model nor rules        ``fail_open`` → allow, or ``fail_closed`` → review (``fail_mode``)
=============================  ==================================================================

Shadow models score the same feature matrix; their scores are recorded in ``shadow`` and never
change the decision. A failing shadow is skipped (logged), never degrading the answer.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import math
import time
from collections.abc import Sequence

import numpy as np

from contracts.events import Decision, Order, Reason, RuleMatch
from feature_state.derived import FeatureRows
from feature_state.exceptions import FeatureStoreUnavailable
from feature_state.stores.base import FeatureStore
from feature_state.windows import Features, derive
from monitoring import metrics
from rules.engine import RuleOutcome, evaluate, evaluate_batch
from rules.reload import RulesHolder
from scoring.exceptions import ScoringError
from scoring.models import ModelHolder
from scoring.reasons import top_reasons_batch
from scoring.runtimes.base import ModelRuntime
from scoring.scoring_metrics import MODEL_ERRORS

log = logging.getLogger(__name__)

DEFAULT_THRESHOLDS = ((0.9, "block"), (0.5, "review"))
_RESERVE_S = 0.002  # kept back from a remote model call for rules and the answer


def _threshold(score: float | None) -> str:
    if score is None:
        return "allow"
    for value, action in DEFAULT_THRESHOLDS:
        if score >= value:
            return action
    return "allow"


class _StageTimers:
    """Pre-bound histogram children per source (label lookups are not free on the hot path)."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[object, object, object, object]] = {}

    def get(self, source: str) -> tuple[object, object, object, object]:
        t = self._cache.get(source)
        if t is None:
            h = metrics.STAGE_SECONDS
            t = (h.labels("features", source), h.labels("model", source), h.labels("rules", source),
                 h.labels("total", source))
            self._cache[source] = t
        return t


@functools.lru_cache(maxsize=64)
def _columns_of(have: tuple[str, ...], want: tuple[str, ...]) -> np.ndarray | None:
    """Where each of ``want`` is in ``have`` (None when one is missing: the model needs a feature the
    store does not compute, answered as missing by the per-order path)."""
    pos = {n: i for i, n in enumerate(have)}
    if any(n not in pos for n in want):
        return None
    return np.array([pos[n] for n in want], dtype=np.intp)


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
        on_feature_store_down: str = "score",
        feature_budget_fraction: float = 0.5,
        reasons_for: str = "all",
    ) -> None:
        self.store = store
        self.models = models
        self.rules = rules
        self.fail_mode = fail_mode
        self.top_k = reasons_top_k
        self.store_timeout_s = store_timeout_s
        self.on_feature_store_down = on_feature_store_down
        self.feature_budget_fraction = feature_budget_fraction
        self.reasons_for = reasons_for
        self._timers = _StageTimers()
        self._decision_counters: dict[tuple[str, str], object] = {}

    # -- stages ----------------------------------------------------------------------------------

    def _order_only_features(self, orders: Sequence[Order]) -> list[Features]:
        fs = self.store.features
        out = []
        for o in orders:
            empty: Features = {f.name: None for f in fs.aggregates}
            empty.update(derive(fs, o, empty))
            out.append(empty)
        return out

    async def _features(self, orders: Sequence[Order], apply: bool, limit_s: float) -> tuple[list[Features], bool]:
        try:
            if apply:
                return await self.store.apply_and_read(orders), False
            async with asyncio.timeout(limit_s):  # no extra task (unlike wait_for): cheaper per request
                return await self.store.read_as_of(orders), False
        except (FeatureStoreUnavailable, TimeoutError) as exc:
            if apply:
                raise  # the stream retries the batch: applying must not be skipped
            log.debug("feature store unavailable: %s", exc)
            return self._order_only_features(orders), True
        except Exception as exc:
            if apply:
                raise
            # An unexpected driver error must not turn into a failed answer: degrade, log it.
            log.warning("feature store read failed (%s: %s); answering without velocity features",
                        type(exc).__name__, exc)
            return self._order_only_features(orders), True

    @staticmethod
    def matrix(model: ModelRuntime, feats: Sequence[Features]) -> np.ndarray:
        names = model.feature_names
        if isinstance(feats, FeatureRows) and len(feats.matrix) == len(feats):
            # the store's own matrix: the model's columns picked out, no per-order rebuild
            cols = _columns_of(feats.names, tuple(names))
            if cols is not None:
                return np.ascontiguousarray(feats.matrix[:, cols], dtype=np.float32)
        out = np.empty((len(feats), len(names)), dtype=np.float32)
        for i, f in enumerate(feats):
            out[i] = [math.nan if (v := f.get(n)) is None else v for n in names]
        return out

    async def _score(
        self, model: ModelRuntime, matrix: np.ndarray, with_reasons: bool, budget_s: float | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        if model.blocking_io:
            timeout = None if budget_s is None else max(0.001, budget_s - _RESERVE_S)
            async with asyncio.timeout(timeout):
                return await asyncio.to_thread(model.explain, matrix, with_reasons)
        return model.explain(matrix, with_reasons)

    async def _shadow_scores(self, matrix: np.ndarray, n: int) -> list[dict[str, float]]:
        shadows = self.models.shadows
        out: list[dict[str, float]] = [{} for _ in range(n)]
        for version, rt in shadows.items():
            try:
                if rt.blocking_io:
                    probs = await asyncio.to_thread(rt.predict, matrix)
                else:
                    probs = rt.predict(matrix)
            except Exception as exc:  # a shadow never affects the answer
                log.warning("shadow model %s failed: %s", version, exc)
                continue
            for i in range(n):
                out[i][version] = float(probs[i])
        return out

    # -- decide ----------------------------------------------------------------------------------

    async def decide(
        self,
        orders: Sequence[Order],
        *,
        source: str = "stream",
        apply: bool = False,
        timeout_s: float | None = None,
        budget_s: float | None = None,
        with_reasons: bool = True,
    ) -> list[Decision]:
        """Decide a batch of orders.

        ``apply`` also updates the feature store (stream and batch paths) and raises when the store
        fails. ``timeout_s`` bounds the feature read; ``budget_s`` is the caller's whole remaining
        deadline (split across features and a remote model, see the module docstring).
        """
        n = len(orders)
        t0 = time.perf_counter()
        feature_timeout = timeout_s or self.store_timeout_s
        if budget_s is not None:
            feature_timeout = max(0.0005, min(feature_timeout, budget_s * self.feature_budget_fraction))
        feats, store_down = await self._features(orders, apply, feature_timeout)
        t1 = time.perf_counter()
        model = self.models.current
        degraded: list[str] = []
        scores: list[float | None] = [None] * n
        reasons: list[list[Reason]] = [[] for _ in range(n)]
        shadow: list[dict[str, float]] = [{} for _ in range(n)]
        use_model = model is not None and not (store_down and self.on_feature_store_down == "rules_only")
        if store_down:
            degraded.append("feature_store_unavailable")
        if model is None:
            degraded.append("model_unavailable")
        matrix: np.ndarray | None = None
        deferred = False  # reasons computed after the decision, only for orders that are not allowed
        if use_model and model is not None:
            matrix = self.matrix(model, feats)
            want_reasons = with_reasons and self.top_k > 0 and model.supports_contributions
            if want_reasons and self.reasons_for == "non_allow" and not model.blocking_io:
                want_reasons, deferred = False, True
            try:
                remaining = None if budget_s is None else budget_s - (t1 - t0)
                probs, contribs = await self._score(model, matrix, want_reasons, remaining)
            except (ScoringError, TimeoutError, OSError) as exc:
                MODEL_ERRORS.labels(model.kind).inc()
                log.warning("model %s failed (%s: %s); deciding without a score", model.version,
                            type(exc).__name__, exc)
                degraded.append("model_error")
            else:
                scores = [float(p) for p in probs]
                if contribs is not None:
                    names = model.feature_names
                    reasons = top_reasons_batch(names, matrix, contribs, self.top_k)
            if self.models.shadows:
                shadow = await self._shadow_scores(matrix, n)
        t2 = time.perf_counter()
        ruleset = self.rules.current
        if ruleset is None:
            degraded.append("rules_unavailable")
        outcomes: list[RuleOutcome | None]
        if ruleset is None:
            outcomes = [None] * n
        else:
            # the `model` rule variable: the version that produced the scores (None when nothing scored)
            scored_by = model.version if model is not None and any(s is not None for s in scores) else None
            if n == 1:  # the gRPC path: the CEL runtime on the order struct, no dict conversion
                results = [evaluate(ruleset, orders[0], feats[0], scores[0], model=scored_by)]
            else:  # stream and batch: column-wise, same answers (the rules package tests the equivalence)
                results = evaluate_batch(ruleset, orders, feats, scores, model=scored_by)
            for result in results:
                for m in result.matched:
                    if m.error:
                        metrics.RULE_ERRORS.labels(m.name).inc()
            outcomes = list(results)
        t3 = time.perf_counter()
        no_score = all(s is None for s in scores)
        if ruleset is None and no_score:
            degraded.append("fail_open" if self.fail_mode == "open" else "fail_closed")
        for r in degraded:
            metrics.DEGRADED.labels(r).inc(n)
        now = dt.datetime.now(dt.UTC)
        per_order_ms = round((t3 - t0) * 1000.0 / max(1, n), 3)
        model_version = model.version if model is not None and not no_score else None
        ruleset_version = ruleset.version if ruleset else None
        decided: list[tuple[str, list[RuleMatch]]] = []
        for i in range(n):
            outcome = outcomes[i]
            s = scores[i]
            if outcome is not None:
                decided.append((outcome.decision, outcome.matched))
            elif s is not None:
                decided.append((_threshold(s), []))
            else:
                decided.append(("allow" if self.fail_mode == "open" else "review", []))
        t_reasons = 0.0
        if deferred and model is not None and matrix is not None and scores[0] is not None:
            tr0 = time.perf_counter()
            rows = [i for i in range(n) if decided[i][0] != "allow"]
            if rows:
                sub = matrix[rows]
                found = top_reasons_batch(model.feature_names, sub, model.contributions(sub), self.top_k)
                for i, rs in zip(rows, found, strict=True):
                    reasons[i] = rs
            t_reasons = time.perf_counter() - tr0
        out = []
        for i, order in enumerate(orders):
            s = scores[i]
            decision, matched = decided[i]
            key = (decision, source)
            counter = self._decision_counters.get(key)
            if counter is None:
                counter = self._decision_counters[key] = metrics.DECISIONS.labels(decision, source)
            counter.inc()  # type: ignore[attr-defined]
            out.append(
                Decision(
                    order_id=order.order_id,
                    decision=decision,  # type: ignore[arg-type]
                    score=s,
                    model_version=model_version,
                    ruleset_version=ruleset_version,
                    matched_rules=matched,
                    reasons=reasons[i],
                    features=feats[i],
                    degraded=bool(degraded),
                    degraded_reasons=list(degraded),
                    shadow=shadow[i],
                    latency_ms=per_order_ms,
                    event_time=order.event_time,
                    decided_at=now,
                    customer_id=order.customer_id,
                    amount=order.amount,
                    source=source,  # type: ignore[arg-type]
                )
            )
        tf, tm, tr, tt = self._timers.get(source)
        tf.observe(t1 - t0)  # type: ignore[attr-defined]
        tm.observe(t2 - t1 + t_reasons)  # type: ignore[attr-defined]
        tr.observe(t3 - t2)  # type: ignore[attr-defined]
        tt.observe(t3 - t0 + t_reasons)  # type: ignore[attr-defined]
        return out
