"""The decision precedence, shadow rules, run-time errors, lists — on the online (per order) path."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from contracts.events import Order, from_builtins
from rules.engine import evaluate, threshold_decision
from rules.flatten import bind
from rules.lists import load_list_file
from rules.ruleset import build_ruleset, load_ruleset

ORDER = {"order_id": "o1", "event_time": "2024-01-15T12:00:00+00:00", "customer_id": "c1", "amount": 50.0,
         "currency": "EUR"}


def ruleset_of(*rules: tuple[str, str, str] | tuple[str, str, str, str], **kw):
    return build_ruleset(
        [{"name": r[0], "when": r[1], "action": r[2], "mode": r[3] if len(r) > 3 else "active"} for r in rules],
        thresholds=kw.pop("thresholds", {"review": 0.5, "challenge": 0.7, "block": 0.9}), **kw,
    )


# (rules that match, score) → (decision, deciding rule)
PRECEDENCE = [
    ([], None, ("allow", None)),
    ([], 0.55, ("review", None)),
    ([], 0.75, ("challenge", None)),
    ([], 0.95, ("block", None)),
    ([("b", "block")], 0.0, ("block", "b")),
    ([("a", "allow")], 0.95, ("allow", "a")),                       # allow overrides the model
    ([("a", "allow"), ("b", "block")], 0.0, ("block", "b")),         # block beats allow
    ([("a", "allow"), ("r", "review")], 0.0, ("allow", "a")),        # allow beats review
    ([("r", "review")], 0.0, ("review", "r")),
    ([("r", "review"), ("c", "challenge")], 0.0, ("challenge", "c")),  # most severe escalation
    ([("r", "review")], 0.75, ("challenge", None)),                  # the score is more severe
    ([("c", "challenge")], 0.55, ("challenge", "c")),
    ([("r", "review")], 0.55, ("review", None)),                     # equal severity: the thresholds
    ([("s", "block", "shadow")], 0.0, ("allow", None)),              # shadow never decides
    ([("s", "allow", "shadow")], 0.95, ("block", None)),
]


@pytest.mark.parametrize(("matching", "score", "expected"), PRECEDENCE)
def test_precedence(matching, score, expected):
    rules = [(r[0], "order.amount > 1.0", r[1], *(r[2:] if len(r) > 2 else ())) for r in matching]
    rules.append(("never", "order.amount < 0.0", "block"))
    outcome = evaluate(ruleset_of(*rules), ORDER, {}, score)
    assert (outcome.decision, outcome.deciding_rule) == expected
    assert {m.name for m in outcome.matched} == {r[0] for r in matching}


def test_priority_names_the_deciding_rule_and_orders_the_record():
    rs = build_ruleset([
        {"name": "low", "when": "order.amount > 1.0", "action": "block", "priority": 1},
        {"name": "high", "when": "order.amount > 1.0", "action": "block", "priority": 10},
        {"name": "review_top", "when": "order.amount > 1.0", "action": "review", "priority": 99},
    ])
    out = evaluate(rs, ORDER, {}, None)
    assert out.deciding_rule == "high"
    assert [m.name for m in out.matched] == ["review_top", "high", "low"]


def test_a_failing_rule_is_recorded_and_the_decision_goes_on():
    rs = ruleset_of(
        ("needs_email", 'order.email_domain == "x.com"', "block"),
        ("null_feature", "features.account_age_days < 1.0", "block"),
        ("overflow", "9223372036854775807 + int(order.amount) > 0", "block"),
        ("works", "order.amount > 10.0", "review"),
    )
    out = evaluate(rs, ORDER, {"account_age_days": None}, None)
    assert out.decision == "review" and out.deciding_rule == "works"
    errors = {m.name: m.error for m in out.matched if m.error}
    assert errors["needs_email"] == "order.email_domain is absent from this order"
    assert "No such overload" in errors["null_feature"] or "overload" in errors["null_feature"]
    assert "overflow" in errors["overflow"].lower()
    assert all(len(e) <= 200 for e in errors.values())


def test_dict_and_struct_orders_decide_alike():
    rs = load_ruleset("rules/examples")
    raw = {**ORDER, "amount": 2.0, "payment": {"card_fingerprint": "card_tok_stolen_0001"}, "channel": "web",
           "account_created_at": "2024-01-15T10:00:00+00:00", "email_domain": "yopmail.com"}
    feats = {"card_order_count_1h": 7.0, "account_age_days": 0.1}
    a = evaluate(rs, raw, feats, 0.2)
    b = evaluate(rs, from_builtins(Order, raw), feats, 0.2)
    assert a == b and a.decision == "block" and a.deciding_rule == "blocked_card"


def test_conditions_see_timestamps_as_strings_and_model_version():
    rs = ruleset_of(
        ("night", 'timestamp(order.event_time).getHours() == 12', "review"),
        ("model_pin", 'model != null && model.startsWith("m2024")', "challenge"),
    )
    out = evaluate(rs, from_builtins(Order, ORDER), {}, None, model="m20240101-abc")
    assert out.decision == "challenge" and {m.name for m in out.matched} == {"night", "model_pin"}
    assert threshold_decision(rs, float("nan")) == "allow"


def test_lists_load_fast_and_membership_does_not_put_the_list_in_the_context(tmp_path: Path):
    big = tmp_path / "domains.txt"
    big.write_text("# a million domains\n" + "\n".join(f"d{i}.example" for i in range(1_000_000)) + "\n")
    t0 = time.perf_counter()
    values, digest = load_list_file(big)
    elapsed = time.perf_counter() - t0
    assert len(values) == 1_000_000 and "d999999.example" in values and len(digest) == 64
    print(f"1,000,000-entry list loaded in {elapsed:.2f}s")  # measured in loadtests/rules_bench.py
    rules = tmp_path / "r"
    rules.mkdir()
    (rules / "r.yaml").write_text(
        "ruleset: t\nlists:\n  domains: {file: ../domains.txt}\nrules:\n"
        "  - name: listed\n    when: has(order.email_domain) && order.email_domain in lists.domains\n"
        "    action: block\n"
        "  - name: computed\n    when: has(order.email_domain) && (order.email_domain + '') in lists.domains\n"
        "    action: review\n"
    )
    rs = load_ruleset(rules)
    hit = evaluate(rs, {**ORDER, "email_domain": "d424242.example"}, {}, None)
    miss = evaluate(rs, {**ORDER, "email_domain": "gmail.com"}, {}, None)
    assert hit.decision == "block" and {m.name for m in hit.matched} == {"listed", "computed"}
    assert miss.decision == "allow" and miss.matched == []
    # the per-order variables are a handful of scalars, never the list (the CEL runtime copies its
    # variables on every evaluation, so a list there would cost O(list size) per order)
    variables = bind(list(rs.bindings), {**ORDER, "email_domain": "x"}, {}, None, None, rs.list_sets)
    assert all(not isinstance(v, (list, dict, set, frozenset)) for v in variables.values())
    assert sorted(variables.values(), key=str) == sorted([True, False, "x"], key=str)


def test_rewritten_programs_never_use_the_raw_names():
    rs = load_ruleset("rules/examples")
    for r in rs.rules:
        assert "order." not in r.flat and "features." not in r.flat and "lists." not in r.flat, r.flat
