"""What a condition can see, with types: ``order``, ``features``, ``score``, ``model``, ``lists``.

The order's shape is read from :class:`contracts.events.Order` (so a field added there is known
here without an edit); features come from the loaded feature definitions, with whether each can be
null (a mean over an empty window, an account age when the order has no ``account_created_at``).

Conditions see the order as JSON builtins: timestamps are RFC 3339 strings (``timestamp(...)``
turns them into timestamps), optional fields that were not sent are *absent* (``has()`` tests
them), amounts are doubles.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import msgspec

from contracts.events import Order
from feature_state.definitions import FeatureSet


@dataclass(frozen=True)
class CelType:
    """A static CEL type. ``nullable``: the value may be null at run time."""

    kind: str  # bool int uint double string bytes null timestamp duration list map struct dyn type
    elem: CelType | None = None  # list element / map value
    fields: tuple[tuple[str, FieldInfo], ...] = ()  # struct fields
    nullable: bool = False
    enum: tuple[str, ...] | None = None  # allowed string values (a Literal field)
    pattern: str | None = None  # regex every value of this string field matches
    lo: float = -math.inf  # numeric range known from the definitions
    hi: float = math.inf
    name: str = ""  # struct name, for messages

    def field(self, name: str) -> FieldInfo | None:
        for n, f in self.fields:
            if n == name:
                return f
        return None

    @property
    def field_names(self) -> list[str]:
        return [n for n, _ in self.fields]

    def non_null(self) -> CelType:
        return CelType(self.kind, self.elem, self.fields, False, self.enum, self.pattern, self.lo, self.hi, self.name)

    def __str__(self) -> str:
        base = self.kind
        if self.kind == "list" and self.elem is not None:
            base = f"list({self.elem})"
        elif self.kind == "struct":
            base = self.name or "map"
        return base + ("?" if self.nullable else "")


@dataclass(frozen=True)
class FieldInfo:
    type: CelType
    optional: bool  # may be absent (has() tells)
    source: str = ""  # where a derived feature's value comes from (order field paths), for null guards
    null_when_absent: tuple[str, ...] = ()


BOOL = CelType("bool")
INT = CelType("int")
UINT = CelType("uint")
DOUBLE = CelType("double")
STRING = CelType("string")
BYTES = CelType("bytes")
NULL = CelType("null", nullable=True)
DYN = CelType("dyn", nullable=True)
TIMESTAMP = CelType("timestamp")
DURATION = CelType("duration")
TYPE = CelType("type")
NUMERIC = ("int", "uint", "double")


def _from_msgspec(info: Any, name: str = "") -> CelType:
    mi = msgspec.inspect
    pattern = None
    while isinstance(info, mi.Metadata):
        info = info.type
    if isinstance(info, mi.UnionType):
        non_null = [t for t in info.types if not isinstance(t, mi.NoneType)]
        return _from_msgspec(non_null[0], name) if len(non_null) == 1 else DYN
    if isinstance(info, mi.StrType):
        pattern = info.pattern
        return CelType("string", pattern=pattern)
    if isinstance(info, mi.LiteralType):
        return CelType("string", enum=tuple(str(v) for v in info.values))
    if isinstance(info, mi.FloatType):
        lo = info.ge if info.ge is not None else (info.gt if info.gt is not None else -math.inf)
        return CelType("double", lo=float(lo), hi=math.inf)
    if isinstance(info, mi.IntType):
        lo = info.ge if info.ge is not None else -math.inf
        return CelType("int", lo=float(lo))
    if isinstance(info, mi.BoolType):
        return BOOL
    if isinstance(info, mi.DateTimeType):
        return CelType("string", pattern=None, name="RFC 3339 timestamp")
    if isinstance(info, mi.ListType):
        return CelType("list", elem=_from_msgspec(info.item_type))
    if isinstance(info, mi.StructType):
        fields = []
        for f in info.fields:
            fields.append((f.encode_name, FieldInfo(_from_msgspec(f.type), optional=not f.required)))
        return CelType("struct", fields=tuple(fields), name=info.cls.__name__)
    return DYN


def order_type() -> CelType:
    """The order as conditions see it, derived from :class:`contracts.events.Order`."""
    return _from_msgspec(msgspec.inspect.type_info(Order))


# Which features can be null, and when (aggregations over no values; derived from optional fields).
_NULLABLE_AGG = {"mean", "min", "max"}
_REQUIRED_PATHS = {"order_id", "customer_id", "amount", "currency", "event_time"}


def feature_fields(features: FeatureSet) -> dict[str, FieldInfo]:
    """Feature name → type info (always a double; when it can be null and its range, from the definitions).

    An aggregate is null when the order lacks its entity (no ``device_id`` → no device features) or,
    for mean/min/max, when the window holds no value. A derived feature is null when an order field
    it needs is absent. Kinds this module does not know are treated as nullable, unbounded doubles.
    """
    out: dict[str, FieldInfo] = {}
    for a in features.aggregates:
        entity_srcs: tuple[str, ...] = () if a.entity_path in _REQUIRED_PATHS else (a.entity_path,)
        nullable = bool(entity_srcs) or a.aggregation in _NULLABLE_AGG
        lo = 0.0 if a.aggregation in ("count", "distinct_count", "rate") else -math.inf
        hi = 1.0 if a.aggregation == "rate" else math.inf
        out[a.name] = FieldInfo(CelType("double", nullable=nullable, lo=lo, hi=hi), optional=False,
                                null_when_absent=entity_srcs if a.aggregation not in _NULLABLE_AGG else ())
    for d in features.derived:
        p = d.params
        srcs: tuple[str, ...] = ()
        lo, hi = -math.inf, math.inf
        nullable = True
        if d.kind == "field":
            srcs = (str(p.get("field")),)
            nullable = srcs[0] not in _REQUIRED_PATHS
        elif d.kind == "account_age_days":
            srcs = ("account_created_at",)
        elif d.kind == "hour_of_day":
            nullable, lo, hi = False, 0.0, 23.0
        elif d.kind == "day_of_week":
            nullable, lo, hi = False, 0.0, 6.0
        elif d.kind in ("is_night", "is_weekend"):
            nullable, lo, hi = False, 0.0, 1.0
        elif d.kind == "mismatch":
            srcs = tuple(str(f) for f in p.get("fields", ()))
            lo, hi = 0.0, 1.0
        elif d.kind == "seconds_since_previous":
            lo = 0.0
        out[d.name] = FieldInfo(CelType("double", nullable=nullable, lo=lo, hi=hi), optional=False,
                                null_when_absent=srcs if d.kind in ("field", "account_age_days", "mismatch") else ())
    return out


@dataclass(frozen=True)
class Environment:
    """Everything a condition may reference, with types."""

    order: CelType
    features: dict[str, FieldInfo]
    lists: dict[str, int] = field(default_factory=dict)  # list name → size

    @classmethod
    def build(cls, features: FeatureSet, lists: dict[str, int] | None = None) -> Environment:
        return cls(order_type(), feature_fields(features), dict(lists or {}))


ROOTS = ("order", "features", "score", "model", "lists")


def pattern_matches(pattern: str | None, value: str) -> bool:
    """Whether a literal could ever equal a field constrained by ``pattern`` (JSON-schema style)."""
    if pattern is None:
        return True
    return re.search(pattern, value) is not None
