"""Rewrite conditions so the CEL runtime gets only the values they use, as flat variables.

Measured here (``loadtests/rules_bench.py``): building a ``cel.Context`` costs about a microsecond
per value converted (floats and strings are the slow ones, map keys too), and a nested order with
20 features costs ~100 µs — more than evaluating 50 rules. So each condition is rewritten once,
when the ruleset loads:

* ``order.payment.card_country``  → a variable holding just that value (absent when the order
  lacks it, so the condition errors exactly where the original would);
* ``has(order.email_domain)``      → a boolean variable (absent when ``has`` itself would error);
* ``features.x`` / ``has(features.x)`` → the same, from the features mapping;
* ``order.email_domain in lists.disposable_domains`` → a boolean computed by a hash lookup (the CEL
  runtime copies its variables on every evaluation, which makes a large list in the context
  O(list size) per order); any other left-hand side calls the ``_in_list`` function instead.

Every rule of a ruleset shares one table of bindings, so a value used by ten rules is converted
once per order. The property tests check that rewritten and original conditions agree on every
input (including absent fields and nulls).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from rules.celast import Binary, Call, Cond, Has, Ident, Index, ListLit, Lit, MapLit, Node, Select, Unary, path_of

IN_LIST_FUNCTION = "_in_list"


@dataclass(frozen=True)
class Binding:
    """One flat variable: where its value comes from."""

    var: str
    kind: str  # order | order_has | order_root | feature | feature_has | features_root | score | model | list_in
    path: tuple[str, ...] = ()  # order field path (without "order"), or (feature name,)
    list_name: str = ""


@dataclass
class BindingTable:
    """Bindings shared by every rule of a ruleset (one variable per distinct value)."""

    by_key: dict[tuple[str, tuple[str, ...], str], Binding] = field(default_factory=dict)

    def get(self, kind: str, path: tuple[str, ...] = (), list_name: str = "") -> Binding:
        key = (kind, path, list_name)
        b = self.by_key.get(key)
        if b is None:
            if kind in ("score", "model"):
                var = kind
            elif kind == "order_root":
                var = "order"
            elif kind == "features_root":
                var = "features"
            else:
                var = f"_v{len(self.by_key)}"
            b = Binding(var, kind, path, list_name)
            self.by_key[key] = b
        return b

    @property
    def bindings(self) -> list[Binding]:
        return list(self.by_key.values())


def flatten(node: Node, table: BindingTable) -> Node:
    """The same condition over flat variables (see the module docstring)."""
    if isinstance(node, Binary) and node.op == "in":
        rp = path_of(node.right)
        if rp is not None and len(rp) == 2 and rp[0] == "lists":
            lp = path_of(node.left)
            if lp is not None and len(lp) >= 2 and lp[0] == "order":
                return Ident(node.pos, table.get("list_in", lp[1:], rp[1]).var)
            return Call(node.pos, IN_LIST_FUNCTION, None, (flatten(node.left, table), Lit(node.pos, rp[1], "string")))
    if isinstance(node, Has):
        p = path_of(node.target)
        if p is not None and p[0] == "order" and len(p) >= 2:
            return Ident(node.pos, table.get("order_has", p[1:]).var)
        if p is not None and p[0] == "features" and len(p) == 2:
            return Ident(node.pos, table.get("feature_has", p[1:]).var)
        return Has(node.pos, _as_select(flatten(node.target, table), node.target))
    if isinstance(node, Select):
        p = path_of(node)
        if p is not None and p[0] == "order":
            return Ident(node.pos, table.get("order", p[1:]).var)
        if p is not None and p[0] == "features" and len(p) == 2:
            return Ident(node.pos, table.get("feature", p[1:]).var)
        return Select(node.pos, flatten(node.operand, table), node.field)
    if isinstance(node, Ident):
        if node.name == "order":
            return Ident(node.pos, table.get("order_root").var)
        if node.name == "features":
            return Ident(node.pos, table.get("features_root").var)
        if node.name in ("score", "model"):
            return Ident(node.pos, table.get(node.name).var)
        return node
    if isinstance(node, Lit):
        return node
    if isinstance(node, Index):
        return Index(node.pos, flatten(node.operand, table), flatten(node.index, table))
    if isinstance(node, Unary):
        return Unary(node.pos, node.op, flatten(node.operand, table))
    if isinstance(node, Binary):
        return Binary(node.pos, node.op, flatten(node.left, table), flatten(node.right, table))
    if isinstance(node, Cond):
        return Cond(node.pos, flatten(node.cond, table), flatten(node.then, table), flatten(node.other, table))
    if isinstance(node, ListLit):
        return ListLit(node.pos, tuple(flatten(i, table) for i in node.items))
    if isinstance(node, MapLit):
        return MapLit(node.pos, tuple((flatten(k, table), flatten(v, table)) for k, v in node.entries))
    if isinstance(node, Call):
        target = flatten(node.target, table) if node.target is not None else None
        if node.target is not None and node.name in ("all", "exists", "exists_one", "map", "filter") and node.args:
            return Call(node.pos, node.name, target, (node.args[0], *(flatten(a, table) for a in node.args[1:])))
        return Call(node.pos, node.name, target, tuple(flatten(a, table) for a in node.args))
    raise TypeError(type(node).__name__)  # pragma: no cover


def _as_select(node: Node, original: Select) -> Select:
    if isinstance(node, Select):
        return node
    raise TypeError(f"cannot flatten has() over {original}")  # pragma: no cover - guarded by the checker


# ------------------------------------------------------------------------------- value extraction

_MISSING: Any = object()


def _plain(value: Any) -> Any:
    """A struct field value as the JSON builtins a condition sees."""
    if isinstance(value, (str, float, int, bool)):
        return value
    if isinstance(value, (dt.datetime, msgspec.Struct, list, tuple)):
        return msgspec.to_builtins(value)
    return value


def _struct_defaults(cls: type[msgspec.Struct]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in msgspec.inspect.type_info(cls).fields:  # type: ignore[attr-defined]
        if not f.required and f.default is not msgspec.NODEFAULT:
            out[f.encode_name] = f.default
    return out


_DEFAULTS: dict[type, dict[str, Any]] = {}


def struct_get(obj: Any, path: tuple[str, ...]) -> Any:
    """Value at ``path`` of an event struct as the builtins would show it, or ``_MISSING``.

    Mirrors ``msgspec.to_builtins`` on a struct with ``omit_defaults``: a field equal to its
    default (None for optional fields) is absent.
    """
    for name in path:
        if isinstance(obj, msgspec.Struct):
            cls = type(obj)
            defaults = _DEFAULTS.get(cls)
            if defaults is None:
                defaults = _DEFAULTS[cls] = _struct_defaults(cls)
            value = getattr(obj, name, _MISSING)
            if value is _MISSING or (name in defaults and value == defaults[name] and
                                     type(value) is type(defaults[name])):
                return _MISSING
            obj = value
        elif isinstance(obj, dict):
            obj = obj.get(name, _MISSING)
            if obj is _MISSING:
                return _MISSING
        else:
            return _MISSING
    return _plain(obj)


def struct_column(objs: list[Any], path: tuple[str, ...]) -> tuple[list[Any], list[Any]]:
    """``struct_get`` over many structs at once: (values at ``path``, parents of the last step).

    A parent is ``_MISSING`` where an earlier step was absent (so ``has()`` there is an error).
    """
    vals: list[Any] = objs
    parents: list[Any] = objs
    for name in path:
        parents = vals
        cls = next((type(v) for v in vals if isinstance(v, msgspec.Struct)), None)
        if cls is None:
            vals = [_MISSING] * len(vals)
            continue
        defaults = _DEFAULTS.get(cls)
        if defaults is None:
            defaults = _DEFAULTS[cls] = _struct_defaults(cls)
        if name in defaults and defaults[name] is not None:
            d = defaults[name]
            vals = [_MISSING if v is _MISSING or (x := getattr(v, name, _MISSING)) is None or x == d else x
                    for v in vals]
        else:
            vals = [_MISSING if v is _MISSING or (x := getattr(v, name, _MISSING)) is None else x for v in vals]
    return vals, parents


def plain_column(vals: list[Any]) -> list[Any]:
    """Struct values as the JSON builtins conditions see (timestamps → RFC 3339 strings …)."""
    if any(isinstance(v, (dt.datetime, msgspec.Struct, list, tuple)) for v in vals):
        return [v if v is _MISSING else _plain(v) for v in vals]
    return vals


def dict_get(obj: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        if not isinstance(obj, dict):
            return _MISSING
        obj = obj.get(name, _MISSING)
        if obj is _MISSING:
            return _MISSING
    return obj


def _has(get: Callable[[Any, tuple[str, ...]], Any], order: Any, path: tuple[str, ...]) -> Any:
    """``has(order.a.b)``: True/False, or ``_MISSING`` where CEL's has() itself errors."""
    parent = get(order, path[:-1]) if len(path) > 1 else (order if isinstance(order, dict) else _MISSING)
    if len(path) == 1 and not isinstance(order, dict):
        return get(order, path) is not _MISSING
    if not isinstance(parent, dict):
        return _MISSING
    return path[-1] in parent


