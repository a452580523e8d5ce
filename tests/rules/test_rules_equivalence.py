"""Property tests: three evaluations of a condition agree on every row.

1. the reference — the condition *as written*, run by the CEL runtime over the nested order, the
   features, the score, the model and the lists (what a reader of the rule file expects);
2. :func:`rules.engine.evaluate` — the flattened rewrite, row by row (the gRPC path);
3. :func:`rules.engine.rule_columns` — the vectorised evaluator (stream batches and backtests).

Conditions are random, often ill-typed on purpose (``order.amount * 2``, ``null < 1.0``), over random
orders with absent optional fields, null features and absent features, so errors must agree too.
"""

from __future__ import annotations

import math
from typing import Any

import cel
import msgspec
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.events import Order, from_builtins
from rules.engine import evaluate, evaluate_batch, rule_columns
from rules.exceptions import RulesetInvalid
from rules.ruleset import build_ruleset

LISTS = {"disposable_domains": ["mailinator.com", "yopmail.com", ""], "vip": ["c1", "c3"]}
STRINGS = ["", "web", "app", "FR", "DE", "mailinator.com", "gmail.com", "c1", "m-1", "a.b", "zz", "Web", "é"]
FEATURES = ["card_order_count_1h", "account_age_days", "hour_of_day", "customer_amount_mean_30d"]

# ------------------------------------------------------------------------------------ expressions


def _lit_str() -> st.SearchStrategy[str]:
    return st.sampled_from(STRINGS).map(lambda s: '"' + s + '"')


INT_LITS = st.sampled_from(["0", "1", "-1", "2", "3", "100", "9223372036854775807", "-9223372036854775808"])
DOUBLE_LITS = st.sampled_from(["0.0", "-0.0", "0.5", "1.0", "2.5", "10.0", "1e300", "-3.25", "100.0"])

NUM_ATOMS = st.one_of(
    st.just("order.amount"),
    st.sampled_from(FEATURES).map(lambda f: f"features.{f}"),
    st.just("features.not_a_feature"),
    st.just("score"),
    INT_LITS,
    DOUBLE_LITS,
)
STR_ATOMS = st.one_of(
    st.sampled_from(["order.channel", "order.email_domain", "order.ip_country", "order.billing_country",
                     "order.payment.card_country", "order.customer_id", "model", "order.payment.card_bin"]),
    _lit_str(),
)


def num_expr() -> st.SearchStrategy[str]:
    return st.recursive(
        NUM_ATOMS,
        lambda inner: st.one_of(
            st.tuples(inner, st.sampled_from(["+", "-", "*", "/", "%"]), inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),  # noqa: E501
            inner.map(lambda x: f"-({x})"),
            inner.map(lambda x: f"double({x})"),
            inner.map(lambda x: f"int({x})"),
            STR_ATOMS.map(lambda s: f"size({s})"),
        ),
        max_leaves=4,
    )


def str_expr() -> st.SearchStrategy[str]:
    return st.one_of(STR_ATOMS, st.tuples(STR_ATOMS, STR_ATOMS).map(lambda t: f"({t[0]} + {t[1]})"))


def comparison() -> st.SearchStrategy[str]:
    ops = st.sampled_from(["<", "<=", ">", ">=", "==", "!="])
    any_atom = st.one_of(num_expr(), str_expr(), st.just("null"), st.just("true"))
    return st.one_of(
        st.tuples(num_expr(), ops, num_expr()).map(lambda t: f"{t[0]} {t[1]} {t[2]}"),
        st.tuples(str_expr(), ops, str_expr()).map(lambda t: f"{t[0]} {t[1]} {t[2]}"),
        st.tuples(any_atom, st.sampled_from(["==", "!=", "<"]), any_atom).map(lambda t: f"{t[0]} {t[1]} {t[2]}"),
    )


