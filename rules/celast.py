"""A small parser for CEL (Common Expression Language) conditions, with limits, and a printer.

Why our own parser when ``common-expression-language`` (Rust) evaluates the rules: that library
exposes no syntax tree, and the tree is what lets ``fraudscore rules check`` type-check a condition
against the order schema and the feature definitions, find always-true/false conditions, rewrite a
condition into a faster equivalent (:mod:`rules.flatten`) and evaluate it column-wise over a
million orders (:mod:`rules.vector`). The Rust library stays the authority: every condition must
also compile there, and property tests check that both agree on every value.

Limits are enforced *before* anything recursive runs. The Rust parser panics (a ``BaseException``
that brings a worker down) on a few thousand nested parentheses, so a condition longer than
:data:`MAX_CHARS`, nested deeper than :data:`MAX_DEPTH` or larger than :data:`MAX_NODES` is refused
here and never reaches it.

The grammar is CEL's (https://github.com/google/cel-spec/blob/master/doc/langdef.md)::

    Expr    = Or ["?" Or ":" Expr]          Or  = And {"||" And}     And = Rel {"&&" Rel}
    Rel     = Add {("<"|"<="|">="|">"|"=="|"!="|"in") Add}
    Add     = Mul {("+"|"-") Mul}           Mul = Unary {("*"|"/"|"%") Unary}
    Unary   = Member | "!"+ Member | "-"+ Member
    Member  = Primary {"." IDENT ["(" [Args] ")"] | "[" Expr "]"}
    Primary = ["."] IDENT ["(" [Args] ")"] | "(" Expr ")" | "[" [Args] [","] "]"
            | "{" [Expr ":" Expr {"," Expr ":" Expr}] [","] "}" | LITERAL

Message construction (``Foo{a: 1}``) is not part of what rules may use and is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from rules.exceptions import CelSyntaxError

MAX_CHARS = 4096
MAX_DEPTH = 24
MAX_NODES = 400

RESERVED = frozenset(
    "as break const continue else for function if import let loop package namespace return var void while".split()
)
MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})

# ------------------------------------------------------------------------------------------- nodes


@dataclass(frozen=True, eq=False)
class Node:
    pos: int


@dataclass(frozen=True, eq=False)
class Lit(Node):
    value: Any
    kind: str  # int uint double string bytes bool null


@dataclass(frozen=True, eq=False)
class Ident(Node):
    name: str


@dataclass(frozen=True, eq=False)
class Select(Node):
    operand: Node
    field: str


@dataclass(frozen=True, eq=False)
class Has(Node):
    """``has(x.f)``: the presence test on a field selection."""

    target: Select


@dataclass(frozen=True, eq=False)
class Index(Node):
    operand: Node
    index: Node


@dataclass(frozen=True, eq=False)
class Unary(Node):
    op: str  # "!" or "-"
    operand: Node


@dataclass(frozen=True, eq=False)
class Binary(Node):
    op: str  # || && < <= > >= == != in + - * / %
    left: Node
    right: Node


@dataclass(frozen=True, eq=False)
class Cond(Node):
    cond: Node
    then: Node
    other: Node


@dataclass(frozen=True, eq=False)
class ListLit(Node):
    items: tuple[Node, ...]


@dataclass(frozen=True, eq=False)
class MapLit(Node):
    entries: tuple[tuple[Node, Node], ...]


@dataclass(frozen=True, eq=False)
class Call(Node):
    """A function (``size(x)``) or method (``x.startsWith('a')``, macros ``l.exists(v, p)``) call."""

    name: str
    target: Node | None
    args: tuple[Node, ...] = field(default_factory=tuple)


def children(node: Node) -> tuple[Node, ...]:
    if isinstance(node, Select):
        return (node.operand,)
    if isinstance(node, Has):
        return (node.target,)
    if isinstance(node, Index):
        return (node.operand, node.index)
    if isinstance(node, Unary):
        return (node.operand,)
    if isinstance(node, Binary):
        return (node.left, node.right)
    if isinstance(node, Cond):
        return (node.cond, node.then, node.other)
    if isinstance(node, ListLit):
        return node.items
    if isinstance(node, MapLit):
        return tuple(x for kv in node.entries for x in kv)
    if isinstance(node, Call):
        return ((node.target,) if node.target is not None else ()) + node.args
    return ()


def walk(node: Node) -> list[Node]:
    """Every node, pre-order (iterative: safe on any tree the parser produced)."""
    out: list[Node] = []
    stack = [node]
    while stack:
        n = stack.pop()
        out.append(n)
        stack.extend(reversed(children(n)))
    return out


def path_of(node: Node) -> tuple[str, ...] | None:
    """``order.payment.card_bin`` → ``("order", "payment", "card_bin")``; None for anything else."""
    parts: list[str] = []
    while isinstance(node, Select):
        parts.append(node.field)
        node = node.operand
    if isinstance(node, Ident):
        parts.append(node.name)
        return tuple(reversed(parts))
    return None


# ------------------------------------------------------------------------------------------- lexer

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+|//[^\n]*)
  | (?P<num>0[xX][0-9a-fA-F]+[uU]?|\d*\.\d+(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+|\d+[uU]?)
  | (?P<str>[rR]?[bB]?[rR]?(?:\"\"\"(?:\\.|[^\\])*?\"\"\"|'''(?:\\.|[^\\])*?'''
                           |"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'))
  | (?P<id>[_a-zA-Z][_a-zA-Z0-9]*)
  | (?P<op>\|\||&&|<=|>=|==|!=|[<>!?:+\-*/%.,()\[\]{}])
    """,
    re.VERBOSE | re.DOTALL,
)