def bind(
    bindings: list[Binding],
    order: Any,
    features: Mapping[str, Any],
    score: float | None,
    model: str | None,
    lists: Mapping[str, frozenset[str]],
) -> dict[str, Any]:
    """The flat variables for one order (a dict of JSON builtins, or an :class:`Order` struct)."""
    get = dict_get if isinstance(order, dict) else struct_get
    out: dict[str, Any] = {}
    for b in bindings:
        k = b.kind
        if k == "order":
            v = get(order, b.path)
        elif k == "feature":
            v = features.get(b.path[0], _MISSING)
            if type(v) is int:
                v = float(v)
        elif k == "list_in":
            v = get(order, b.path)
            if v is not _MISSING:
                v = isinstance(v, str) and v in lists[b.list_name]
        elif k == "order_has":
            v = _has(get, order, b.path)
        elif k == "feature_has":
            v = b.path[0] in features
        elif k == "score":
            v = score
        elif k == "model":
            v = model
        elif k == "order_root":
            v = order if isinstance(order, dict) else msgspec.to_builtins(order)
        else:  # features_root
            v = {n: (float(x) if type(x) is int else x) for n, x in features.items()}
        if v is not _MISSING:
            out[b.var] = v
    return out


# ------------------------------------------------------------------------------- compiled binders

