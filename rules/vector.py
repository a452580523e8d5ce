"""Column-wise (vectorised) evaluation of conditions over a batch of orders, with CEL's semantics.

A batch evaluates each rule once over whole columns with numpy instead of once per order. Values
follow CEL exactly, including its three-valued logic: every column carries an *error* mask (the
row's value is an error: an absent field, ``null < 1.0``, an int overflow, a division by zero …)
and a *null* mask. ``&&`` / ``||`` absorb errors the way CEL does (``false && error`` is ``false``,
``error || true`` is ``true``); every other operation propagates them.

Strings are dictionary-encoded: each distinct string gets a code in a batch-wide vocabulary, so
equality is an integer compare and ``startsWith`` / ``matches`` / list membership are computed once
per *distinct* value (``matches`` by the CEL runtime itself, so the regex dialect is identical).

What is vectorised: literals, order fields, features, ``score``, ``model``, ``has()``, ``!``,
``-``, ``&&``, ``||``, ``? :``, comparisons, ``+ - * / %`` on ints and doubles (overflow and
division by zero are errors, as in CEL), string ``+``, ``in`` a list literal or a named list,
``size()`` of strings, ``startsWith`` / ``endsWith`` / ``contains`` / ``matches`` with a literal
argument, ``int()`` / ``double()``. Anything else (timestamps, macros over ``order.items``, maps,
uints) raises :class:`Unsupported` and the engine evaluates that rule row by row with the CEL
runtime instead — the property tests hold both paths to the same answers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cel
import numpy as np

from rules.celast import Binary, Call, Cond, Ident, ListLit, Lit, Node, Unary

I64_MIN = np.iinfo(np.int64).min
I64_MAX = np.iinfo(np.int64).max


class Unsupported(Exception):  # noqa: N818 - a signal, not an error users see
    """This expression has no column-wise form; evaluate the rule row by row."""


class Vocab:
    """Batch-wide string dictionary: string ↔ int code."""

    def __init__(self) -> None:
        self.strings: list[str] = []
        self.codes: dict[str, int] = {}
        self._rank: np.ndarray | None = None

    def code(self, s: str) -> int:
        c = self.codes.get(s)
        if c is None:
            c = self.codes[s] = len(self.strings)
            self.strings.append(s)
            self._rank = None
        return c

    def encode(self, values: list[Any]) -> np.ndarray:
        """Codes of string values (rows that hold no string get code -1)."""
        codes = self.codes
        strings = self.strings
        for v in set(values):
            if type(v) is str and v not in codes:
                codes[v] = len(strings)
                strings.append(v)
        self._rank = None
        get = codes.get
        return np.fromiter(map(lambda v: get(v, -1) if type(v) is str else -1, values), dtype=np.int64,
                           count=len(values))

    def rank(self) -> np.ndarray:
        """Code → position in code-point order (CEL compares strings by code point, like Python)."""
        if self._rank is None or len(self._rank) != len(self.strings):
            order = sorted(range(len(self.strings)), key=self.strings.__getitem__)
            r = np.empty(len(order), dtype=np.int64)
            r[np.asarray(order, dtype=np.int64)] = np.arange(len(order), dtype=np.int64)
            self._rank = r
            return r
        return self._rank

    def map_codes(self, codes: np.ndarray, fn: Callable[[str], Any], dtype: Any) -> np.ndarray:
        """``fn`` applied once per distinct code, gathered back to rows."""
        if len(codes) == 0:
            return np.zeros(0, dtype=dtype)
        uniq, inv = np.unique(codes, return_inverse=True)
        vals = np.array([fn(self.strings[int(c)]) for c in uniq], dtype=dtype)
        return vals[inv]


@dataclass
class Col:
    """Per-row values of one kind; ``err`` rows are errors, ``null`` rows are null (val ignored)."""

    kind: str  # bool int double string null
    val: np.ndarray
    err: np.ndarray
    null: np.ndarray

    @property
    def ok(self) -> np.ndarray:
        out: np.ndarray = ~self.err & ~self.null
        return out


def const(kind: str, value: Any, n: int, vocab: Vocab) -> Col:
    z = np.zeros(n, dtype=bool)
    if kind == "null":
        return Col("null", np.zeros(n, dtype=np.int8), z, np.ones(n, dtype=bool))
    if kind == "bool":
        return Col("bool", np.full(n, bool(value)), z, z)
    if kind == "int":
        return Col("int", np.full(n, int(value), dtype=np.int64), z, z)
    if kind == "double":
        return Col("double", np.full(n, float(value), dtype=np.float64), z, z)
    if kind == "string":
        return Col("string", np.full(n, vocab.code(str(value)), dtype=np.int64), z, z)
    raise Unsupported(f"{kind} literal")


def from_values(values: list[Any], vocab: Vocab, missing: Any) -> Col:
    """A column from per-row Python values (``missing`` marks absent → error; None → null)."""
    n = len(values)
    kinds = set(map(type, values))
    mtype = type(missing)
    has_missing = mtype in kinds
    has_none = type(None) in kinds
    kinds.discard(mtype)
    kinds.discard(type(None))
    if has_missing or has_none:
        obj = np.fromiter(values, dtype=object, count=n)
        err = np.frompyfunc(lambda v: v is missing, 1, 1)(obj).astype(bool) if has_missing else np.zeros(n, bool)
        null = np.frompyfunc(lambda v: v is None, 1, 1)(obj).astype(bool) if has_none else np.zeros(n, dtype=bool)
    else:
        err = np.zeros(n, dtype=bool)
        null = np.zeros(n, dtype=bool)
    if not kinds:
        return Col("null", np.zeros(n, dtype=np.int8), err, null | ~err)
    if kinds == {str}:
        return Col("string", np.maximum(vocab.encode(values), 0), err, null)
    if kinds == {float}:
        if has_missing or has_none:
            vals = np.fromiter((v if type(v) is float else 0.0 for v in values), dtype=np.float64, count=n)
        else:
            vals = np.fromiter(values, dtype=np.float64, count=n)
        return Col("double", vals, err, null)
    if kinds == {int}:
        return Col("int", np.fromiter((v if type(v) is int else 0 for v in values), dtype=np.int64, count=n), err, null)
    if kinds == {bool}:
        return Col("bool", np.fromiter((v is True for v in values), dtype=bool, count=n), err, null)
    raise Unsupported(f"column of {', '.join(sorted(k.__name__ for k in kinds))}")


def from_float_array(arr: np.ndarray) -> Col:
    """A feature column from float64 with NaN for null (the replay's representation)."""
    null = np.isnan(arr)
    return Col("double", np.where(null, 0.0, arr), np.zeros(len(arr), dtype=bool), null)


# ------------------------------------------------------------------------------------- evaluator


class VectorEvaluator:
    """Evaluates flattened conditions (see :mod:`rules.flatten`) over columns from ``resolve``."""

    def __init__(self, n: int, resolve: Callable[[str], Col], vocab: Vocab,
                 lists: dict[str, frozenset[str]]) -> None:
        self.n = n
        self.resolve = resolve
        self.vocab = vocab
        self.lists = lists
        self._membership: dict[str, np.ndarray] = {}

    def condition(self, node: Node) -> tuple[np.ndarray, np.ndarray]:
        """(matched, error) masks for a condition: matched where it is ``true``, error where it errors."""
        with np.errstate(all="ignore"):
            c = self.column(node)
        if c.kind == "bool":
            return c.val & c.ok, c.err | c.null
        return np.zeros(self.n, dtype=bool), np.ones(self.n, dtype=bool)  # non-boolean result: an error

    def column(self, node: Node) -> Col:
        if isinstance(node, Lit):
            return const(node.kind, node.value, self.n, self.vocab)
        if isinstance(node, Ident):
            return self.resolve(node.name)
        if isinstance(node, Unary):
            return self.unary(node)
        if isinstance(node, Binary):
            return self.binary(node)
        if isinstance(node, Cond):
            return self.cond(node)
        if isinstance(node, Call):
            return self.call(node)
        raise Unsupported(type(node).__name__)

    # --------------------------------------------------------------- helpers
    def _z(self) -> np.ndarray:
        return np.zeros(self.n, dtype=bool)

    def _bool(self, val: np.ndarray, err: np.ndarray) -> Col:
        return Col("bool", val & ~err, err, self._z())

    def unary(self, node: Unary) -> Col:
        a = self.column(node.operand)
        if node.op == "!":
            if a.kind != "bool":
                return self._bool(self._z(), a.err | a.ok | a.null)
            return self._bool(~a.val, a.err | a.null)
        if a.kind == "double":
            return Col("double", -a.val, a.err | a.null, self._z())
        if a.kind == "int":
            over = a.ok & (a.val == I64_MIN)
            return Col("int", np.where(over, 0, -a.val), a.err | a.null | over, self._z())
        return Col("double", np.zeros(self.n), np.ones(self.n, dtype=bool), self._z())

    def logic(self, op: str, a: Col, b: Col) -> Col:
        def truth(c: Col) -> tuple[np.ndarray, np.ndarray]:
            if c.kind != "bool":
                return self._z(), self._z()
            return c.val & c.ok, ~c.val & c.ok

        at, af = truth(a)
        bt, bf = truth(b)
        if op == "&&":
            false = af | bf
            true = at & bt
        else:
            true = at | bt
            false = af & bf
        return self._bool(true, ~(true | false))

    def binary(self, node: Binary) -> Col:
        op = node.op
        if op in ("&&", "||"):
            return self.logic(op, self.column(node.left), self.column(node.right))
        if op == "in":
            return self.in_list_literal(node)
        a, b = self.column(node.left), self.column(node.right)
        if op in ("==", "!="):
            eq, err = self.equal(a, b)
            return self._bool(eq if op == "==" else ~eq, err)
        if op in ("<", "<=", ">", ">="):
            return self.compare(op, a, b)
        return self.arith(op, a, b)

    def equal(self, a: Col, b: Col) -> tuple[np.ndarray, np.ndarray]:
        """CEL ``==``: null equals only null; different kinds are unequal (numbers compare across kinds)."""
        err = a.err | b.err
        both_null = a.null & b.null
        one_null = a.null ^ b.null
        if a.kind == b.kind and a.kind in ("bool", "int", "string"):
            same = a.val == b.val
        elif a.kind in ("int", "double") and b.kind in ("int", "double"):
            same = a.val.astype(np.float64) == b.val.astype(np.float64)
        elif a.kind == b.kind == "double":
            same = a.val == b.val
        else:
            same = self._z()
        eq = np.where(both_null, True, np.where(one_null, False, same))
        return eq & ~err, err

    def compare(self, op: str, a: Col, b: Col) -> Col:
        err = a.err | b.err | a.null | b.null
        if a.kind in ("int", "double") and b.kind in ("int", "double"):
            if a.kind == b.kind == "int":
                x, y = a.val, b.val
            else:
                x, y = a.val.astype(np.float64), b.val.astype(np.float64)
        elif a.kind == b.kind == "string":
            rank = self.vocab.rank()
            x, y = rank[a.val], rank[b.val]
        elif a.kind == "null" or b.kind == "null":
            return self._bool(self._z(), np.ones(self.n, dtype=bool))
        else:
            if a.kind == b.kind == "bool":
                raise Unsupported("ordering booleans")
            return self._bool(self._z(), np.ones(self.n, dtype=bool))  # no such overload: always an error
        res = {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal}[op](x, y)
        return self._bool(res, err)

    def arith(self, op: str, a: Col, b: Col) -> Col:
        err = a.err | b.err | a.null | b.null
        if a.kind == b.kind == "double":
            x, y = a.val, b.val
            if op == "+":
                r = x + y
            elif op == "-":
                r = x - y
            elif op == "*":
                r = x * y
            elif op == "/":
                r = x / y
            else:
                return Col("double", np.zeros(self.n), np.ones(self.n, dtype=bool), self._z())
            return Col("double", r, err, self._z())
        if a.kind == b.kind == "int":
            return self.int_arith(op, a.val, b.val, err)
        if a.kind == b.kind == "string" and op == "+":
            return self.concat(a, b, err)
        if a.kind in ("int", "double", "string", "bool", "null") and b.kind in ("int", "double", "string", "bool",
                                                                                  "null"):
            return Col("double", np.zeros(self.n), np.ones(self.n, dtype=bool), self._z())  # no overload
        raise Unsupported(f"{a.kind} {op} {b.kind}")

    def int_arith(self, op: str, x: np.ndarray, y: np.ndarray, err: np.ndarray) -> Col:
        if op == "+":
            r = x + y
            over = ((x ^ r) & (y ^ r)) < 0
        elif op == "-":
            r = x - y
            over = ((x ^ y) & (x ^ r)) < 0
        elif op == "*":
            r = x * y
            with np.errstate(all="ignore"):
                fx, fy = x.astype(np.float64), y.astype(np.float64)
            prod = fx * fy
            over = (prod > 9.3e18) | (prod < -9.3e18)
            near = ~over & ((prod > 4.0e18) | (prod < -4.0e18))
            if near.any():
                for i in np.flatnonzero(near):
                    exact = int(x[i]) * int(y[i])
                    over[i] = not (I64_MIN <= exact <= I64_MAX)
        elif op in ("/", "%"):
            zero = y == 0
            over = zero | ((x == I64_MIN) & (y == -1))
            ys = np.where(over, 1, y)
            if op == "/":  # CEL truncates toward zero; numpy floors
                q = x // ys
                r = np.where((x % ys != 0) & ((x < 0) ^ (ys < 0)), q + 1, q)
            else:
                r = np.fmod(x, ys)
        else:
            raise Unsupported(op)
        return Col("int", np.where(over, 0, r), err | over, self._z())

    def concat(self, a: Col, b: Col, err: np.ndarray) -> Col:
        pairs = np.stack([a.val, b.val], axis=1)
        uniq, inv = np.unique(pairs, axis=0, return_inverse=True)
        s = self.vocab.strings
        codes = np.array([self.vocab.code(s[int(i)] + s[int(j)]) for i, j in uniq], dtype=np.int64)
        return Col("string", codes[inv.reshape(-1)], err, self._z())

    def cond(self, node: Cond) -> Col:
        c = self.column(node.cond)
        t, o = self.column(node.then), self.column(node.other)
        if c.kind != "bool":
            return Col(t.kind, t.val, np.ones(self.n, dtype=bool), self._z())
        pick = c.val
        kinds = {t.kind, o.kind} - {"null"}
        if len(kinds) > 1:
            raise Unsupported("branches of different kinds")
        kind = kinds.pop() if kinds else "null"
        tv = t.val if t.kind == kind else np.zeros(self.n, dtype=o.val.dtype)
        ov = o.val if o.kind == kind else np.zeros(self.n, dtype=t.val.dtype)
        val = np.where(pick, tv, ov)
        err = c.err | c.null | np.where(pick, t.err, o.err)
        null = np.where(pick, t.null, o.null) & ~err
        return Col(kind, val, err, null)

    def in_list_literal(self, node: Binary) -> Col:
        if not isinstance(node.right, ListLit) or not all(isinstance(i, Lit) for i in node.right.items):
            raise Unsupported("`in` over a computed list")
        x = self.column(node.left)
        items = [i for i in node.right.items if isinstance(i, Lit)]
        hit = self._z()
        for lit in items:
            eq, _ = self.equal(x, const(lit.kind, lit.value, self.n, self.vocab)) if lit.kind != "bytes" else (
                self._z(), None)
            hit |= eq
        return self._bool(hit, x.err)

    def membership(self, name: str) -> np.ndarray:
        """Vocab code → is in list ``name`` (extended as the vocabulary grows)."""
        have = self._membership.get(name)
        n = len(self.vocab.strings)
        if have is None or len(have) < n:
            values = self.lists[name]
            start = 0 if have is None else len(have)
            ext = np.fromiter((s in values for s in self.vocab.strings[start:n]), dtype=bool, count=n - start)
            have = ext if have is None else np.concatenate([have, ext])
            self._membership[name] = have
        return have

    def call(self, node: Call) -> Col:
        name = node.name
        if name == "_in_list" and node.target is None and len(node.args) == 2 and isinstance(node.args[1], Lit):
            x = self.column(node.args[0])
            if x.kind != "string":
                return self._bool(self._z(), x.err)
            member = self.membership(str(node.args[1].value))
            return self._bool(member[x.val] & x.ok, x.err)
        if name in ("startsWith", "endsWith", "contains", "matches") and node.target is not None:
            if len(node.args) != 1 or not isinstance(node.args[0], Lit) or node.args[0].kind != "string":
                raise Unsupported(f"{name} with a computed argument")
            x = self.column(node.target)
            arg = str(node.args[0].value)
            if x.kind != "string":
                return self._bool(self._z(), np.ones(self.n, dtype=bool))
            fn = _string_predicate(name, arg)
            return self._bool(self.vocab.map_codes(x.val, fn, bool) & x.ok, x.err | x.null)
        if name == "size":
            subject = node.target if node.target is not None else (node.args[0] if len(node.args) == 1 else None)
            if subject is None or (node.target is not None and node.args):
                raise Unsupported("size() form")
            x = self.column(subject)
            if x.kind != "string":
                raise Unsupported(f"size of {x.kind}")
            return Col("int", self.vocab.map_codes(x.val, len, np.int64), x.err | x.null, self._z())
        if name in ("double", "int") and node.target is None and len(node.args) == 1:
            x = self.column(node.args[0])
            if name == "double" and x.kind in ("int", "double"):
                return Col("double", x.val.astype(np.float64), x.err | x.null, self._z())
            if name == "int" and x.kind == "int":
                return Col("int", x.val, x.err | x.null, self._z())
            if name == "int" and x.kind == "double":
                v = x.val
                bad = ~np.isfinite(v) | (v >= 9.223372036854775807e18) | (v <= -9.223372036854775808e18)
                return Col("int", np.where(bad, 0, np.trunc(np.where(bad, 0, v))).astype(np.int64),
                           x.err | x.null | bad, self._z())
            raise Unsupported(f"{name}() of {x.kind}")
        raise Unsupported(f"function {name}")


def _string_predicate(name: str, arg: str) -> Callable[[str], bool]:
    if name == "startsWith":
        return lambda s: s.startswith(arg)
    if name == "endsWith":
        return lambda s: s.endswith(arg)
    if name == "contains":
        return lambda s: arg in s
    program = cel.compile("s.matches(p)")

    def matches(s: str) -> bool:
        return program.execute({"s": s, "p": arg}) is True

    return matches