@dataclass(frozen=True)
class Token:
    kind: str  # num str id op eof
    text: str
    pos: int


def tokenize(src: str) -> list[Token]:
    if len(src) > MAX_CHARS:
        raise CelSyntaxError(f"condition is {len(src)} characters long; the limit is {MAX_CHARS}", 0)
    out: list[Token] = []
    i, n = 0, len(src)
    while i < n:
        m = _TOKEN.match(src, i)
        if m is None:
            raise CelSyntaxError(f"unexpected character {src[i]!r}", i)
        kind = m.lastgroup or ""
        if kind != "ws":
            out.append(Token(kind, m.group(), i))
            if len(out) > MAX_NODES * 3:
                raise CelSyntaxError(f"condition has more than {MAX_NODES * 3} tokens; split it into several rules", i)
        i = m.end()
    out.append(Token("eof", "", n))
    return out


_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
            "\\": "\\", "'": "'", '"': '"', "`": "`", "?": "?"}


def _unescape(body: str, pos: int) -> str:
    out: list[str] = []
    i = 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        nxt = body[i + 1 : i + 2]
        if nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        elif nxt in ("x", "X", "u", "U"):
            width = {"x": 2, "X": 2, "u": 4, "U": 8}[nxt]
            digits = body[i + 2 : i + 2 + width]
            if len(digits) != width or not all(d in "0123456789abcdefABCDEF" for d in digits):
                raise CelSyntaxError(f"bad \\{nxt} escape in string literal", pos)
            out.append(chr(int(digits, 16)))
            i += 2 + width
        elif nxt and nxt in "0123":
            digits = body[i + 1 : i + 4]
            if len(digits) != 3 or not all(d in "01234567" for d in digits):
                raise CelSyntaxError("bad octal escape in string literal", pos)
            out.append(chr(int(digits, 8)))
            i += 4
        else:
            raise CelSyntaxError(f"unknown escape \\{nxt} in string literal", pos)
    return "".join(out)


def _string_literal(tok: Token) -> Lit:
    text = tok.text
    prefix = ""
    while text[0] in "rRbB":
        prefix += text[0].lower()
        text = text[1:]
    quote = text[:3] if text[:3] in ('"""', "'''") else text[0]
    body = text[len(quote) : -len(quote)]
    value = body if "r" in prefix else _unescape(body, tok.pos)
    if "b" in prefix:
        return Lit(tok.pos, value.encode("utf-8", "surrogatepass"), "bytes")
    return Lit(tok.pos, value, "string")


def _number_literal(tok: Token) -> Lit:
    text = tok.text
    unsigned = text[-1] in "uU"
    if unsigned:
        text = text[:-1]
    if text.lower().startswith("0x"):
        value: Any = int(text, 16)
    elif any(c in text for c in ".eE"):
        if unsigned:
            raise CelSyntaxError("a double literal cannot have a `u` suffix", tok.pos)
        return Lit(tok.pos, float(text), "double")
    else:
        value = int(text)
    if unsigned:
        if value >= 2**64:
            raise CelSyntaxError("uint literal out of range", tok.pos)
        return Lit(tok.pos, value, "uint")
    if value > 2**63:
        raise CelSyntaxError("int literal out of range (use a double, e.g. 1e19)", tok.pos)
    return Lit(tok.pos, value, "int")


