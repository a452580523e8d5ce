"""Inline rule tests: each rule's ``tests`` run against the whole ruleset (``fraudscore rules test``).

A test gives an order (merged over a small valid order, then validated by the ``orders`` contract,
so a test cannot hold what production would refuse), some features, a score and a model version,
and expects the ruleset's decision (``expect``) and/or whether its rule matched (``matches``).

Features a test does not give are what the platform computes for that order with no history (the
point-in-time replay of :mod:`feature_state.replay` over this one order): ``amount``,
``account_age_days``, mismatches… are real, velocity counts are 1 (the order itself).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec

from contracts.events import Order, from_builtins
from contracts.exceptions import ContractError
from feature_state.definitions import FeatureSet, load_feature_set
from rules.engine import RuleOutcome, evaluate
from rules.ruleset import Rule, Ruleset, RuleTest

BASE_ORDER: dict[str, Any] = {
    "order_id": "test-order",
    "event_time": "2024-01-15T12:00:00+00:00",
    "customer_id": "test-customer",
    "amount": 10.0,
    "currency": "EUR",
}


@dataclass
class RuleTestResult:
    rule: Rule
    test: RuleTest
    passed: bool
    message: str = ""
    outcome: RuleOutcome | None = None

    @property
    def id(self) -> str:
        return f"{self.rule.file}:{self.test.line}::{self.rule.name}::{self.test.name}"


@dataclass
class RuleTestRun:
    results: list[RuleTestResult] = field(default_factory=list)
    seconds: float = 0.0
    untested: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[RuleTestResult]:
        return [r for r in self.results if not r.passed]


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def build_test_order(raw: dict[str, Any], index: int = 0) -> Order:
    """The order of a test: ``raw`` merged over :data:`BASE_ORDER`, validated by the contract."""
    merged = _merge({**BASE_ORDER, "order_id": f"test-order-{index}"}, raw)
    for key in ("event_time", "account_created_at"):
        if key in merged and not isinstance(merged[key], str):
            merged[key] = str(merged[key])
    return from_builtins(Order, merged)


def default_features(order: Order, features: FeatureSet) -> dict[str, float | None]:
    """Features of ``order`` as the platform computes them for an order with no history."""
    from feature_state.replay import replay

    result = replay(features, [order])
    return result.rows()[0]


def _describe(outcome: RuleOutcome) -> str:
    parts = []
    for m in outcome.matched:
        tag = m.name + ("" if m.mode == "active" else f" ({m.mode})")
        if m.error:
            tag += f" [error: {m.error}]"
        parts.append(tag)
    matched = ", ".join(parts) or "none"
    deciding = outcome.deciding_rule or "the score thresholds"
    return f"matched: {matched}; decided by {deciding}"


def run_tests(ruleset: Ruleset, features: FeatureSet | None = None, name_filter: str | None = None) -> RuleTestRun:
    """Run every inline test of every rule (optionally only rules whose name contains ``name_filter``)."""
    t0 = time.perf_counter()
    fs = features or ruleset.features or load_feature_set(None)
    run = RuleTestRun()
    for rule in ruleset.rules:
        if name_filter and name_filter not in rule.name:
            continue
        if not rule.tests:
            run.untested.append(rule.name)
        for i, t in enumerate(rule.tests):
            run.results.append(_one(ruleset, fs, rule, t, i))
    run.seconds = time.perf_counter() - t0
    return run


def _one(ruleset: Ruleset, fs: FeatureSet, rule: Rule, t: RuleTest, index: int) -> RuleTestResult:
    try:
        order = build_test_order(t.order, index)
    except ContractError as exc:
        return RuleTestResult(rule, t, False, f"the test's order is invalid: {exc}")
    feats = default_features(order, fs)
    for k, v in t.features.items():
        feats[k] = None if v is None else float(v)
    outcome = evaluate(ruleset, msgspec.to_builtins(order), feats, t.score, model=t.model)
    problems = []
    mine = [m for m in outcome.matched if m.name == rule.name]
    if mine and mine[0].error:
        problems.append(f"rule {rule.name} failed on this input: {mine[0].error}")
    if t.expect is not None and outcome.decision != t.expect:
        problems.append(f"expected {t.expect}, got {outcome.decision}")
    if t.matches is not None:
        did = bool(mine) and mine[0].error is None
        if did != t.matches:
            problems.append(f"expected rule {rule.name} {'to match' if t.matches else 'not to match'}, it "
                            f"{'did' if did else 'did not'}")
    if problems:
        return RuleTestResult(rule, t, False, "; ".join(problems) + f" ({_describe(outcome)})", outcome)
    return RuleTestResult(rule, t, True, "", outcome)