Getter = Callable[[Any, Mapping[str, Any], Any, Any], Any]
_STRUCT_CONVERT = ("event_time", "account_created_at", "items", "payment", "schema_version")


def _struct_getter(path: tuple[str, ...]) -> Callable[[Any], Any]:
    """A fast ``struct_get`` for one path (falls back to the generic walk where defaults matter)."""
    if len(path) == 1 and path[0] not in _STRUCT_CONVERT:
        name = path[0]

        def one(o: Any) -> Any:
            v = getattr(o, name, None)
            return _MISSING if v is None else v

        return one
    if len(path) == 2 and path[0] == "payment":
        name = path[1]

        def two(o: Any) -> Any:
            p = o.payment
            if p is None:
                return _MISSING
            v = getattr(p, name, None)
            return _MISSING if v is None else v

        return two
    return lambda o: struct_get(o, path)


def _getter(b: Binding, lists: Mapping[str, frozenset[str]], struct: bool) -> Getter:
    k = b.kind
    if k == "order":
        if struct:
            sg = _struct_getter(b.path)
            return lambda o, f, s, m: sg(o)
        path = b.path
        return lambda o, f, s, m: dict_get(o, path)
    if k == "feature":
        name = b.path[0]

        def feature(o: Any, f: Mapping[str, Any], s: Any, m: Any) -> Any:
            v = f.get(name, _MISSING)
            return float(v) if type(v) is int else v

        return feature
    if k == "list_in":
        values = lists[b.list_name]
        inner = _getter(Binding(b.var, "order", b.path), lists, struct)

        def list_in(o: Any, f: Mapping[str, Any], s: Any, m: Any) -> Any:
            v = inner(o, f, s, m)
            return v if v is _MISSING else (type(v) is str and v in values)

        return list_in
    if k == "order_has":
        path = b.path
        if struct:
            if len(path) == 1:
                sg = _struct_getter(path)
                return lambda o, f, s, m: sg(o) is not _MISSING
            return lambda o, f, s, m: _has(struct_get, o, path)
        return lambda o, f, s, m: _has(dict_get, o, path)
    if k == "feature_has":
        name = b.path[0]
        return lambda o, f, s, m: name in f
    if k == "score":
        return lambda o, f, s, m: s
    if k == "model":
        return lambda o, f, s, m: m
    if k == "order_root":
        return lambda o, f, s, m: o if isinstance(o, dict) else msgspec.to_builtins(o)
    return lambda o, f, s, m: {n: (float(x) if type(x) is int else x) for n, x in f.items()}


class Binder:
    """``bind`` compiled for one ruleset: one specialised getter per flat variable."""

    def __init__(self, bindings: list[Binding], lists: Mapping[str, frozenset[str]]) -> None:
        self.struct = [(b.var, _getter(b, lists, True)) for b in bindings]
        self.dict = [(b.var, _getter(b, lists, False)) for b in bindings]

    def __call__(self, order: Any, features: Mapping[str, Any], score: Any, model: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        missing = _MISSING
        for var, g in (self.dict if type(order) is dict else self.struct):
            v = g(order, features, score, model)
            if v is not missing:
                out[var] = v
        return out