# ------------------------------------------------------------------------------------------ parser


class _Parser:
    def __init__(self, src: str) -> None:
        self.src = src
        self.toks = tokenize(src)
        self.i = 0
        self.depth = 0
        self.nodes = 0

    # helpers
    def peek(self) -> Token:
        return self.toks[self.i]

    def next(self) -> Token:
        t = self.toks[self.i]
        self.i += 1
        return t

    def accept(self, text: str) -> bool:
        t = self.toks[self.i]
        if t.kind in ("op", "id") and t.text == text:
            self.i += 1
            return True
        return False

    def expect(self, text: str) -> Token:
        t = self.peek()
        if t.text != text or t.kind not in ("op", "id"):
            found = "the end of the condition" if t.kind == "eof" else repr(t.text)
            raise CelSyntaxError(f"expected {text!r}, found {found}", t.pos)
        return self.next()

    def node(self, n: Node) -> Node:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise CelSyntaxError(f"condition has more than {MAX_NODES} parts; split it into several rules", n.pos)
        return n

    def enter(self, pos: int) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise CelSyntaxError(f"condition is nested deeper than {MAX_DEPTH} levels", pos)

    def leave(self) -> None:
        self.depth -= 1

    # grammar
    def parse(self) -> Node:
        e = self.expr()
        t = self.peek()
        if t.kind != "eof":
            raise CelSyntaxError(f"unexpected {t.text!r} after a complete expression", t.pos)
        return e

    def expr(self) -> Node:
        self.enter(self.peek().pos)
        c = self.binary(0)
        if self.peek().text == "?" and self.peek().kind == "op":
            q = self.next()
            a = self.binary(0)
            self.expect(":")
            b = self.expr()
            c = self.node(Cond(q.pos, c, a, b))
        self.leave()
        return c

    _LEVELS: tuple[tuple[str, ...], ...] = (
        ("||",),
        ("&&",),
        ("<", "<=", ">", ">=", "==", "!=", "in"),
        ("+", "-"),
        ("*", "/", "%"),
    )

    def binary(self, level: int) -> Node:
        if level == len(self._LEVELS):
            return self.unary()
        left = self.binary(level + 1)
        ops = self._LEVELS[level]
        while True:
            t = self.peek()
            if t.kind in ("op", "id") and t.text in ops:
                self.next()
                right = self.binary(level + 1)
                left = self.node(Binary(t.pos, t.text, left, right))
            else:
                return left

    def unary(self) -> Node:
        t = self.peek()
        if t.kind == "op" and t.text in ("!", "-"):
            self.next()
            self.enter(t.pos)
            nxt = self.peek()
            after = self.toks[self.i + 1]
            if t.text == "-" and nxt.kind == "num" and not (after.kind == "op" and after.text in (".", "[")):
                # `-9223372036854775808` is a valid int literal: fold the sign into the literal
                self.next()
                lit = _number_literal(nxt)
                if lit.kind == "uint":
                    raise CelSyntaxError("a uint cannot be negative", t.pos)
                self.leave()
                return self.node(Lit(t.pos, -lit.value, lit.kind))
            operand = self.unary()
            self.leave()
            return self.node(Unary(t.pos, t.text, operand))
        return self.member_tail(self.primary())

    def args(self, close: str) -> tuple[Node, ...]:
        out: list[Node] = []
        if self.accept(close):
            return ()
        while True:
            out.append(self.expr())
            if self.accept(close):
                return tuple(out)
            self.expect(",")
            if close == "]" and self.accept("]"):
                return tuple(out)

    def member_tail(self, node: Node) -> Node:
        while True:
            t = self.peek()
            if t.kind == "op" and t.text == ".":
                self.next()
                name = self.next()
                if name.kind != "id":
                    raise CelSyntaxError("expected a field or method name after '.'", name.pos)
                if self.accept("("):
                    self.enter(name.pos)
                    node = self.node(Call(name.pos, name.text, node, self.args(")")))
                    self.leave()
                else:
                    node = self.node(Select(name.pos, node, name.text))
            elif t.kind == "op" and t.text == "[":
                self.next()
                self.enter(t.pos)
                idx = self.expr()
                self.expect("]")
                self.leave()
                node = self.node(Index(t.pos, node, idx))
            elif t.kind == "op" and t.text == "{":
                raise CelSyntaxError("message construction (Type{...}) is not supported in rules", t.pos)
            else:
                return node

    def primary(self) -> Node:
        t = self.next()
        if t.kind == "num":
            lit = _number_literal(t)
            if lit.kind == "int" and lit.value == 2**63:
                raise CelSyntaxError("int literal out of range (use a double, e.g. 1e19)", t.pos)
            return self.node(lit)
        if t.kind == "str":
            return self.node(_string_literal(t))
        if t.kind == "id":
            if t.text in ("true", "false"):
                return self.node(Lit(t.pos, t.text == "true", "bool"))
            if t.text == "null":
                return self.node(Lit(t.pos, None, "null"))
            if t.text == "in" or t.text in RESERVED:
                raise CelSyntaxError(f"{t.text!r} is a reserved word", t.pos)
            if self.accept("("):
                self.enter(t.pos)
                args = self.args(")")
                self.leave()
                if t.text == "has":
                    if len(args) != 1 or not isinstance(args[0], Select):
                        raise CelSyntaxError("has() takes one field selection, e.g. has(order.email_domain)", t.pos)
                    return self.node(Has(t.pos, args[0]))
                return self.node(Call(t.pos, t.text, None, args))
            return self.node(Ident(t.pos, t.text))
        if t.kind == "op":
            if t.text == "(":
                e = self.expr()
                self.expect(")")
                return e
            if t.text == "[":
                self.enter(t.pos)
                items = self.args("]")
                self.leave()
                return self.node(ListLit(t.pos, items))
            if t.text == "{":
                self.enter(t.pos)
                entries: list[tuple[Node, Node]] = []
                if not self.accept("}"):
                    while True:
                        k = self.expr()
                        self.expect(":")
                        v = self.expr()
                        entries.append((k, v))
                        if self.accept("}"):
                            break
                        self.expect(",")
                        if self.accept("}"):
                            break
                self.leave()
                return self.node(MapLit(t.pos, tuple(entries)))
            if t.text == ".":
                raise CelSyntaxError("leading-dot (absolute) names are not supported in rules", t.pos)
        found = "the end of the condition" if t.kind == "eof" else repr(t.text)
        raise CelSyntaxError(f"expected a value, found {found}", t.pos)


