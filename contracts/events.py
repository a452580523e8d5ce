"""Event schemas: the public contract of the `orders`, `labels`, `decisions` and `actions` topics.

Field names are the contract: fields may be added, never repurposed. Unknown fields in incoming
events are ignored (a newer producer may send more than this version knows).

Decoding is two-speed. :func:`decode_order` and friends first try msgspec's typed decoder (a
couple of microseconds per event). Only when that fails does :func:`explain` walk the payload
against the same schema and collect *every* offending field path, so an error names them all.
Every string in an incoming event is checked for card numbers (a raw-bytes pre-filter first);
a hit is refused without echoing the number.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from contracts.exceptions import CardNumberError, EventValidationError, FieldError
from contracts.pan import bytes_may_contain_pan, pan_paths

SCHEMA_VERSION = 1

Timestamp = Annotated[dt.datetime, msgspec.Meta(tz=True, description="RFC 3339 with an offset")]
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
ShortStr = Annotated[str, msgspec.Meta(max_length=256)]
CountryCode = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2")]
CurrencyCode = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$", description="ISO 4217")]
Amount = Annotated[float, msgspec.Meta(ge=0)]
Channel = Literal["web", "app", "pos", "phone"]
DecisionKind = Literal["allow", "review", "challenge", "block"]
LabelKind = Literal["fraud", "legit"]
LabelSource = Literal["chargeback", "review", "customer_report"]
RuleMode = Literal["active", "shadow"]

#: Outcome severity: when several rules match, the most severe active outcome wins.
DECISION_SEVERITY: dict[str, int] = {"allow": 0, "review": 1, "challenge": 2, "block": 3}


class Payment(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    """How the order was paid. `card_fingerprint` is a token, never a card number."""

    method: ShortStr | None = None
    card_fingerprint: ShortStr | None = None
    card_bin: Annotated[str, msgspec.Meta(pattern=r"^[0-9]{6,8}$")] | None = None
    card_country: CountryCode | None = None


class Item(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    """One line of the basket."""

    sku: ShortStr | None = None
    category: ShortStr | None = None
    quantity: Annotated[int, msgspec.Meta(ge=0)] = 1
    unit_price: Amount | None = None


class Order(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    """An order to score. `order_id` is the idempotency key."""

    order_id: Id
    event_time: Timestamp
    customer_id: Id
    amount: Amount
    currency: CurrencyCode
    account_created_at: Timestamp | None = None
    merchant_id: ShortStr | None = None
    terminal_id: ShortStr | None = None
    channel: Channel | None = None
    payment: Payment | None = None
    ip_address: ShortStr | None = None
    ip_country: CountryCode | None = None
    device_id: ShortStr | None = None
    email_domain: ShortStr | None = None
    billing_country: CountryCode | None = None
    shipping_country: CountryCode | None = None
    items: Annotated[list[Item], msgspec.Meta(max_length=1000)] | None = None
    schema_version: Annotated[int, msgspec.Meta(ge=1)] = SCHEMA_VERSION


class Label(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    """A labelled outcome for an order, known at `label_time` (often months after the order)."""

    order_id: Id
    label: LabelKind
    source: LabelSource
    label_time: Timestamp
    customer_id: ShortStr | None = None
    merchant_id: ShortStr | None = None
    schema_version: Annotated[int, msgspec.Meta(ge=1)] = SCHEMA_VERSION


class RuleMatch(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    """A rule that matched (or errored) while deciding an order."""

    name: str
    action: DecisionKind
    mode: RuleMode = "active"
    error: str | None = None


class Reason(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    """One feature's contribution to the model score, with a sentence a human can read."""

    feature: str
    value: float | None
    contribution: float
    text: str


class Decision(msgspec.Struct, kw_only=True, omit_defaults=False, frozen=True):
    """What was decided for an order, with everything needed to audit and replay it."""

    order_id: Id
    decision: DecisionKind
    score: float | None
    model_version: str | None
    ruleset_version: str | None
    matched_rules: list[RuleMatch] = []
    reasons: list[Reason] = []
    features: dict[str, float | None] = {}
    degraded: bool = False
    degraded_reasons: list[str] = []
    shadow: dict[str, float] = {}
    latency_ms: float = 0.0
    event_time: Timestamp | None = None
    decided_at: Timestamp | None = None
    customer_id: str | None = None
    amount: float | None = None
    source: Literal["grpc", "stream", "batch"] = "stream"
    schema_version: int = SCHEMA_VERSION


