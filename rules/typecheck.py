"""Static checks of one condition: names, types, lists, regexes, null guards, constant results.

``check(tree, env)`` returns the type of every node and a list of :class:`Finding` — *errors*
(the ruleset is refused) and *warnings* (``fraudscore rules check --strict`` refuses those too).
Messages say what to write instead, e.g. ``unknown feature features.cust_cnt_1h; did you mean
customer_order_count_1h?``.

Errors: unknown names, fields, features, lists and functions; operations CEL has no overload for
(``order.amount * 2`` mixes double and int, ``order.channel > 3``); a condition that is not a
boolean; ``lists.x`` used other than on the right of ``in``; ``matches()`` with a pattern that is not
a literal or that the linear-time (RE2-style) regex engine refuses (backreferences, look-around) or
that is too large; a macro variable that hides ``order``/``features``/…

Warnings: parts that are always true or always false (constants, values outside a field's known
range such as ``score > 1.0``, contradictions such as ``x > 5.0 && x < 3.0``, literals a field can
never hold such as ``order.channel == "webb"``); an optional field or a nullable feature used
without a guard (``has(order.email_domain) && …``, ``features.x != null && …``): orders without it
make the rule error (recorded on the decision, which goes on).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import cel

from rules.celast import (
    MACROS,
    Binary,
    Call,
    Cond,
    Has,
    Ident,
    Index,
    ListLit,
    Lit,
    MapLit,
    Node,
    Select,
    Unary,
    path_of,
    unparse,
    walk,
)
from rules.schema import (
    BOOL,
    BYTES,
    DOUBLE,
    DURATION,
    DYN,
    INT,
    NULL,
    NUMERIC,
    ROOTS,
    STRING,
    TIMESTAMP,
    TYPE,
    UINT,
    CelType,
    Environment,
    FieldInfo,
    pattern_matches,
)

MAX_REGEX_CHARS = 256
MAX_REPEAT = 1000
_REPEAT = re.compile(r"\{(\d+)(?:,(\d*))?\}")
LISTREF = CelType("listref")
FEATURES = CelType("features")
LISTS = CelType("lists")
SCORE = CelType("double", nullable=True, lo=0.0, hi=1.0)
MODEL = CelType("string", nullable=True)

STRING_METHODS = {"startsWith", "endsWith", "contains", "matches"}
TIMESTAMP_GETTERS = {
    "getFullYear", "getMonth", "getDate", "getDayOfMonth", "getDayOfWeek", "getDayOfYear",
    "getHours", "getMinutes", "getSeconds", "getMilliseconds",
}
CONVERSIONS = {"int": INT, "uint": UINT, "double": DOUBLE, "string": STRING, "bytes": BYTES,
               "timestamp": TIMESTAMP, "duration": DURATION, "dyn": DYN, "type": TYPE}
SUPPORTED_FUNCTIONS = sorted(
    {"has", "size", *STRING_METHODS, *TIMESTAMP_GETTERS, *CONVERSIONS, *MACROS}
)


@dataclass(frozen=True)
class Finding:
    severity: str  # "error" or "warning"
    pos: int
    message: str
    code: str


@dataclass
class CheckResult:
    types: dict[int, CelType] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)

    def type_of(self, node: Node) -> CelType:
        return self.types.get(id(node), DYN)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]


def suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.5)
    if close:
        return f"; did you mean {close[0]}?"
    if len(options) <= 12:
        return f"; known: {', '.join(sorted(options))}" if options else ""
    return ""


def _text(node: Node) -> str:
    p = path_of(node)
    return ".".join(p) if p else unparse(node)


def _is_const(node: Node) -> bool:
    return not any(isinstance(n, Ident) for n in walk(node))


def const_value(node: Node) -> tuple[bool, object]:
    """(ok, value) of a constant sub-expression, evaluated by the CEL runtime itself."""
    try:
        return True, cel.compile(unparse(node)).execute()
    except Exception as exc:  # CEL reports run-time errors with several exception types
        return False, exc


def regex_problem(pattern: str) -> str | None:
    """Why the rules' regex engine would refuse ``pattern`` (None when it is fine)."""
    if len(pattern) > MAX_REGEX_CHARS:
        return f"pattern is {len(pattern)} characters; the limit is {MAX_REGEX_CHARS}"
    for m in _REPEAT.finditer(pattern):
        if any(int(g) > MAX_REPEAT for g in m.groups() if g):
            return f"repetition {m.group(0)} is over RE2's limit of {MAX_REPEAT}"
    try:
        cel.compile("x.matches(p)").execute({"x": "", "p": pattern})
    except Exception as exc:  # the engine explains: backreferences, look-around, size limit …
        msg = str(exc)
        cut = msg.rfind("error:")
        detail = msg[cut + 6 :].split(". ")[0].strip() if cut != -1 else msg.splitlines()[0]
        return f"not RE2-safe: {detail}"
    return None


