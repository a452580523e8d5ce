"""Safe YAML loading that remembers where every value came from (for ``file:line:col`` messages).

Mappings load as :class:`LocatedDict`: a plain ``dict`` with ``.line`` (1-based, the mapping's
first line) and ``.where[key]`` = (line, column, style) of each value. Only ``yaml.SafeLoader``
constructors run; no tags, no Python objects.
"""

from __future__ import annotations

from typing import Any

import yaml


class LocatedDict(dict[str, Any]):
    line: int = 1
    where: dict[str, tuple[int, int, str]]


class _Loader(yaml.SafeLoader):
    """SafeLoader whose mappings remember line numbers."""


def _mapping(loader: _Loader, node: yaml.MappingNode) -> LocatedDict:
    out = LocatedDict()
    out.line = node.start_mark.line + 1
    out.where = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            key = str(key)
        out[key] = loader.construct_object(value_node, deep=True)
        style = getattr(value_node, "style", None) or ""
        out.where[key] = (value_node.start_mark.line + 1, value_node.start_mark.column + 1, style)
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load(text: str) -> Any:
    """Parse YAML safely; mappings become :class:`LocatedDict`."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader subclasses SafeLoader


def position(mapping: Any, key: str, offset: int = 0, text: str = "") -> tuple[int, int]:
    """(line, column) of character ``offset`` inside the string value of ``mapping[key]``.

    Exact for single-line values and ``|`` blocks; for folded or multi-line plain values the line is
    the value's first line plus the newlines before ``offset``.
    """
    if not isinstance(mapping, LocatedDict) or key not in mapping.where:
        return (getattr(mapping, "line", 1), 1)
    line, col, style = mapping.where[key]
    before = text[:offset]
    nl = before.count("\n")
    if style in ("|", ">"):
        return (line + 1 + nl, offset - (before.rfind("\n") + 1) + 1 if nl else offset + 1)
    if nl == 0:
        quote = 1 if style in ("'", '"') else 0
        return (line, col + quote + offset)
    return (line + nl, offset - before.rfind("\n"))