class Action(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    """An effect to carry out for a decision (block the order, open a review case, …)."""

    order_id: Id
    action: DecisionKind
    decided_at: Timestamp
    rule: str | None = None
    reason: str | None = None
    schema_version: int = SCHEMA_VERSION


E = TypeVar("E", bound=msgspec.Struct)

_encoder = msgspec.json.Encoder()
_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {
    cls: msgspec.json.Decoder(cls) for cls in (Order, Label, Decision, Action)
}


def encode(event: msgspec.Struct) -> bytes:
    """JSON bytes of an event."""
    return _encoder.encode(event)


def to_builtins(event: msgspec.Struct) -> dict[str, Any]:
    """The event as JSON-compatible builtins (timestamps as RFC 3339 strings)."""
    out: dict[str, Any] = msgspec.to_builtins(event)
    return out


def decode(cls: type[E], raw: bytes | str) -> E:
    """Decode and validate one event; raise a :class:`~contracts.exceptions.ContractError`.

    The error names every offending field path. A card number anywhere in the payload is
    refused with :class:`CardNumberError` naming the paths, never the number.
    """
    data = raw.encode() if isinstance(raw, str) else raw
    if bytes_may_contain_pan(data):
        try:
            generic = msgspec.json.decode(data)
        except msgspec.DecodeError:
            generic = None
        paths = pan_paths(generic) if generic is not None else []
        if paths:
            raise CardNumberError(paths)
    decoder = _decoders.get(cls) or msgspec.json.Decoder(cls)
    try:
        event: E = decoder.decode(data)
    except msgspec.DecodeError as exc:
        errors = explain(cls, data)
        if not errors:  # pragma: no cover - explain() covers every decode failure
            errors = [FieldError("$", str(exc))]
        raise EventValidationError(cls.__name__, errors) from None
    return event


def from_builtins(cls: type[E], obj: Any) -> E:
    """Validate an already-decoded object (e.g. a dict built from a gRPC request)."""
    paths = pan_paths(obj)
    if paths:
        raise CardNumberError(paths)
    try:
        event: E = msgspec.convert(obj, cls)
    except msgspec.ValidationError:
        raise EventValidationError(cls.__name__, _explain_value(cls, obj, "$")) from None
    return event


def decode_order(raw: bytes | str) -> Order:
    """Decode one `orders` event."""
    return decode(Order, raw)


def decode_label(raw: bytes | str) -> Label:
    """Decode one `labels` event."""
    return decode(Label, raw)


def explain(cls: type[Any], raw: bytes) -> list[FieldError]:
    """Every problem with ``raw`` as an instance of ``cls``, as (JSON path, message) pairs."""
    try:
        obj = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        return [FieldError("$", f"not valid JSON: {exc}")]
    return _explain_value(cls, obj, "$")


def _explain_value(tp: Any, value: Any, path: str) -> list[FieldError]:
    info = msgspec.inspect.type_info(tp)
    return _walk(info, value, path)


def _walk(info: msgspec.inspect.Type, value: Any, path: str) -> list[FieldError]:
    mi = msgspec.inspect
    while isinstance(info, mi.Metadata):
        info = info.type
    if isinstance(info, mi.StructType):
        if not isinstance(value, dict):
            return [FieldError(path, f"expected an object, got {_json_type(value)}")]
        errors: list[FieldError] = []
        for f in info.fields:
            sub = f"{path}.{f.encode_name}"
            if f.encode_name not in value:
                if f.required:
                    errors.append(FieldError(sub, "required field is missing"))
                continue
            errors.extend(_walk(f.type, value[f.encode_name], sub))
        return errors
    if isinstance(info, mi.UnionType):
        if value is None and any(isinstance(t, mi.NoneType) for t in info.types):
            return []
        non_null = [t for t in info.types if not isinstance(t, mi.NoneType)]
        if len(non_null) == 1:
            return _walk(non_null[0], value, path)
    if isinstance(info, mi.ListType) and isinstance(value, list):
        errors = []
        if info.max_length is not None and len(value) > info.max_length:
            errors.append(FieldError(path, f"at most {info.max_length} entries allowed, got {len(value)}"))
        for i, v in enumerate(value):
            errors.extend(_walk(info.item_type, v, f"{path}[{i}]"))
        return errors
    if isinstance(info, mi.FloatType) and isinstance(value, float) and not math.isfinite(value):
        return [FieldError(path, "must be a finite number")]
    # Leaf: let msgspec judge it with its own message, re-rooted at our path.
    try:
        msgspec.convert(value, _leaf_type(info))
    except msgspec.ValidationError as exc:
        msg = str(exc)
        cut = msg.rfind(" - at `$")
        if cut != -1:
            msg = msg[:cut]
        return [FieldError(path, msg)]
    return []


def _bounds_meta(info: msgspec.inspect.FloatType | msgspec.inspect.IntType) -> msgspec.Meta:
    """The numeric bounds of ``info`` as a ``Meta``.

    msgspec never sets both ``ge`` and ``gt`` (nor ``le`` and ``lt``) on one type, so one branch
    per pairing keeps each call on a typed ``Meta`` overload; unset bounds pass ``None`` (ignored).
    """
    if info.gt is None:
        if info.lt is None:
            return msgspec.Meta(ge=info.ge, le=info.le)
        return msgspec.Meta(ge=info.ge, lt=info.lt)
    if info.lt is None:
        return msgspec.Meta(gt=info.gt, le=info.le)
    return msgspec.Meta(gt=info.gt, lt=info.lt)


def _leaf_type(info: msgspec.inspect.Type) -> Any:
    """Rebuild an annotated Python type from msgspec's type info for a leaf check."""
    mi = msgspec.inspect
    while isinstance(info, mi.Metadata):
        info = info.type
    if isinstance(info, mi.UnionType):
        parts = tuple(_leaf_type(t) for t in info.types)
        out: Any = parts[0]
        for p in parts[1:]:
            out = out | p
        return out
    if isinstance(info, mi.NoneType):
        return type(None)
    if isinstance(info, mi.LiteralType):
        return Literal[info.values]
    if isinstance(info, mi.StrType):
        meta = msgspec.Meta(min_length=info.min_length, max_length=info.max_length, pattern=info.pattern)
        return Annotated[str, meta]
    if isinstance(info, mi.FloatType):
        return Annotated[float, _bounds_meta(info)]
    if isinstance(info, mi.IntType):
        return Annotated[int, _bounds_meta(info)]
    if isinstance(info, mi.BoolType):
        return bool
    if isinstance(info, mi.DateTimeType):
        return Annotated[dt.datetime, msgspec.Meta(tz=info.tz)]
    if isinstance(info, mi.DictType):
        return dict[_leaf_type(info.key_type), _leaf_type(info.value_type)]  # type: ignore[misc]
    if isinstance(info, mi.ListType):
        return list[_leaf_type(info.item_type)]  # type: ignore[misc]
    if isinstance(info, mi.StructType):
        return info.cls
    return Any


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