_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}


def _interval(op: str, v: float) -> tuple[float, bool, float, bool] | None:
    """(lo, lo_closed, hi, hi_closed) satisfying ``x op v``."""
    if op == "<":
        return (-math.inf, False, v, False)
    if op == "<=":
        return (-math.inf, False, v, True)
    if op == ">":
        return (v, False, math.inf, False)
    if op == ">=":
        return (v, True, math.inf, False)
    if op == "==":
        return (v, True, v, True)
    return None


def _empty(lo: float, lo_c: bool, hi: float, hi_c: bool) -> bool:
    return lo > hi or (lo == hi and not (lo_c and hi_c))


def _path_cmp(node: Node) -> tuple[str, str, float] | None:
    """``features.x >= 5.0`` → ("features.x", ">=", 5.0); literals on either side."""
    if not isinstance(node, Binary) or node.op not in _FLIP:
        return None
    left, right, op = node.left, node.right, node.op
    if isinstance(left, Lit) and path_of(right) is not None:
        left, right, op = right, left, _FLIP[op]
    p = path_of(left)
    if p is None or not isinstance(right, Lit) or right.kind not in NUMERIC or isinstance(right.value, bool):
        return None
    return ".".join(p), op, float(right.value)


def conjuncts(node: Node) -> list[Node]:
    if isinstance(node, Binary) and node.op == "&&":
        return conjuncts(node.left) + conjuncts(node.right)
    return [node]


def disjuncts(node: Node) -> list[Node]:
    if isinstance(node, Binary) and node.op == "||":
        return disjuncts(node.left) + disjuncts(node.right)
    return [node]


def _guards_if_true(node: Node) -> set[str]:
    """Paths known present / non-null when ``node`` is true."""
    out: set[str] = set()
    for c in conjuncts(node):
        if isinstance(c, Has):
            p = path_of(c.target)
            if p:
                for i in range(2, len(p) + 1):
                    out.add(".".join(p[:i]))
        elif isinstance(c, Binary) and c.op == "!=":
            for a, b in ((c.left, c.right), (c.right, c.left)):
                if isinstance(b, Lit) and b.kind == "null" and path_of(a):
                    out.add(_text(a))
    return out


def _guards_if_false(node: Node) -> set[str]:
    """Paths known present / non-null when ``node`` is false (``!has(x) || …``, ``x == null || …``)."""
    out: set[str] = set()
    for d in disjuncts(node):
        if isinstance(d, Unary) and d.op == "!":
            out |= _guards_if_true(d.operand)
        elif isinstance(d, Binary) and d.op == "==":
            for a, b in ((d.left, d.right), (d.right, d.left)):
                if isinstance(b, Lit) and b.kind == "null" and path_of(a):
                    out.add(_text(a))
    return out


