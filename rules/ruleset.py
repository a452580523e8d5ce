"""Loading analyst rule files (YAML) into an immutable, compiled :class:`Ruleset`.

A rule file::

    ruleset: default
    version: 3
    thresholds: {review: 0.6, block: 0.9}      # model score -> base decision
    rules:
      - name: card_testing
        when: features.card_order_count_1h >= 10.0 && order.amount < 5.0
        action: block
        priority: 100
        mode: active                            # or shadow

Conditions are CEL (``common-expression-language``): compiled once, never ``eval``-ed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cel
import yaml

from contracts.events import DECISION_SEVERITY
from rules.exceptions import RulesetInvalid

ACTIONS = tuple(DECISION_SEVERITY)
MODES = ("active", "shadow")
PACKAGED_RULES = Path(__file__).parent / "examples"


@dataclass(frozen=True)
class Rule:
    name: str
    when: str
    action: str
    priority: int
    mode: str
    program: Any
    description: str = ""


@dataclass(frozen=True)
class Ruleset:
    """An immutable, compiled ruleset. ``version`` = declared version + content hash."""

    name: str
    version: str
    thresholds: tuple[tuple[float, str], ...]
    rules: tuple[Rule, ...]


def _line_of(text: str, needle: str) -> int:
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return i
    return 1


def load_ruleset(path: str | Path) -> Ruleset:
    """Load, validate and compile one rule file, or every ``*.yaml`` in a directory (merged)."""
    p = Path(path)
    files = sorted(p.glob("*.yaml")) + sorted(p.glob("*.yml")) if p.is_dir() else [p]
    if not files:
        raise RulesetInvalid([f"{p}: no rule files (*.yaml) found"])
    problems: list[str] = []
    rules: list[Rule] = []
    thresholds: dict[str, float] = {}
    names: list[str] = []
    declared: list[str] = []
    digest = hashlib.sha256()
    for f in files:
        text = f.read_text()
        digest.update(f.name.encode() + b"\0" + text.encode())
        try:
            doc = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            problems.append(f"{f}: not valid YAML: {exc}")
            continue
        if not isinstance(doc, dict):
            problems.append(f"{f}:1: expected a mapping with `ruleset`, `thresholds` and `rules`")
            continue
        names.append(str(doc.get("ruleset", f.stem)))
        declared.append(str(doc.get("version", "0")))
        for action, value in (doc.get("thresholds") or {}).items():
            if action not in ACTIONS:
                problems.append(f"{f}:{_line_of(text, str(action))}: unknown threshold action {action!r}")
            elif not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
                problems.append(f"{f}:{_line_of(text, str(action))}: threshold {action} must be in [0, 1]")
            else:
                thresholds[action] = float(value)
        seen: set[str] = {r.name for r in rules}
        for raw in doc.get("rules") or []:
            name = str(raw.get("name", ""))
            line = _line_of(text, f"name: {name}") if name else 1
            where = f"{f}:{line}"
            if not name:
                problems.append(f"{where}: rule without a `name`")
                continue
            if name in seen:
                problems.append(f"{where}: duplicate rule name {name!r}")
            seen.add(name)
            action = raw.get("action")
            if action not in ACTIONS:
                problems.append(f"{where}: rule {name}: action must be one of {', '.join(ACTIONS)}")
                continue
            mode = raw.get("mode", "active")
            if mode not in MODES:
                problems.append(f"{where}: rule {name}: mode must be active or shadow")
                continue
            when = raw.get("when")
            if not isinstance(when, str) or not when.strip():
                problems.append(f"{where}: rule {name}: `when` must be a CEL expression")
                continue
            try:
                program = cel.compile(when)
            except Exception as exc:  # the CEL parser raises its own error types
                problems.append(f"{where}: rule {name}: invalid CEL: {exc}")
                continue
            rules.append(
                Rule(name, when, str(action), int(raw.get("priority", 0)), str(mode), program, raw.get("description", ""))
            )
    if problems:
        raise RulesetInvalid(problems)
    rules.sort(key=lambda r: (-r.priority, r.name))
    ordered = tuple(sorted(((v, a) for a, v in thresholds.items()), reverse=True))
    version = f"{'+'.join(declared)}-{digest.hexdigest()[:12]}"
    return Ruleset("+".join(names), version, ordered, tuple(rules))
