"""Hot reload: watch a rules directory, validate a change, swap atomically or refuse it."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from monitoring import metrics
from rules.exceptions import RulesetInvalid
from rules.ruleset import Ruleset, load_ruleset

log = logging.getLogger(__name__)


def _fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(path.glob("*.y*ml")) if path.is_dir() else [path]
    for f in files:
        try:
            h.update(f.name.encode() + b"\0" + f.read_bytes())
        except OSError:
            continue
    return h.hexdigest()


class RulesHolder:
    """The serving ruleset. A ruleset that fails validation never replaces the last good one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.current: Ruleset | None = None
        self.last_error: str | None = None
        self._seen: str | None = None

    def refresh(self) -> bool:
        """Reload when the files changed. True when a new ruleset now serves."""
        fp = _fingerprint(self.path)
        if fp == self._seen:
            return False
        self._seen = fp
        try:
            ruleset = load_ruleset(self.path)
        except RulesetInvalid as exc:
            self.last_error = str(exc)
            metrics.RELOAD_REFUSED.labels("rules").inc()
            log.error("refused ruleset change in %s: %s (still serving %s)", self.path, exc,
                      self.current.version if self.current else "no ruleset")
            return False
        self.current = ruleset
        self.last_error = None
        metrics.RULESET_INFO.info({"version": ruleset.version, "name": ruleset.name})
        log.info("serving ruleset %s %s", ruleset.name, ruleset.version)
        return True