def _join(a: CelType, b: CelType) -> CelType:
    if a.kind == "null":
        return CelType(b.kind, b.elem, b.fields, True, name=b.name)
    if b.kind == "null":
        return CelType(a.kind, a.elem, a.fields, True, name=a.name)
    if a.kind == b.kind and a.kind not in ("list", "map", "struct"):
        return CelType(a.kind, nullable=a.nullable or b.nullable)
    if a.kind == b.kind and a.elem == b.elem:
        return a
    return DYN


class _Checker:
    def __init__(self, env: Environment) -> None:
        self.env = env
        self.result = CheckResult()
        self.scope: dict[str, CelType] = {}
        self.guards: list[set[str]] = []
        self.warned: set[tuple[str, str]] = set()

    # reporting
    def error(self, node: Node, msg: str, code: str) -> None:
        self.result.findings.append(Finding("error", node.pos, msg, code))

    def warn(self, node: Node, msg: str, code: str, key: str | None = None) -> None:
        if key is not None:
            if (code, key) in self.warned:
                return
            self.warned.add((code, key))
        self.result.findings.append(Finding("warning", node.pos, msg, code))

    @contextmanager
    def guarded(self, paths: set[str]) -> Iterator[None]:
        self.guards.append(paths)
        try:
            yield
        finally:
            self.guards.pop()

    def is_guarded(self, path: str) -> bool:
        return any(path in g for g in self.guards)

    # entry
    def check(self, root: Node) -> CheckResult:
        t = self.infer(root)
        if t.kind not in ("bool", "dyn"):
            self.error(root, f"a condition must be a boolean; this one is a {t}", "not-bool")
        self.constants(root)
        self.contradictions(root)
        return self.result

    def infer(self, node: Node) -> CelType:
        t = self._infer(node)
        self.result.types[id(node)] = t
        return t

    # ------------------------------------------------------------------ nodes
    def _infer(self, node: Node) -> CelType:  # noqa: C901 - one dispatch over the grammar
        if isinstance(node, Lit):
            return {"int": INT, "uint": UINT, "double": DOUBLE, "string": STRING, "bytes": BYTES,
                    "bool": BOOL, "null": NULL}[node.kind]
        if isinstance(node, Ident):
            return self.ident(node)
        if isinstance(node, Select):
            return self.select(node)
        if isinstance(node, Has):
            return self.has(node)
        if isinstance(node, Index):
            return self.index(node)
        if isinstance(node, Unary):
            t = self.infer(node.operand)
            if node.op == "!":
                if t.kind not in ("bool", "dyn"):
                    self.error(node, f"`!` needs a boolean; {_text(node.operand)} is a {t}", "type-mismatch")
                return BOOL
            if t.kind not in ("int", "double", "dyn"):
                self.error(node, f"`-` needs an int or a double; {_text(node.operand)} is a {t}", "type-mismatch")
            self.null_use(node.operand, t)
            return t.non_null()
        if isinstance(node, Binary):
            return self.binary(node)
        if isinstance(node, Cond):
            ct = self.infer(node.cond)
            if ct.kind not in ("bool", "dyn"):
                self.error(node.cond, f"the condition of `? :` must be a boolean; this one is a {ct}", "type-mismatch")
            with self.guarded(_guards_if_true(node.cond)):
                a = self.infer(node.then)
            with self.guarded(_guards_if_false(node.cond)):
                b = self.infer(node.other)
            return _join(a, b)
        if isinstance(node, ListLit):
            elem: CelType | None = None
            for item in node.items:
                it = self.infer(item)
                elem = it if elem is None else _join(elem, it)
            return CelType("list", elem=elem or DYN)
        if isinstance(node, MapLit):
            val: CelType | None = None
            for k, v in node.entries:
                kt = self.infer(k)
                if kt.kind not in ("int", "uint", "bool", "string", "dyn"):
                    self.error(k, f"map keys must be int, uint, bool or string, not {kt}", "type-mismatch")
                vt = self.infer(v)
                val = vt if val is None else _join(val, vt)
            return CelType("map", elem=val or DYN)
        if isinstance(node, Call):
            return self.call(node)
        raise TypeError(type(node).__name__)  # pragma: no cover

    def ident(self, node: Ident) -> CelType:
        if node.name in self.scope:
            return self.scope[node.name]
        if node.name == "order":
            return self.env.order
        if node.name == "features":
            return FEATURES
        if node.name == "score":
            return SCORE
        if node.name == "model":
            return MODEL
        if node.name == "lists":
            return LISTS
        self.error(node, f"unknown name {node.name}" + suggest(node.name, [*ROOTS, *self.scope]), "unknown-name")
        return DYN

    def select(self, node: Select) -> CelType:
        t = self.infer(node.operand)
        where = _text(node.operand)
        if t.kind == "dyn" or t.kind == "map":
            return t.elem if t.kind == "map" and t.elem is not None else DYN
        if t is FEATURES:
            info = self.env.features.get(node.field)
            if info is None:
                self.error(node, f"unknown feature features.{node.field}"
                           + suggest(node.field, list(self.env.features)),
                           "unknown-feature")
                return CelType("double", nullable=True)
            return info.type
        if t is LISTS:
            if node.field not in self.env.lists:
                self.error(node, f"no list named {node.field}" + suggest(node.field, list(self.env.lists)),
                           "unknown-list")
            return LISTREF
        if t.kind == "struct":
            info = t.field(node.field)
            if info is None:
                self.error(node, f"unknown field {where}.{node.field}" + suggest(node.field, t.field_names),
                           "unknown-field")
                return DYN
            path = f"{_text(node)}"
            if info.optional and not self.is_guarded(path):
                self.warn(node, f"{path} is optional: orders without it make this rule error (recorded on the "
                          f"decision, which goes on); guard it with {self.guard_hint(node)} && …",
                          "unguarded-optional", key=path)
            return info.type
        if t is LISTREF:
            self.error(node, "a list can only be used on the right of `in`", "list-misuse")
            return DYN
        self.error(node, f"{where} is a {t}, it has no field {node.field}", "type-mismatch")
        return DYN

    def guard_hint(self, node: Select) -> str:
        p = path_of(node) or ()
        parts = []
        for i in range(2, len(p) + 1):
            sub = ".".join(p[:i])
            info = self._field_info(p[:i])
            if info is not None and info.optional and not self.is_guarded(sub):
                parts.append(f"has({sub})")
        return " && ".join(parts) or f"has({'.'.join(p)})"

    def _field_info(self, p: tuple[str, ...]) -> FieldInfo | None:
        t: CelType | None = self.env.order if p and p[0] == "order" else None
        info = None
        for name in p[1:]:
            if t is None or t.kind != "struct":
                return None
            info = t.field(name)
            if info is None:
                return None
            t = info.type
        return info

    def has(self, node: Has) -> CelType:
        sel = node.target
        p = path_of(sel)
        with self.guarded({".".join(p[:i]) for i in range(2, len(p) + 1)} if p else set()):
            t = self.infer(sel.operand)
        if t.kind == "struct" and t.field(sel.field) is None:
            self.error(node, f"has({_text(sel)}) is always false: no such field" + suggest(sel.field, t.field_names),
                       "unknown-field")
        elif t is FEATURES and sel.field not in self.env.features:
            self.error(node, f"has({_text(sel)}) is always false: no such feature"
                       + suggest(sel.field, list(self.env.features)), "unknown-feature")
        elif t.kind not in ("struct", "map", "dyn") and t is not FEATURES:
            self.error(node, f"has() needs a field of a message or map; {_text(sel.operand)} is a {t}", "type-mismatch")
        self.result.types[id(sel)] = DYN
        return BOOL

    def index(self, node: Index) -> CelType:
        t = self.infer(node.operand)
        it = self.infer(node.index)
        if t.kind == "list":
            if it.kind not in ("int", "uint", "dyn"):
                self.error(node.index, f"a list index must be an int, not {it}", "type-mismatch")
            return t.elem or DYN
        if t.kind == "struct":
            if isinstance(node.index, Lit) and node.index.kind == "string":
                info = t.field(str(node.index.value))
                if info is None:
                    self.error(node, f"unknown field {node.index.value}"
                               + suggest(str(node.index.value), t.field_names),
                               "unknown-field")
                    return DYN
                return info.type
            return DYN
        if t.kind in ("map", "dyn"):
            return (t.elem or DYN) if t.kind == "map" else DYN
        if t is FEATURES or t is LISTS:
            self.error(node, f"write {_text(node.operand)}.name instead of indexing", "type-mismatch")
            return DYN
        self.error(node, f"{_text(node.operand)} is a {t}; it cannot be indexed", "type-mismatch")
        return DYN

    # ------------------------------------------------------------------ operators
    def null_use(self, node: Node, t: CelType) -> None:
        """Warn when a nullable feature meets an operator that errors on null, without a guard."""
        p = path_of(node)
        if not t.nullable or p is None or p[0] != "features" or len(p) != 2:
            return
        path = ".".join(p)
        if self.is_guarded(path):
            return
        info = self.env.features.get(p[1])
        if info is not None and info.null_when_absent:
            srcs = [f"order.{s}" for s in info.null_when_absent]
            if all(self.is_guarded(s) for s in srcs):
                return
        self.warn(node, f"{path} can be null (no value for this order); the rule then errors (recorded, the "
                  f"decision goes on). Guard it: {path} != null && …", "unguarded-null", key=path)

    def binary(self, node: Binary) -> CelType:
        op = node.op
        if op in ("&&", "||"):
            lt = self.infer(node.left)
            with self.guarded(_guards_if_true(node.left) if op == "&&" else _guards_if_false(node.left)):
                rt = self.infer(node.right)
            for side, t in ((node.left, lt), (node.right, rt)):
                if t.kind not in ("bool", "dyn"):
                    self.error(side, f"`{op}` needs booleans; {_text(side)} is a {t}", "type-mismatch")
            return BOOL
        if op == "in":
            return self.in_(node)
        lt = self.infer(node.left)
        rt = self.infer(node.right)
        if LISTREF in (lt, rt):
            self.error(node, "a list can only be used on the right of `in`", "list-misuse")
            return DYN
        a, b = lt.kind, rt.kind
        if op in ("==", "!="):
            self.equality(node, lt, rt)
            return BOOL
        if op in ("<", "<=", ">", ">="):
            for side, t in ((node.left, lt), (node.right, rt)):
                if t.kind == "null":
                    self.error(side, f"`{op}` with null always errors; use == null / != null", "type-mismatch")
                self.null_use(side, t)
            ok = (a in NUMERIC and b in NUMERIC) or a == b or "dyn" in (a, b)
            if not ok or a in ("list", "map", "struct", "null") and a == b:
                self.error(node, f"cannot compare {_text(node.left)} ({lt}) with {_text(node.right)} ({rt}) using "
                           f"`{op}`: CEL has no such comparison", "type-mismatch")
            self.range_check(node)
            return BOOL
        # arithmetic
        for side, t in ((node.left, lt), (node.right, rt)):
            self.null_use(side, t)
        if "dyn" in (a, b):
            return DYN
        if a in NUMERIC and b in NUMERIC and a != b:
            lit = node.right if isinstance(node.right, Lit) else node.left if isinstance(node.left, Lit) else None
            hint = ""
            if lit is not None and lit.kind == "int":
                hint = f"; write {float(lit.value)!r} instead of {lit.value}"
            else:
                hint = "; convert one side with double(…) or int(…)"
            self.error(node, f"`{op}` mixes {a} and {b}: CEL does not convert numbers implicitly{hint}",
                       "type-mismatch")
            return DOUBLE
        if op == "+":
            if a == b and a in ("int", "uint", "double", "string", "bytes", "list", "duration"):
                return lt.non_null() if a != "list" else lt
            if {a, b} == {"timestamp", "duration"}:
                return TIMESTAMP
        elif op == "-":
            if a == b and a in ("int", "uint", "double", "duration"):
                return lt.non_null()
            if a == "timestamp" and b == "timestamp":
                return DURATION
            if a == "timestamp" and b == "duration":
                return TIMESTAMP
        elif op in ("*", "/"):
            if a == b and a in NUMERIC:
                return lt.non_null()
        elif op == "%":
            if a == b and a in ("int", "uint"):
                return lt.non_null()
            if a == b == "double":
                self.error(node, "`%` is not defined on doubles in CEL; use int(…) % n", "type-mismatch")
                return DOUBLE
        self.error(node, f"`{op}` is not defined for {lt} and {rt}", "type-mismatch")
        return DYN

    def equality(self, node: Binary, lt: CelType, rt: CelType) -> None:
        a, b = lt.kind, rt.kind
        if "dyn" in (a, b) or "null" in (a, b) or a == b or (a in NUMERIC and b in NUMERIC):
            for fld, lit, ft in ((node.left, node.right, lt), (node.right, node.left, rt)):
                if isinstance(lit, Lit) and lit.kind == "string" and ft.kind == "string":
                    self.literal_fits(node, _text(fld), ft, str(lit.value), node.op)
            return
        always = "false" if node.op == "==" else "true"
        self.warn(node, f"always {always}: {_text(node.left)} is a {lt} and {_text(node.right)} is a {rt}",
                  "always-constant")

    def literal_fits(self, node: Node, where: str, ft: CelType, value: str, op: str) -> None:
        bad = None
        if ft.enum is not None and value not in ft.enum:
            bad = f"{where} is one of {', '.join(ft.enum)}"
        elif not pattern_matches(ft.pattern, value):
            bad = f"{where} always matches {ft.pattern}"
        if bad:
            verdict = {"==": "never true", "!=": "always true", "in": "never matches"}[op]
            self.warn(node, f"{verdict}: {value!r} is not a possible value ({bad})", "impossible-literal")

    def range_check(self, node: Binary) -> None:
        pc = _path_cmp(node)
        if pc is None:
            return
        path, op, v = pc
        t = self.result.types.get(id(node.left if path_of(node.left) else node.right))
        if t is None or (t.lo == -math.inf and t.hi == math.inf):
            return
        iv = _interval(op, v)
        if iv is None:
            return
        lo, lo_c, hi, hi_c = iv
        if _empty(max(lo, t.lo), lo_c if lo >= t.lo else True, min(hi, t.hi), hi_c if hi <= t.hi else True):
            self.warn(node, f"never true: {path} is always within [{t.lo:g}, {t.hi:g}]", "always-constant")
        elif (lo <= t.lo and (lo < t.lo or lo_c or lo == -math.inf)
              and hi >= t.hi and (hi > t.hi or hi_c or hi == math.inf)):
            self.warn(node, f"always true (when {path} has a value): it is always within [{t.lo:g}, {t.hi:g}]",
                      "always-constant")

    def in_(self, node: Binary) -> CelType:
        lt = self.infer(node.left)
        right = node.right
        p = path_of(right)
        if p is not None and len(p) == 2 and p[0] == "lists" and "lists" not in self.scope:
            if p[1] not in self.env.lists:
                self.error(right, f"no list named {p[1]}" + suggest(p[1], list(self.env.lists)), "unknown-list")
            elif lt.kind not in ("string", "dyn", "null"):
                self.warn(node, f"never true: lists hold strings and {_text(node.left)} is a {lt}", "always-constant")
            self.result.types[id(right)] = LISTREF
            return BOOL
        rt = self.infer(right)
        if rt is LISTREF:
            self.error(right, "a list can only be used as `value in lists.name`", "list-misuse")
        elif rt.kind == "list":
            et = rt.elem or DYN
            ok = et.kind in ("dyn", "null") or lt.kind in ("dyn", "null") or et.kind == lt.kind or (
                et.kind in NUMERIC and lt.kind in NUMERIC)
            if not ok:
                self.warn(node, f"never true: {_text(node.left)} is a {lt} and the list holds {et}", "always-constant")
            if isinstance(right, ListLit) and lt.kind == "string":
                for item in right.items:
                    if isinstance(item, Lit) and item.kind == "string":
                        bad_t = lt
                        if (bad_t.enum is not None and item.value not in bad_t.enum) or not pattern_matches(
                                bad_t.pattern, str(item.value)):
                            self.warn(item, f"{item.value!r} can never be {_text(node.left)}", "impossible-literal")
        elif rt.kind == "map":
            pass
        elif rt.kind not in ("dyn",):
            self.error(node, f"`in` needs a list or a map on the right; {_text(right)} is a {rt}", "type-mismatch")
        return BOOL

    # ------------------------------------------------------------------ calls
    def call(self, node: Call) -> CelType:
        name = node.name
        if name in MACROS and node.target is not None:
            return self.macro(node)
        target_t = self.infer(node.target) if node.target is not None else None
        arg_ts = [self.infer(a) for a in node.args]
        if name == "size":
            subject = target_t if target_t is not None else (arg_ts[0] if len(arg_ts) == 1 else None)
            if subject is None or (node.target is not None and arg_ts):
                self.error(node, "size() takes one value: size(x) or x.size()", "bad-call")
            elif subject.kind not in ("string", "bytes", "list", "map", "dyn"):
                self.error(node, f"size() needs a string, list or map, not {subject}", "type-mismatch")
            return INT
        if name in STRING_METHODS:
            if target_t is None:
                self.error(node, f"{name} is a method: write value.{name}(…)", "bad-call")
                return BOOL
            if target_t.kind not in ("string", "dyn"):
                self.error(node, f"{name}() needs a string; {_text(node.target)} is a {target_t}",  # type: ignore[arg-type]
                           "type-mismatch")
            if len(arg_ts) != 1 or arg_ts[0].kind not in ("string", "dyn"):
                self.error(node, f"{name}() takes one string", "bad-call")
            if name == "matches" and node.args:
                pat = node.args[0]
                if not (isinstance(pat, Lit) and pat.kind == "string"):
                    self.error(pat, "matches() needs a literal pattern so it can be checked before it runs",
                               "regex-not-literal")
                else:
                    problem = regex_problem(str(pat.value))
                    if problem:
                        self.error(pat, f"regular expression refused: {problem}", "regex-unsafe")
            return BOOL
        if name in TIMESTAMP_GETTERS:
            if target_t is None or target_t.kind not in ("timestamp", "dyn"):
                self.error(node, f"{name}() is a method of timestamps, e.g. timestamp(order.event_time).{name}()",
                           "type-mismatch")
            return INT
        if name in CONVERSIONS and node.target is None:
            if len(arg_ts) != 1:
                self.error(node, f"{name}() takes one argument", "bad-call")
            elif name == "timestamp" and arg_ts[0].kind not in ("string", "timestamp", "dyn"):
                self.error(node, f"timestamp() needs an RFC 3339 string, not {arg_ts[0]}", "type-mismatch")
            elif name == "duration" and arg_ts[0].kind not in ("string", "duration", "dyn"):
                self.error(node, f"duration() needs a string such as \"1h\", not {arg_ts[0]}", "type-mismatch")
            return CONVERSIONS[name]
        self.error(node, f"unknown function {name}" + suggest(name, SUPPORTED_FUNCTIONS)
                   + f" (supported: {', '.join(SUPPORTED_FUNCTIONS)})", "unknown-function")
        return DYN

    def macro(self, node: Call) -> CelType:
        assert node.target is not None
        tt = self.infer(node.target)
        if len(node.args) != 2 or not isinstance(node.args[0], Ident):
            self.error(node, f"{node.name}() takes a variable and an expression, e.g. "
                       f"order.items.{node.name}(i, i.quantity > 10)", "bad-call")
            return DYN
        var = node.args[0].name
        if var in ROOTS:
            self.error(node.args[0], f"the macro variable {var} hides the {var} of the condition; pick another name",
                       "shadowed-name")
        elem = tt.elem if tt.kind in ("list", "map") and tt.elem is not None and tt.kind == "list" else DYN
        if tt.kind not in ("list", "map", "dyn"):
            self.error(node, f"{node.name}() needs a list or a map; {_text(node.target)} is a {tt}", "type-mismatch")
        saved = self.scope.get(var)
        self.scope[var] = elem
        self.result.types[id(node.args[0])] = elem
        try:
            bt = self.infer(node.args[1])
        finally:
            if saved is None:
                self.scope.pop(var, None)
            else:
                self.scope[var] = saved
        if node.name in ("all", "exists", "exists_one", "filter") and bt.kind not in ("bool", "dyn"):
            self.error(node.args[1], f"the predicate of {node.name}() must be a boolean, not {bt}", "type-mismatch")
        if node.name == "map":
            return CelType("list", elem=bt)
        if node.name == "filter":
            return tt
        return BOOL

    # ------------------------------------------------------------------ whole-condition lints
    def constants(self, root: Node) -> None:
        """Always-true/false parts: constant sub-conditions evaluated by the CEL runtime."""
        for node in walk(root):
            if not isinstance(node, Binary) or node.op not in ("&&", "||"):
                continue
            for side in (node.left, node.right):
                if _is_const(side) and not isinstance(side, Lit):
                    ok, value = const_value(side)
                    if ok and isinstance(value, bool):
                        self.warn(side, f"always {str(value).lower()}: {unparse(side)} does not depend on the order",
                                  "always-constant")
                elif isinstance(side, Lit) and side.kind == "bool":
                    self.warn(side, f"the literal {str(side.value).lower()} in `{node.op}` is redundant or decides the "
                              "whole condition", "always-constant")
        if _is_const(root):
            ok, value = const_value(root)
            if ok and isinstance(value, bool):
                self.warn(root, f"the condition is always {str(value).lower()}", "always-constant")
            elif not ok:
                self.error(root, f"the condition always fails: {str(value).splitlines()[0]}", "always-error")

    def contradictions(self, root: Node) -> None:
        inner = {id(c) for n in walk(root) if isinstance(n, Binary) and n.op == "&&" for c in (n.left, n.right)}
        for node in walk(root):
            if not (isinstance(node, Binary) and node.op == "&&") or id(node) in inner:
                continue
            bounds: dict[str, tuple[float, bool, float, bool]] = {}
            parts = conjuncts(node)
            for c in parts:
                pc = _path_cmp(c)
                if pc is None:
                    continue
                iv = _interval(pc[1], pc[2])
                if iv is None:
                    continue
                lo, lo_c, hi, hi_c = bounds.get(pc[0], (-math.inf, False, math.inf, False))
                nlo, nlo_c, nhi, nhi_c = iv
                if nlo > lo or (nlo == lo and not nlo_c):
                    lo, lo_c = nlo, nlo_c
                if nhi < hi or (nhi == hi and not nhi_c):
                    hi, hi_c = nhi, nhi_c
                bounds[pc[0]] = (lo, lo_c, hi, hi_c)
                if _empty(lo, lo_c, hi, hi_c):
                    self.warn(node, f"never true: the conditions on {pc[0]} contradict each other", "always-constant",
                              key=f"contradiction:{pc[0]}")


def check(root: Node, env: Environment) -> CheckResult:
    """Type-check and lint one parsed condition."""
    return _Checker(env).check(root)