BOOL_ATOMS = st.one_of(
    comparison(),
    st.sampled_from(["order.channel", "order.email_domain", "order.payment", "order.payment.card_country",
                     "order.account_created_at", "order.ip_country"]).map(lambda p: f"has({p})"),
    st.sampled_from(FEATURES + ["nope"]).map(lambda f: f"has(features.{f})"),
    st.tuples(str_expr(), st.sampled_from(["disposable_domains", "vip"])).map(lambda t: f"{t[0]} in lists.{t[1]}"),
    st.tuples(str_expr(), st.lists(st.one_of(_lit_str(), INT_LITS, st.just("null")), max_size=3)).map(
        lambda t: f"{t[0]} in [{', '.join(t[1])}]"),
    st.tuples(num_expr(), st.lists(st.one_of(INT_LITS, DOUBLE_LITS), max_size=3)).map(
        lambda t: f"{t[0]} in [{', '.join(t[1])}]"),
    st.tuples(str_expr(), st.sampled_from(["startsWith", "endsWith", "contains", "matches"]),
              st.sampled_from(["", "m", ".com", "^[a-z]+$", "F", "a.b"])).map(lambda t: f'{t[0]}.{t[1]}("{t[2]}")'),
    st.sampled_from(["true", "false", "null", "order.amount"]),
)


