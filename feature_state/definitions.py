"""Feature definitions: which rolling aggregates to keep, and which features derive from an order.

The YAML format (the packaged default is ``feature_state/defaults/features.yaml``)::

    version: 1
    entities:                       # name → dotted field path of an order
      customer: customer_id
      card: payment.card_fingerprint
      merchant: merchant_id
    features:                       # rolling aggregates, in the model's column order
      - {name: card_order_count_1h, entity: card, aggregation: count, window: 1h}
      - {name: customer_amount_mean_30d, entity: customer, aggregation: mean, field: amount, window: 30d}
      - {name: device_customer_count_24h, entity: device, aggregation: distinct_count,
         field: customer_id, window: 24h}
      - {name: merchant_fraud_rate_30d, entity: merchant, source: labels, aggregation: rate,
         window: 30d, delay: 2d}
    derived:                        # computed from the order and the aggregates above
      - {name: amount_to_customer_mean_30d, kind: ratio, numerator: amount,
         denominator: customer_amount_mean_30d}
      - {name: customer_seconds_since_previous, kind: seconds_since_previous, entity: customer,
         window: 30d}

Aggregations over ``source: orders`` (the default): ``count``, ``sum``, ``mean``, ``min``, ``max``,
``distinct_count`` (``field`` names an order field path; ``count`` needs none). Over ``source:
labels``: ``count`` (fraud labels of the entity known in the window) and ``rate`` (those fraud labels
÷ the entity's orders in the same window); a label becomes known at ``label_time + delay``.

Windows are ``<n><m|h|d>`` from 1 minute to 90 days; each is kept as tiles of a resolution (``1m``,
``1h`` or ``1d``; default: ``1m`` up to 2 hours, ``1h`` up to 7 days, ``1d`` above) that must divide
the window. See ``docs/feature_state.md`` for the exact window semantics.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from feature_state.exceptions import FeatureDefinitionError

DEFAULT_DEFINITIONS = Path(__file__).parent / "defaults" / "features.yaml"
ORDER_AGGREGATIONS = ("count", "sum", "mean", "min", "max", "distinct_count")
LABEL_AGGREGATIONS = ("count", "rate")
AGGREGATIONS = tuple(dict.fromkeys(ORDER_AGGREGATIONS + LABEL_AGGREGATIONS))
SOURCES = ("orders", "labels")
DERIVED_KINDS = (
    "field",
    "ratio",
    "account_age_days",
    "hour_of_day",
    "day_of_week",
    "is_night",
    "is_weekend",
    "mismatch",
    "seconds_since_previous",
)
#: Tile resolutions a window may use, in seconds; each divides the next.
RESOLUTIONS = (60, 3600, 86400)
MIN_WINDOW_S = 60
MAX_WINDOW_S = 90 * 86400
#: Label fields a label-derived feature's entity may use (labels carry no other entity).
LABEL_ENTITY_FIELDS = ("customer_id", "merchant_id")
#: Order fields with numbers (sum/mean/min/max need one of these or a field of the same kind).
_NUMERIC_ORDER_FIELDS = ("amount",)
_KNOWN_ORDER_PATHS = (
    "order_id", "customer_id", "amount", "currency", "merchant_id", "terminal_id", "channel",
    "payment.method", "payment.card_fingerprint", "payment.card_bin", "payment.card_country",
    "ip_address", "ip_country", "device_id", "email_domain", "billing_country", "shipping_country",
    "account_created_at",
)
_WINDOW = re.compile(r"^(\d+)\s*([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_TOP_KEYS = ("version", "entities", "features", "derived")
_FEATURE_KEYS = ("name", "entity", "aggregation", "field", "window", "source", "delay", "resolution", "description")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def parse_window(text: str) -> int:
    """Window length in seconds from ``90s``, ``5m``, ``1h``, ``30d``."""
    m = _WINDOW.match(str(text).strip())
    if not m:
        raise ValueError(f"window {text!r} is not of the form <number><s|m|h|d>, e.g. 1h or 30d")
    return int(m.group(1)) * _UNIT[m.group(2)]


def format_seconds(seconds: int) -> str:
    """``3600`` → ``1h``; the inverse of :func:`parse_window` for whole units."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0 and seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def default_resolution(window_s: int) -> int:
    """Tile resolution chosen when a feature names none."""
    if window_s <= 2 * 3600:
        return 60
    if window_s <= 7 * 86400:
        return 3600
    return 86400


