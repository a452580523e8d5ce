"""Rule evaluation: a pure function of (ruleset, order, features, score, model).

Precedence (documented in ``docs/rules.md``, tested in ``tests/rules/test_rules_engine.py``):

1. an active ``block`` rule that matches → **block** (block lists always win);
2. else an active ``allow`` rule that matches → **allow** (allow lists override the model and
   review/challenge rules);
3. else the most severe of the matched active ``review`` / ``challenge`` rules and the model
   score's threshold decision (``allow`` < ``review`` < ``challenge`` < ``block``); with no score
   (model unavailable) the thresholds give ``allow``.

``priority`` orders evaluation and names the deciding rule when several rules of the winning
action match (highest priority first, then name); it never overrides the order above. Shadow rules
(and rules the kill-switch demoted) are evaluated and recorded, never change the decision. A rule
that fails at run time (an absent field, ``null < 1.0``, an overflow …) is recorded with its error
and the decision goes on without it.

Two entry points give the same answers (property-tested): :func:`evaluate` decides one order with
the CEL runtime (the gRPC path), :func:`evaluate_batch` decides many at once column-wise
(:mod:`rules.vector`; the stream path and backtests), falling back to the CEL runtime for the rules
it cannot vectorise.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import cel
import numpy as np

from contracts.events import DECISION_SEVERITY, RuleMatch
from rules.celast import Ident, walk
from rules.flatten import _MISSING, IN_LIST_FUNCTION, Binding, _has, bind, dict_get, plain_column, struct_column
from rules.ruleset import Rule, Ruleset
from rules.vector import Col, Unsupported, VectorEvaluator, Vocab, from_float_array, from_values

#: Below this many orders :func:`evaluate_batch` decides row by row (numpy's per-call cost dominates).
BATCH_MIN_ROWS = 48
_ERROR_CHARS = 200
_UNDEFINED = re.compile(r"Undefined variable or function: '(_v\d+)'")
_VAR = re.compile(r"\b_v\d+\b")


@dataclass(frozen=True)
class RuleOutcome:
    decision: str
    matched: list[RuleMatch]
    deciding_rule: str | None


class Observer(Protocol):
    """Sees every outcome (the kill-switch and the rule metrics); set by :class:`rules.reload.RulesHolder`."""

    def observe(self, ruleset: Ruleset, matched: Sequence[RuleMatch]) -> None: ...

    def observe_many(self, ruleset: Ruleset, per_order: Sequence[Sequence[RuleMatch]]) -> None: ...


def threshold_decision(ruleset: Ruleset, score: float | None) -> str:
    if score is None or score != score:
        return "allow"
    for value, action in ruleset.thresholds:
        if score >= value:
            return action
    return "allow"


def _decide(ruleset: Ruleset, matched: list[RuleMatch], score: float | None) -> RuleOutcome:
    block = allow = None
    esc_sev, esc_rule, esc_action = -1, None, "allow"
    for m in matched:  # rules are in priority order
        if m.mode != "active" or m.error is not None:
            continue
        if m.action == "block":
            block = block or m.name
        elif m.action == "allow":
            allow = allow or m.name
        else:
            sev = DECISION_SEVERITY[m.action]
            if sev > esc_sev:
                esc_sev, esc_rule, esc_action = sev, m.name, m.action
    if block is not None:
        return RuleOutcome("block", matched, block)
    if allow is not None:
        return RuleOutcome("allow", matched, allow)
    base = threshold_decision(ruleset, score)
    if esc_sev > DECISION_SEVERITY[base]:
        return RuleOutcome(esc_action, matched, esc_rule)
    return RuleOutcome(base, matched, None)


def _describe(binding: Binding) -> str:
    if binding.kind in ("order", "order_has", "list_in"):
        return "order." + ".".join(binding.path)
    if binding.kind in ("feature", "feature_has"):
        return "features." + binding.path[0]
    return binding.var


def error_text(ruleset: Ruleset, exc: BaseException) -> str:
    """A CEL run-time error in the words of the condition as written (not its flat rewrite)."""
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    names = {b.var: _describe(b) for b in ruleset.bindings}
    m = _UNDEFINED.search(msg)
    if m:
        msg = f"{names.get(m.group(1), m.group(1))} is absent from this order"
    else:
        msg = _VAR.sub(lambda mm: names.get(mm.group(0), mm.group(0)), msg)
    if isinstance(exc, KeyError):
        msg = f"no such key: {msg}"
    return msg[:_ERROR_CHARS]


def _context(ruleset: Ruleset, variables: dict[str, Any]) -> cel.Context:
    if ruleset.uses_in_list_function:
        sets = ruleset.list_sets

        def in_list(value: Any, name: str) -> bool:
            return isinstance(value, str) and value in sets[name]

        return cel.Context(variables, functions={IN_LIST_FUNCTION: in_list})
    return cel.Context(variables)


def _run(rule: Rule, ctx: cel.Context, ruleset: Ruleset) -> RuleMatch | None:
    try:
        hit = rule.program.execute(ctx)
    except Exception as exc:  # CEL raises TypeError/KeyError/ValueError/RuntimeError… for bad data
        return RuleMatch(name=rule.name, action=rule.action, mode=rule.mode,  # type: ignore[arg-type]
                         error=error_text(ruleset, exc))
    except BaseException as exc:  # the Rust library's PanicException derives from BaseException
        if type(exc).__name__ != "PanicException":
            raise
        return RuleMatch(name=rule.name, action=rule.action, mode=rule.mode,  # type: ignore[arg-type]
                         error=f"the CEL runtime failed: {str(exc)[:150]}")
    if hit is True:
        return RuleMatch(name=rule.name, action=rule.action, mode=rule.mode)  # type: ignore[arg-type]
    if hit is False:
        return None
    return RuleMatch(name=rule.name, action=rule.action, mode=rule.mode,  # type: ignore[arg-type]
                     error=f"the condition gave {type(hit).__name__}, not a boolean")


def evaluate(
    ruleset: Ruleset,
    order: Any,
    features: Mapping[str, float | None],
    score: float | None,
    *,
    model: str | None = None,
) -> RuleOutcome:
    """Decide one order. ``order`` is the event as JSON builtins (a dict) or a :class:`contracts.events.Order`."""
    ctx = _context(ruleset, ruleset.binder(order, features, score, model))
    matched: list[RuleMatch] = []
    results = None
    if ruleset.combined is not None:
        try:
            results = ruleset.combined.execute(ctx)  # all conditions at once; any error → one by one
        except Exception:  # noqa: S110 - a rule failed: evaluate them one by one to know which
            results = None
        except BaseException as exc:
            if type(exc).__name__ != "PanicException":
                raise
    if results is not None:
        for rule, hit in zip(ruleset.rules, results, strict=True):
            if hit is False:
                continue
            if hit is True:
                matched.append(RuleMatch(name=rule.name, action=rule.action, mode=rule.mode))  # type: ignore[arg-type]
            else:
                matched.append(RuleMatch(name=rule.name, action=rule.action, mode=rule.mode,  # type: ignore[arg-type]
                                         error=f"the condition gave {type(hit).__name__}, not a boolean"))
    else:
        for rule in ruleset.rules:
            m = _run(rule, ctx, ruleset)
            if m is not None:
                matched.append(m)
    outcome = _decide(ruleset, matched, score)
    monitor: Observer | None = ruleset.monitor
    if monitor is not None:
        monitor.observe(ruleset, matched)
    return outcome


# ----------------------------------------------------------------------------------------- batches


class BatchColumns:
    """Columns of a batch for the vectorised evaluator, built on first use of each binding.

    ``features`` is either one mapping per order or a mapping of feature name → float64 array
    (NaN = null, the replay's form); ``scores`` a sequence or array (None/NaN = no score).
    """

    def __init__(
        self,
        ruleset: Ruleset,
        orders: Sequence[Any],
        features: Sequence[Mapping[str, Any]] | Mapping[str, np.ndarray],
        scores: Sequence[float | None] | np.ndarray,
        model: str | None,
        vocab: Vocab | None = None,
    ) -> None:
        self.ruleset = ruleset
        self.orders = orders
        self.features = features
        self.scores = scores
        self.model = model
        self.n = len(orders)
        self.vocab = vocab or Vocab()
        self.by_var = {b.var: b for b in ruleset.bindings}
        self.cache: dict[str, Col] = {}
        self._order_values: dict[tuple[str, ...], list[Any]] = {}
        self._parents: dict[tuple[str, ...], list[Any]] = {}
        self._raw_values: dict[tuple[str, ...], list[Any]] = {}

    def _raw(self, path: tuple[str, ...]) -> list[Any]:
        vals = self._raw_values.get(path)
        if vals is None:
            orders = self.orders
            if orders and isinstance(orders[0], dict):
                vals = [dict_get(o, path) for o in orders]
            else:
                vals, parents = struct_column(list(orders), path)
                self._parents[path] = parents
            self._raw_values[path] = vals
        return vals

    def order_values(self, path: tuple[str, ...]) -> list[Any]:
        vals = self._order_values.get(path)
        if vals is None:
            vals = self._order_values[path] = plain_column(self._raw(path))
        return vals

    def order_has(self, path: tuple[str, ...]) -> list[Any]:
        """``has(order.<path>)`` per row: True/False, or ``_MISSING`` where has() itself errors."""
        if self.orders and isinstance(self.orders[0], dict):
            return [_has(dict_get, o, path) for o in self.orders]
        vals = self._raw(path)
        if len(path) == 1:
            return [v is not _MISSING for v in vals]
        parents = self._parents[path]
        return [_MISSING if p is _MISSING else v is not _MISSING for v, p in zip(vals, parents, strict=True)]

    def column(self, var: str) -> Col:
        col = self.cache.get(var)
        if col is not None:
            return col
        b = self.by_var.get(var)
        if b is None:
            raise Unsupported(f"variable {var}")
        n = self.n
        if b.kind == "order":
            col = from_values(self.order_values(b.path), self.vocab, _MISSING)
        elif b.kind == "feature":
            name = b.path[0]
            if isinstance(self.features, Mapping):
                arr = self.features.get(name)
                if arr is None:
                    col = Col("double", np.zeros(n), np.ones(n, dtype=bool), np.zeros(n, dtype=bool))
                else:
                    col = from_float_array(np.asarray(arr, dtype=np.float64))
            else:
                vals = [f.get(name, _MISSING) for f in self.features]
                vals = [float(v) if type(v) is int else v for v in vals]
                col = from_values(vals, self.vocab, _MISSING)
                if col.kind == "null":
                    col = Col("double", np.zeros(n), col.err, col.null)
        elif b.kind == "feature_has":
            name = b.path[0]
            if isinstance(self.features, Mapping):
                present = np.full(n, name in self.features)
            else:
                present = np.fromiter((name in f for f in self.features), dtype=bool, count=n)
            col = Col("bool", present, np.zeros(n, dtype=bool), np.zeros(n, dtype=bool))
        elif b.kind == "order_has":
            col = from_values(self.order_has(b.path), self.vocab, _MISSING)
        elif b.kind == "list_in":
            vals = self.order_values(b.path)
            values = self.ruleset.lists[b.list_name].values
            col = from_values([v if v is _MISSING else (type(v) is str and v in values) for v in vals],
                              self.vocab, _MISSING)
            if col.kind == "null":
                col = Col("bool", np.zeros(n, dtype=bool), col.err, np.zeros(n, dtype=bool))
        elif b.kind == "score":
            arr = np.asarray([np.nan if s is None else s for s in self.scores], dtype=np.float64) \
                if not isinstance(self.scores, np.ndarray) else self.scores.astype(np.float64)
            col = from_float_array(arr)
        elif b.kind == "model":
            col = from_values([self.model] * n, self.vocab, _MISSING)
        else:
            raise Unsupported(b.kind)
        self.cache[var] = col
        return col


@dataclass
class RuleColumns:
    """Per-rule results over a batch: ``matched`` and ``error`` masks, and error texts by row."""

    matched: np.ndarray
    error: np.ndarray
    messages: dict[int, str]
    vectorised: bool


def rule_columns(
    ruleset: Ruleset,
    orders: Sequence[Any],
    features: Sequence[Mapping[str, Any]] | Mapping[str, np.ndarray],
    scores: Sequence[float | None] | np.ndarray,
    *,
    model: str | None = None,
    columns: BatchColumns | None = None,
) -> dict[str, RuleColumns]:
    """Every rule's matches and errors over a batch (vectorised where possible)."""
    cols = columns or BatchColumns(ruleset, orders, features, scores, model)
    ev = VectorEvaluator(cols.n, cols.column, cols.vocab, ruleset.list_sets)
    out: dict[str, RuleColumns] = {}
    for rule in ruleset.rules:
        try:
            if rule.flat_tree is None:
                raise Unsupported("no tree")
            matched, error = ev.condition(rule.flat_tree)
            out[rule.name] = RuleColumns(matched, error, {}, True)
        except Unsupported:
            out[rule.name] = _rows(ruleset, rule, cols)
    return out


def _rows(ruleset: Ruleset, rule: Rule, cols: BatchColumns) -> RuleColumns:
    """One rule, row by row with the CEL runtime (memoised on the values it reads)."""
    used = {n.name for n in walk(rule.flat_tree) if isinstance(n, Ident)} if rule.flat_tree is not None else set()
    bindings = [b for b in ruleset.bindings if b.var in used]
    n = cols.n
    matched = np.zeros(n, dtype=bool)
    error = np.zeros(n, dtype=bool)
    messages: dict[int, str] = {}
    memo: dict[Any, RuleMatch | None] = {}
    feats = cols.features
    for i in range(n):
        if isinstance(feats, Mapping):
            frow = {k: (None if np.isnan(v[i]) else float(v[i])) for k, v in feats.items()}
        else:
            frow = feats[i]  # type: ignore[assignment]
        s = cols.scores[i]
        score = None if s is None or s != s else float(s)
        variables = bind(bindings, cols.orders[i], frow, score, cols.model, ruleset.list_sets)
        try:
            key: Any = tuple(sorted(variables.items()))
            hash(key)
        except TypeError:
            key = None
        if key is not None and key in memo:
            m = memo[key]
        else:
            m = _run(rule, _context(ruleset, variables), ruleset)
            if key is not None:
                memo[key] = m
        if m is None:
            continue
        if m.error is not None:
            error[i] = True
            messages[i] = m.error
        else:
            matched[i] = True
    return RuleColumns(matched, error, messages, False)


def evaluate_batch(
    ruleset: Ruleset,
    orders: Sequence[Any],
    features: Sequence[Mapping[str, float | None]],
    scores: Sequence[float | None],
    *,
    model: str | None = None,
) -> list[RuleOutcome]:
    """Decide many orders at once; the same answers as :func:`evaluate` on each, faster for big batches.

    ``orders`` are :class:`contracts.events.Order` structs or their JSON builtins. Vectorised
    column-wise above :data:`BATCH_MIN_ROWS` orders.
    """
    n = len(orders)
    if n < BATCH_MIN_ROWS:
        return [evaluate(ruleset, o, f, s, model=model) for o, f, s in zip(orders, features, scores, strict=True)]
    results = rule_columns(ruleset, orders, features, scores, model=model)
    any_hit = np.zeros(n, dtype=bool)
    for rc in results.values():
        any_hit |= rc.matched | rc.error
    rows_with = np.flatnonzero(any_hit).tolist()
    per_row: dict[int, list[RuleMatch]] = {i: [] for i in rows_with}
    for rule in ruleset.rules:  # priority order, as evaluate() records them
        rc = results[rule.name]
        hit_rows = np.flatnonzero(rc.matched | rc.error)
        if len(hit_rows) == 0:
            continue
        plain = RuleMatch(name=rule.name, action=rule.action, mode=rule.mode)  # type: ignore[arg-type]
        for i in hit_rows.tolist():
            if rc.error[i]:
                msg = rc.messages.get(i) or _vector_error(ruleset, rule, orders[i], features[i], scores[i], model)
                per_row[i].append(RuleMatch(name=rule.name, action=rule.action, mode=rule.mode,  # type: ignore[arg-type]
                                            error=msg))
            else:
                per_row[i].append(plain)
    monitor: Observer | None = getattr(ruleset, "monitor", None)
    none: list[RuleMatch] = []
    matched_rows = [per_row.get(i, none) for i in range(n)]
    out = [_decide(ruleset, matched, score) for matched, score in zip(matched_rows, scores, strict=True)]
    if monitor is not None:
        monitor.observe_many(ruleset, matched_rows)
    return out


def _vector_error(ruleset: Ruleset, rule: Rule, order: Any, features: Mapping[str, Any], score: Any,
                  model: str | None) -> str:
    """The CEL runtime's own message for a row the vectorised path found in error."""
    variables = bind(list(ruleset.bindings), order, features, score, model, ruleset.list_sets)
    m = _run(rule, _context(ruleset, variables), ruleset)
    return m.error if m is not None and m.error is not None else "the condition failed for this order"