def bool_expr() -> st.SearchStrategy[str]:
    return st.recursive(
        BOOL_ATOMS,
        lambda inner: st.one_of(
            st.tuples(inner, st.sampled_from(["&&", "||"]), inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
            inner.map(lambda x: f"!({x})"),
            st.tuples(inner, inner, inner).map(lambda t: f"({t[0]} ? {t[1]} : {t[2]})"),
        ),
        max_leaves=5,
    )


# ------------------------------------------------------------------------------------------ rows

OPTIONAL_ORDER = {
    "channel": st.sampled_from(["web", "app", "pos", "phone"]),
    "email_domain": st.sampled_from(["gmail.com", "mailinator.com", "yopmail.com", "a.b", ""]),
    "ip_country": st.sampled_from(["FR", "DE", "US"]),
    "billing_country": st.sampled_from(["FR", "DE"]),
    "account_created_at": st.just("2024-01-01T00:00:00+00:00"),
}


@st.composite
def order_row(draw: Any) -> dict[str, Any]:
    order: dict[str, Any] = {
        "order_id": f"o{draw(st.integers(0, 10**9))}",
        "event_time": "2024-01-15T12:00:00+00:00",
        "customer_id": draw(st.sampled_from(["c1", "c2", "c3"])),
        "amount": draw(st.sampled_from([0.0, 0.5, 1.0, 2.5, 99.99, 1000.0, 1e300])),
        "currency": "EUR",
    }
    for key, strat in OPTIONAL_ORDER.items():
        if draw(st.booleans()):
            order[key] = draw(strat)
    if draw(st.booleans()):
        payment: dict[str, Any] = {}
        if draw(st.booleans()):
            payment["card_country"] = draw(st.sampled_from(["FR", "US"]))
        if draw(st.booleans()):
            payment["card_bin"] = draw(st.sampled_from(["411111", "55555555"]))
        order["payment"] = payment
    return order


@st.composite
def feature_row(draw: Any) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for f in FEATURES:
        kind = draw(st.integers(0, 9))
        if kind == 0:
            continue  # absent
        out[f] = None if kind == 1 else draw(st.sampled_from([0.0, 1.0, 2.0, 5.0, 0.25, 7.5, -1.0, 1e300]))
    return out


ROW = st.tuples(order_row(), feature_row(), st.one_of(st.none(), st.sampled_from([0.0, 0.3, 0.5, 0.95, 1.0])),
                st.sampled_from([None, "m-1", "web"]))


def reference(when: str, order: dict[str, Any], feats: dict[str, Any], score: Any, model: Any) -> tuple[bool, bool]:
    """(matched, error) of the condition as written, by the CEL runtime over nested values."""
    try:
        value = cel.compile(when).execute(cel.Context({
            "order": order, "features": feats, "score": score, "model": model, "lists": LISTS,
        }))
    except Exception:
        return False, True
    if value is True:
        return True, False
    if value is False:
        return False, False
    return False, True


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(when=bool_expr(), rows=st.lists(ROW, min_size=1, max_size=25))
def test_vectorised_flattened_and_reference_agree(when: str, rows: list[Any]) -> None:
    try:
        ruleset = build_ruleset([{"name": "r", "when": when, "action": "review"}], lists=LISTS, check_types=False)
    except RulesetInvalid:
        try:
            cel.compile(when)
        except Exception:
            return  # neither accepts it
        raise
    orders = [r[0] for r in rows]
    feats = [r[1] for r in rows]
    scores = [r[2] for r in rows]
    models = {r[3] for r in rows}
    model = next(iter(models))
    expected = [reference(when, o, f, s, model) for o, f, s, _ in rows]
    # 2. flattened, row by row (dict orders and Order structs)
    for i, (o, f, s, _) in enumerate(rows):
        for variant in (o, from_builtins(Order, o)):
            outcome = evaluate(ruleset, variant, f, s, model=model)
            got = (any(m.error is None for m in outcome.matched), any(m.error is not None for m in outcome.matched))
            assert got == expected[i], (when, o, f, s, model, outcome.matched)
    # 3. vectorised
    for variant in (orders, [from_builtins(Order, o) for o in orders]):
        cols = rule_columns(ruleset, variant, feats, scores, model=model)["r"]
        got_v = list(zip(cols.matched.tolist(), cols.error.tolist(), strict=True))
        assert got_v == expected, (when, cols.vectorised, [(i, rows[i]) for i in range(len(rows))
                                                           if got_v[i] != expected[i]][:2])


def test_vectorised_features_from_replay_columns_equal_dict_rows() -> None:
    """Backtests hand features as float64 columns with NaN for null: same answers as dict rows."""
    ruleset = build_ruleset([
        {"name": "a", "when": "features.account_age_days < 1.0", "action": "review"},
        {"name": "b", "when": "features.account_age_days == null || features.card_order_count_1h >= 2.0"},
        {"name": "c", "when": "score != null && score > 0.5", "action": "block"},
    ])
    ages = [0.5, None, 3.0, None, 0.0]
    counts = [1.0, 2.0, None, 5.0, 0.0]
    scores = [0.9, None, 0.2, 0.6, None]
    orders = [{"order_id": f"o{i}", "event_time": "2024-01-15T12:00:00+00:00", "customer_id": "c", "amount": 1.0,
               "currency": "EUR"} for i in range(5)]
    rows = [{"account_age_days": a, "card_order_count_1h": c} for a, c in zip(ages, counts, strict=True)]
    as_dicts = rule_columns(ruleset, orders, rows, scores)
    as_cols = rule_columns(ruleset, orders, {
        "account_age_days": np.array([math.nan if a is None else a for a in ages]),
        "card_order_count_1h": np.array([math.nan if c is None else c for c in counts]),
    }, np.array([math.nan if s is None else s for s in scores]))
    for name in ("a", "b", "c"):
        assert as_dicts[name].matched.tolist() == as_cols[name].matched.tolist()
        assert as_dicts[name].error.tolist() == as_cols[name].error.tolist()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(ROW, min_size=48, max_size=80))
def test_evaluate_batch_equals_evaluate_on_the_example_ruleset(rows: list[Any]) -> None:
    from rules.ruleset import load_ruleset

    ruleset = load_ruleset("rules/examples")
    orders = [from_builtins(Order, r[0]) for r in rows]
    feats = [r[1] for r in rows]
    scores = [r[2] for r in rows]
    batch = evaluate_batch(ruleset, orders, feats, scores)
    for o, f, s, b in zip(orders, feats, scores, batch, strict=True):
        one = evaluate(ruleset, msgspec.to_builtins(o), f, s)
        assert (one.decision, one.deciding_rule) == (b.decision, b.deciding_rule)
        assert [(m.name, m.mode, m.error is None) for m in one.matched] == \
            [(m.name, m.mode, m.error is None) for m in b.matched]
