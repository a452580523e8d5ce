"""Rule evaluation: a pure function of (ruleset, order, features, score).

Precedence (documented in the README, tested):

1. an active ``block`` rule that matches → **block** (block lists always win);
2. else an active ``allow`` rule that matches → **allow** (allow lists override the model);
3. else the most severe of the matched active ``review`` / ``challenge`` rules and the model
   score's threshold decision (``allow`` < ``review`` < ``challenge`` < ``block``).

Shadow rules are evaluated and recorded, never change the decision. A rule that fails at run
time (a missing feature, a type error) is recorded with its error; the decision goes on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cel

from contracts.events import DECISION_SEVERITY, RuleMatch
from rules.ruleset import Ruleset


@dataclass(frozen=True)
class RuleOutcome:
    decision: str
    matched: list[RuleMatch]
    deciding_rule: str | None


def threshold_decision(ruleset: Ruleset, score: float | None) -> str:
    if score is None:
        return "allow"
    for value, action in ruleset.thresholds:
        if score >= value:
            return action
    return "allow"


def evaluate(
    ruleset: Ruleset,
    order: Mapping[str, Any],
    features: Mapping[str, float | None],
    score: float | None,
) -> RuleOutcome:
    """Decide one order. ``order`` is the event as JSON builtins."""
    ctx = cel.Context({"order": order, "features": dict(features), "score": score})
    matched: list[RuleMatch] = []
    blocks: list[str] = []
    allows: list[str] = []
    escalate: tuple[int, str | None, str] = (-1, None, "allow")
    for rule in ruleset.rules:
        try:
            hit = rule.program.execute(ctx) is True
        except Exception as exc:  # CEL raises TypeError/KeyError/ValueError… for bad data
            matched.append(RuleMatch(name=rule.name, action=rule.action, mode=rule.mode, error=str(exc)[:200]))  # type: ignore[arg-type]
            continue
        if not hit:
            continue
        matched.append(RuleMatch(name=rule.name, action=rule.action, mode=rule.mode))  # type: ignore[arg-type]
        if rule.mode != "active":
            continue
        if rule.action == "block":
            blocks.append(rule.name)
        elif rule.action == "allow":
            allows.append(rule.name)
        else:
            sev = DECISION_SEVERITY[rule.action]
            if sev > escalate[0]:
                escalate = (sev, rule.name, rule.action)
    if blocks:
        return RuleOutcome("block", matched, blocks[0])
    if allows:
        return RuleOutcome("allow", matched, allows[0])
    base = threshold_decision(ruleset, score)
    if escalate[0] > DECISION_SEVERITY[base]:
        return RuleOutcome(escalate[2], matched, escalate[1])
    return RuleOutcome(base, matched, None)
