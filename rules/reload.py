"""Hot reload: watch a rules directory (or a version pointer), validate a change, swap atomically.

``RulesHolder(path)`` serves ``.current`` (a compiled :class:`~rules.ruleset.Ruleset`, or None
before the first valid one). ``refresh()`` — called every ``rules.reload_interval_s`` by the
scorer and the stream worker — looks at the files' sizes and modification times; when they
changed it loads, type-checks and compiles the whole directory, and only if that succeeds swaps
``.current`` in one assignment (an order is decided by one ruleset, never a mix). A refused change
leaves the last good ruleset serving and is visible in ``.last_error`` (the health endpoint),
an ERROR log line, ``fraudscore_reload_refused_total{kind="rules"}`` and
``fraudscore_rules_invalid``.

Version pointer: when the directory holds a file named ``CURRENT``, its content names the
subdirectory to serve (``v42``). Deploy by writing ``v43/``, checking it
(``fraudscore rules check``), then replacing ``CURRENT`` atomically (write a temp file, rename);
roll back by pointing it at the previous one. A symlink works the same way.

The kill-switch (:mod:`rules.killswitch`) watches the served ruleset; demoted rules are served as
shadow, and the served version gets a ``+demoted:<rules>`` suffix so every decision says so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
import time
from pathlib import Path
from typing import Any

from feature_state.definitions import FeatureSet
from monitoring import metrics
from rules.exceptions import RulesetInvalid
from rules.killswitch import KillSwitch, KillSwitchEvent, Sink, rule_key
from rules.metrics import RULE_DEMOTED, RULES_INVALID, RULES_LAST_RELOAD
from rules.ruleset import Ruleset, load_ruleset

log = logging.getLogger(__name__)
POINTER = "CURRENT"
_MAX_FILES = 10_000


def resolve(path: Path) -> Path:
    """The directory to serve: ``path``, or the subdirectory its ``CURRENT`` file names."""
    pointer = path / POINTER
    if path.is_dir() and pointer.is_file():
        name = pointer.read_text(encoding="utf-8").strip()
        target = (path / name).resolve()
        if not name or path.resolve() not in target.parents:
            raise RulesetInvalid([f"{pointer}:1:1: error: CURRENT must name a subdirectory of {path}, got {name!r}"])
        return target
    return path


def fingerprint(path: Path) -> str:
    """Cheap change detector: names, sizes and modification times of every file under ``path``."""
    h = hashlib.sha256()
    pointer = path / POINTER
    if pointer.is_file():
        h.update(pointer.read_bytes())
    try:
        target = resolve(path)
    except RulesetInvalid as exc:
        h.update(str(exc).encode())
        return h.hexdigest()
    files = sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target]
    for f in files[:_MAX_FILES]:
        try:
            st = f.stat()
        except OSError:
            continue
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


class RulesHolder:
    """The serving ruleset. A ruleset that fails validation never replaces the last good one."""

    def __init__(
        self,
        path: Path,
        features: FeatureSet | None = None,
        *,
        kill_switch_sink: Sink | None = None,
        clock: Any = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self.features = features
        self.current: Ruleset | None = None
        self.last_error: str | None = None
        self.loaded_at: float | None = None
        self.served_from: Path | None = None
        #: rule name → (rule key at demotion, the event)
        self.demoted: dict[str, tuple[str, KillSwitchEvent]] = {}
        self._base: Ruleset | None = None
        self._seen: str | None = None
        self._lock = threading.Lock()
        self.kill_switch = KillSwitch(self._on_demote, sink=kill_switch_sink, clock=clock)

    # ------------------------------------------------------------------ reload
    def refresh(self) -> bool:
        """Reload when the files changed. True when a new ruleset now serves."""
        fp = fingerprint(self.path)
        if fp == self._seen:
            return False
        self._seen = fp
        try:
            target = resolve(self.path)
            ruleset = load_ruleset(target, self.features)
        except RulesetInvalid as exc:
            self.last_error = str(exc)
            metrics.RELOAD_REFUSED.labels("rules").inc()
            RULES_INVALID.set(1)
            log.error("refused rules change in %s: %s (still serving %s)", self.path, exc,
                      self.current.version if self.current else "no ruleset")
            return False
        except OSError as exc:
            self.last_error = f"{self.path}: {exc}"
            metrics.RELOAD_REFUSED.labels("rules").inc()
            RULES_INVALID.set(1)
            log.error("cannot read rules in %s: %s (still serving %s)", self.path, exc,
                      self.current.version if self.current else "no ruleset")
            return False
        with self._lock:
            self._base = ruleset
            self.served_from = target
            keys = {r.name: rule_key(r) for r in ruleset.rules}
            for name in list(self.demoted):
                if keys.get(name) != self.demoted[name][0]:  # the rule changed (or is gone): lift the demotion
                    del self.demoted[name]
                    RULE_DEMOTED.labels(name).set(0)
            self._serve()
        self.last_error = None
        self.loaded_at = time.time()
        RULES_INVALID.set(0)
        RULES_LAST_RELOAD.set(self.loaded_at)
        metrics.RULESET_INFO.info({"version": ruleset.version, "name": ruleset.name})
        for w in ruleset.warnings:
            log.warning("rules: %s", w)
        log.info("serving ruleset %s %s (%d rules) from %s", ruleset.name, ruleset.version, len(ruleset.rules), target)
        return True

    def _serve(self) -> None:
        assert self._base is not None
        served = self._base.with_demoted(set(self.demoted))
        self.kill_switch.watch(served)
        self.current = dataclasses.replace(served, monitor=self.kill_switch)

    # ------------------------------------------------------------------ kill-switch
    def _on_demote(self, name: str, event: KillSwitchEvent) -> None:
        with self._lock:
            base = self._base
            rule = base.rule(name) if base is not None else None
            if rule is None:
                return
            self.demoted[name] = (rule_key(rule), event)
            self._serve()

    def reinstate(self, name: str) -> bool:
        """Lift a kill-switch demotion by hand (the rule is active again, its window restarts)."""
        with self._lock:
            if name not in self.demoted or self._base is None:
                return False
            del self.demoted[name]
            RULE_DEMOTED.labels(name).set(0)
            self._serve()
        log.warning("rule %s reinstated by an operator", name)
        return True

    # ------------------------------------------------------------------ health
    def status(self) -> dict[str, object]:
        """Health detail: what serves, from where, why a change was refused, what the kill-switch did."""
        rs = self.current
        return {
            "ruleset": rs.name if rs else None,
            "version": rs.version if rs else None,
            "path": str(self.served_from or self.path),
            "rules": len(rs.rules) if rs else 0,
            "last_error": self.last_error,
            "loaded_at": self.loaded_at,
            "demoted": {n: {"rate": e.rate, "max_rate": e.max_rate, "at": e.at.isoformat()}
                        for n, (_, e) in self.demoted.items()},
        }