@dataclass(frozen=True)
class AggregateFeature:
    """A rolling aggregate of one entity's orders (or labels) over an event-time window."""

    name: str
    entity: str
    entity_path: str
    aggregation: str
    window_s: int
    field: str | None = None
    source: str = "orders"
    delay_s: int = 0
    resolution_s: int = 60

    @property
    def tiles(self) -> int:
        """Number of tiles the window spans (the head tile included)."""
        return self.window_s // self.resolution_s


@dataclass(frozen=True)
class DerivedFeature:
    """A feature computed from the order itself and the aggregates."""

    name: str
    kind: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FeatureSet:
    """A validated set of feature definitions."""

    aggregates: tuple[AggregateFeature, ...]
    derived: tuple[DerivedFeature, ...]
    entities: dict[str, str]
    source: str = "<defaults>"

    @property
    def names(self) -> list[str]:
        """Every feature name, aggregates first, in definition order (the model's column order)."""
        return [f.name for f in self.aggregates] + [d.name for d in self.derived]

    @property
    def max_window_s(self) -> int:
        windows = [f.window_s + f.delay_s for f in self.aggregates]
        windows += [int(d.params["window_s"]) for d in self.derived if d.kind == "seconds_since_previous"]
        return max(windows, default=0)


def _err(source: str, line: int | None, msg: str) -> FeatureDefinitionError:
    where = f"{source}:{line}" if line else source
    return FeatureDefinitionError(f"{where}: {msg}")