def parse(src: str) -> Node:
    """Parse a CEL condition; raise :class:`CelSyntaxError` (with the character offset) or a limit error."""
    return _Parser(src).parse()


# ----------------------------------------------------------------------------------------- printer


def _quote(s: str) -> str:
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\x{o:02x}")
        elif 0xD800 <= o <= 0xDFFF:
            out.append(f"\\u{o:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _lit_text(n: Lit) -> str:
    if n.kind == "null":
        return "null"
    if n.kind == "bool":
        return "true" if n.value else "false"
    if n.kind == "int":
        return str(n.value)
    if n.kind == "uint":
        return f"{n.value}u"
    if n.kind == "double":
        v = float(n.value)
        if v != v or v in (float("inf"), float("-inf")):
            return {"nan": 'double("NaN")', "inf": 'double("Infinity")', "-inf": 'double("-Infinity")'}[repr(v)]
        return repr(v)
    if n.kind == "string":
        return _quote(n.value)
    return "b" + _quote(n.value.decode("latin-1"))


def unparse(node: Node) -> str:
    """CEL source for a tree (fully parenthesised, so precedence never changes)."""
    if isinstance(node, Lit):
        return _lit_text(node)
    if isinstance(node, Ident):
        return node.name
    if isinstance(node, Select):
        return f"{unparse(node.operand)}.{node.field}"
    if isinstance(node, Has):
        return f"has({unparse(node.target)})"
    if isinstance(node, Index):
        return f"{unparse(node.operand)}[{unparse(node.index)}]"
    if isinstance(node, Unary):
        return f"{node.op}({unparse(node.operand)})"
    if isinstance(node, Binary):
        return f"({unparse(node.left)} {node.op} {unparse(node.right)})"
    if isinstance(node, Cond):
        return f"({unparse(node.cond)} ? {unparse(node.then)} : {unparse(node.other)})"
    if isinstance(node, ListLit):
        return "[" + ", ".join(unparse(i) for i in node.items) + "]"
    if isinstance(node, MapLit):
        return "{" + ", ".join(f"{unparse(k)}: {unparse(v)}" for k, v in node.entries) + "}"
    if isinstance(node, Call):
        args = ", ".join(unparse(a) for a in node.args)
        if node.target is None:
            return f"{node.name}({args})"
        return f"{unparse(node.target)}.{node.name}({args})"
    raise TypeError(type(node).__name__)  # pragma: no cover
