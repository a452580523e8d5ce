"""Feature definitions: which rolling aggregates to keep, and which features derive from an order.

The YAML format (see ``feature_state/defaults/features.yaml``)::

    version: 1
    entities: {customer: customer_id, card: payment.card_fingerprint}
    features:
      - {name: customer_order_count_1h, entity: customer, aggregation: count, window: 1h}
      - {name: customer_amount_sum_24h, entity: customer, aggregation: sum, field: amount, window: 24h}
    derived:
      - {name: amount_to_customer_mean_30d, kind: ratio, numerator: amount, denominator: customer_amount_mean_30d}
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
AGGREGATIONS = ("count", "sum", "mean", "min", "max", "distinct_count")
DERIVED_KINDS = ("field", "ratio", "account_age_days", "hour_of_day", "mismatch")
_WINDOW = re.compile(r"^(\d+)\s*([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_window(text: str) -> int:
    """Window length in seconds from ``90s``, ``5m``, ``1h``, ``30d``."""
    m = _WINDOW.match(str(text).strip())
    if not m:
        raise ValueError(f"window {text!r} is not of the form <number><s|m|h|d>, e.g. 1h or 30d")
    return int(m.group(1)) * _UNIT[m.group(2)]


@dataclass(frozen=True)
class AggregateFeature:
    """A rolling aggregate of one entity's orders over an event-time window."""

    name: str
    entity: str
    entity_path: str
    aggregation: str
    window_s: int
    field: str | None = None


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
        return max((f.window_s for f in self.aggregates), default=0)


def _err(source: str, line: int | None, msg: str) -> FeatureDefinitionError:
    where = f"{source}:{line}" if line else source
    return FeatureDefinitionError(f"{where}: {msg}")


def _suggest(word: str, options: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; expected one of {', '.join(options)}"


class _LineLoader(yaml.SafeLoader):
    """Safe loader that records the line of every mapping (as ``__line__``)."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict[str, Any]:
    mapping = loader.construct_mapping(node, deep=True)
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


def parse_feature_set(doc: dict[str, Any], source: str = "<memory>") -> FeatureSet:
    """Validate an already-parsed definitions document."""
    entities = {k: v for k, v in (doc.get("entities") or {}).items() if k != "__line__"}
    names: set[str] = set()
    aggs: list[AggregateFeature] = []
    for item in doc.get("features") or []:
        line = item.get("__line__")
        name = item.get("name")
        if not name or not isinstance(name, str):
            raise _err(source, line, "feature needs a `name`")
        if name in names:
            raise _err(source, line, f"duplicate feature name {name!r}")
        ent = item.get("entity")
        if ent not in entities:
            raise _err(source, line, f"{name}: unknown entity {ent!r}" + _suggest(str(ent), tuple(entities)))
        agg = item.get("aggregation")
        if agg not in AGGREGATIONS:
            raise _err(source, line, f"{name}: unknown aggregation {agg!r}" + _suggest(str(agg), AGGREGATIONS))
        fld = item.get("field")
        if agg != "count" and not fld:
            raise _err(source, line, f"{name}: aggregation {agg} needs a `field`")
        try:
            window = parse_window(item.get("window", ""))
        except ValueError as exc:
            raise _err(source, line, f"{name}: {exc}") from None
        names.add(name)
        aggs.append(AggregateFeature(name, ent, entities[ent], agg, window, fld))
    derived: list[DerivedFeature] = []
    for item in doc.get("derived") or []:
        line = item.get("__line__")
        name = item.get("name")
        kind = item.get("kind")
        if not name or name in names:
            raise _err(source, line, f"derived feature needs a unique `name` (got {name!r})")
        if kind not in DERIVED_KINDS:
            raise _err(source, line, f"{name}: unknown kind {kind!r}" + _suggest(str(kind), DERIVED_KINDS))
        params = {k: v for k, v in item.items() if k not in ("name", "kind", "__line__")}
        if kind == "ratio":
            for ref in (params.get("numerator"), params.get("denominator")):
                if ref not in names:
                    raise _err(source, line, f"{name}: unknown feature {ref!r}" + _suggest(str(ref), sorted(names)))
        names.add(name)
        derived.append(DerivedFeature(name, kind, params))
    if not aggs:
        raise _err(source, None, "no features defined")
    return FeatureSet(tuple(aggs), tuple(derived), entities, source)