def _suggest(word: str, options: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; expected one of {', '.join(options)}"


class _LineLoader(yaml.SafeLoader):
    """Safe loader that records the line of every mapping (as ``__line__``)."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict[str, Any]:
    mapping: dict[str, Any] = {str(k): v for k, v in loader.construct_mapping(node, deep=True).items()}
    mapping["__line__"] = node.start_mark.line + 1
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_feature_set(path: str | Path | None = None) -> FeatureSet:
    """Load and validate feature definitions; ``None`` loads the packaged defaults."""
    if path is None:
        text = DEFAULT_DEFINITIONS.read_text()
        source = "feature_state/defaults/features.yaml"
    else:
        p = Path(path)
        if not p.is_file():
            raise FeatureDefinitionError(f"{p}: feature definitions file not found")
        text, source = p.read_text(), str(p)
    try:
        doc = yaml.load(text, Loader=_LineLoader)  # noqa: S506 - _LineLoader subclasses SafeLoader
    except yaml.YAMLError as exc:
        raise _err(source, None, f"not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise _err(source, None, "expected a mapping with `entities`, `features` and `derived`")
    return parse_feature_set(doc, source)


def _duration(item: dict[str, Any], key: str, source: str, line: int | None, name: str) -> int:
    try:
        return parse_window(item.get(key, ""))
    except ValueError as exc:
        raise _err(source, line, f"{name}: `{key}`: {exc}") from None


def _check_keys(item: dict[str, Any], allowed: tuple[str, ...], source: str, line: int | None, what: str) -> None:
    for key in item:
        if key != "__line__" and key not in allowed:
            raise _err(source, line, f"{what}: unknown key {key!r}" + _suggest(str(key), allowed))


def _parse_aggregate(
    item: Any, entities: dict[str, str], names: set[str], source: str
) -> AggregateFeature:
    if not isinstance(item, dict):
        raise _err(source, None, f"each entry of `features` must be a mapping, got {item!r}")
    line = item.get("__line__")
    name = item.get("name")
    if not name or not isinstance(name, str):
        raise _err(source, line, "feature needs a `name`")
    if not _NAME.match(name):
        raise _err(source, line, f"{name!r}: names are lower_snake_case (letters, digits, _)")
    _check_keys(item, _FEATURE_KEYS, source, line, name)
    if name in names:
        raise _err(source, line, f"duplicate feature name {name!r}")
    ent = item.get("entity")
    if ent not in entities:
        raise _err(source, line, f"{name}: unknown entity {ent!r}" + _suggest(str(ent), tuple(entities)))
    src = item.get("source", "orders")
    if src not in SOURCES:
        raise _err(source, line, f"{name}: unknown source {src!r}" + _suggest(str(src), SOURCES))
    agg = item.get("aggregation")
    allowed = ORDER_AGGREGATIONS if src == "orders" else LABEL_AGGREGATIONS
    if agg not in allowed:
        raise _err(source, line, f"{name}: aggregation {agg!r} is not available for source {src}"
                   + _suggest(str(agg), allowed))
    fld = item.get("field")
    if src == "orders" and agg != "count" and not fld:
        raise _err(source, line, f"{name}: aggregation {agg} needs a `field` (an order field path, e.g. amount)")
    if fld is not None and (src == "labels" or agg == "count"):
        raise _err(source, line, f"{name}: aggregation {agg} over {src} takes no `field`")
    if fld is not None and fld not in _KNOWN_ORDER_PATHS:
        raise _err(source, line, f"{name}: unknown order field {fld!r}" + _suggest(str(fld), _KNOWN_ORDER_PATHS))
    if agg in ("sum", "mean", "min", "max") and fld not in _NUMERIC_ORDER_FIELDS:
        raise _err(source, line, f"{name}: {agg} needs a numeric field ({', '.join(_NUMERIC_ORDER_FIELDS)}), "
                   f"got {fld!r}; use distinct_count for categorical fields")
    window = _duration(item, "window", source, line, name)
    if not MIN_WINDOW_S <= window <= MAX_WINDOW_S:
        raise _err(source, line, f"{name}: window must be between 1m and 90d, got {format_seconds(window)}")
    if "resolution" in item:
        res = _duration(item, "resolution", source, line, name)
        if res not in RESOLUTIONS:
            raise _err(source, line, f"{name}: resolution must be one of 1m, 1h, 1d, got {item['resolution']!r}")
    else:
        res = default_resolution(window)
    if window % res:
        raise _err(source, line, f"{name}: window {format_seconds(window)} is not a whole number of "
                   f"{format_seconds(res)} tiles; use e.g. {format_seconds(max(res, window // res * res))}")
    delay = 0
    if src == "labels":
        if entities[ent] not in LABEL_ENTITY_FIELDS:
            ok = [e for e, p in entities.items() if p in LABEL_ENTITY_FIELDS]
            raise _err(source, line, f"{name}: labels carry only {', '.join(LABEL_ENTITY_FIELDS)}, so a label "
                       f"feature's entity must be one of {', '.join(ok) or '(none defined)'}; got {ent!r} "
                       f"({entities[ent]})")
        if "delay" in item:
            delay = _duration(item, "delay", source, line, name)
    elif "delay" in item:
        raise _err(source, line, f"{name}: `delay` applies to source: labels only")
    names.add(name)
    return AggregateFeature(name, str(ent), entities[ent], str(agg), window, fld, src, delay, res)


_DERIVED_PARAMS: dict[str, tuple[str, ...]] = {
    "field": ("field",),
    "ratio": ("numerator", "denominator"),
    "account_age_days": (),
    "hour_of_day": (),
    "day_of_week": (),
    "is_night": ("start_hour", "end_hour"),
    "is_weekend": (),
    "mismatch": ("fields",),
    "seconds_since_previous": ("entity", "window"),
}


def _parse_derived(item: Any, entities: dict[str, str], names: set[str], source: str) -> DerivedFeature:
    if not isinstance(item, dict):
        raise _err(source, None, f"each entry of `derived` must be a mapping, got {item!r}")
    line = item.get("__line__")
    name = item.get("name")
    kind = item.get("kind")
    if not name or not isinstance(name, str) or name in names:
        raise _err(source, line, f"derived feature needs a unique `name` (got {name!r})")
    if not _NAME.match(name):
        raise _err(source, line, f"{name!r}: names are lower_snake_case (letters, digits, _)")
    if kind not in DERIVED_KINDS:
        raise _err(source, line, f"{name}: unknown kind {kind!r}" + _suggest(str(kind), DERIVED_KINDS))
    _check_keys(item, ("name", "kind", "description", *_DERIVED_PARAMS[kind]), source, line, name)
    params = {k: v for k, v in item.items() if k not in ("name", "kind", "description", "__line__")}
    if kind == "ratio":
        for ref in (params.get("numerator"), params.get("denominator")):
            if ref not in names:
                raise _err(source, line, f"{name}: unknown feature {ref!r}" + _suggest(str(ref), sorted(names)))
    elif kind == "field":
        if params.get("field") not in _NUMERIC_ORDER_FIELDS:
            raise _err(source, line, f"{name}: kind field needs a numeric `field`"
                       + _suggest(str(params.get("field")), _NUMERIC_ORDER_FIELDS))
    elif kind == "mismatch":
        flds = params.get("fields")
        if not isinstance(flds, list) or len(flds) != 2:
            raise _err(source, line, f"{name}: kind mismatch needs `fields: [a, b]` (two order field paths)")
        for f in flds:
            if f not in _KNOWN_ORDER_PATHS:
                raise _err(source, line, f"{name}: unknown order field {f!r}" + _suggest(str(f), _KNOWN_ORDER_PATHS))
    elif kind == "is_night":
        start, end = params.setdefault("start_hour", 0), params.setdefault("end_hour", 6)
        if not all(isinstance(h, int) and 0 <= h <= 24 for h in (start, end)):
            raise _err(source, line, f"{name}: start_hour and end_hour are whole hours 0..24")
    elif kind == "seconds_since_previous":
        ent = params.get("entity")
        if ent not in entities:
            raise _err(source, line, f"{name}: unknown entity {ent!r}" + _suggest(str(ent), tuple(entities)))
        window = _duration(params, "window", source, line, name) if "window" in params else 30 * 86400
        if not MIN_WINDOW_S <= window <= MAX_WINDOW_S:
            raise _err(source, line, f"{name}: window must be between 1m and 90d")
        params["entity_path"] = entities[ent]
        params["window_s"] = window
    names.add(name)
    return DerivedFeature(name, kind, params)


def parse_feature_set(doc: dict[str, Any], source: str = "<memory>") -> FeatureSet:
    """Validate an already-parsed definitions document."""
    _check_keys(doc, _TOP_KEYS, source, None, "top level")
    version = doc.get("version", 1)
    if version != 1:
        raise _err(source, None, f"unsupported definitions version {version!r}; this fraudscore reads version 1")
    raw_entities = doc.get("entities") or {}
    if not isinstance(raw_entities, dict):
        raise _err(source, None, "`entities` must map names to order field paths")
    entities: dict[str, str] = {}
    for k, v in raw_entities.items():
        if k == "__line__":
            continue
        if not isinstance(v, str) or v not in _KNOWN_ORDER_PATHS:
            raise _err(source, raw_entities.get("__line__"),
                       f"entity {k!r}: unknown order field {v!r}" + _suggest(str(v), _KNOWN_ORDER_PATHS))
        entities[str(k)] = v
    names: set[str] = set()
    features = doc.get("features") or []
    derived_items = doc.get("derived") or []
    if not isinstance(features, list) or not isinstance(derived_items, list):
        raise _err(source, None, "`features` and `derived` must be lists")
    aggs = [_parse_aggregate(item, entities, names, source) for item in features]
    derived = [_parse_derived(item, entities, names, source) for item in derived_items]
    if not aggs:
        raise _err(source, None, "no features defined")
    return FeatureSet(tuple(aggs), tuple(derived), entities, source)
