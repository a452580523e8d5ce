"""Kill-switch: demote an active rule to shadow when it matches too many orders.

Each active ``block`` / ``review`` / ``challenge`` rule with a ``kill_switch`` (its own, or the
ruleset's default) is watched over a sliding window: when, with at least ``min_orders`` orders
decided in the window, the share the rule matched exceeds ``max_rate``, the rule is demoted to
shadow at once — it keeps being evaluated and recorded, it no longer decides. The demotion emits
a metric (``fraudscore_rule_demotions_total``, ``fraudscore_rule_demoted``), an ERROR log line and a
:class:`KillSwitchEvent` to the injected sink (the platform's processes pass none:
the log line is the event there).

The window is per process (each worker watches its own traffic: a rate is a rate). A demotion
lasts until the rule is changed (its condition, action or kill-switch) or an operator calls
:meth:`rules.reload.RulesHolder.reinstate`; a reload of an unchanged rule keeps it demoted.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence

import msgspec

from contracts.events import RuleMatch
from rules.metrics import RULE_DEMOTED, RULE_DEMOTIONS, RULE_MATCHES
from rules.ruleset import KillSwitchSpec, Rule, Ruleset

log = logging.getLogger(__name__)
BUCKETS = 60


class KillSwitchEvent(msgspec.Struct, kw_only=True, frozen=True):
    """A rule was demoted to shadow (a record the stream/actions side can publish)."""

    event: str = "rule_demoted"
    rule: str
    action: str
    rate: float
    max_rate: float
    window_s: int
    orders: int
    matches: int
    ruleset_version: str
    at: dt.datetime


Sink = Callable[[KillSwitchEvent], None]


def rule_key(rule: Rule) -> str:
    """Identity of a rule's behaviour: a demotion lifts when this changes."""
    ks = rule.kill_switch
    raw = f"{rule.when}\0{rule.action}\0{ks.max_rate if ks else ''}\0{ks.window_s if ks else ''}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


class _Ring:
    """Counts in ``BUCKETS`` time buckets covering ``window_s``; ``total`` is the sum over the window."""

    __slots__ = ("width", "buckets", "total", "head")

    def __init__(self, window_s: int) -> None:
        self.width = max(window_s / BUCKETS, 1e-3)
        self.buckets = [0] * BUCKETS
        self.total = 0
        self.head = -1  # absolute index of the newest bucket

    def advance(self, now: float) -> None:
        idx = int(now // self.width)
        if idx <= self.head:
            return
        if self.head < 0 or idx - self.head >= BUCKETS:
            self.buckets = [0] * BUCKETS
            self.total = 0
        else:
            for i in range(self.head + 1, idx + 1):
                slot = i % BUCKETS
                self.total -= self.buckets[slot]
                self.buckets[slot] = 0
        self.head = idx

    def add(self, now: float, n: int = 1) -> None:
        self.advance(now)
        self.buckets[self.head % BUCKETS] += n
        self.total += n


class KillSwitch:
    """Watches match rates of the serving ruleset; calls ``demote(name)`` when a ceiling is crossed."""

    def __init__(
        self,
        demote: Callable[[str, KillSwitchEvent], None],
        *,
        sink: Sink | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._demote = demote
        self.sink = sink
        self.clock = clock
        self._lock = threading.Lock()
        self._orders: dict[int, _Ring] = {}
        self._matches: dict[str, _Ring] = {}
        self._specs: dict[str, KillSwitchSpec] = {}
        self._counters: dict[tuple[str, str, str], object] = {}

    def watch(self, ruleset: Ruleset) -> None:
        """Start watching a (new) ruleset's active rules; windows of unchanged rules carry over."""
        with self._lock:
            specs = {r.name: r.kill_switch for r in ruleset.rules
                     if r.mode == "active" and r.kill_switch is not None and r.action != "allow"}
            self._specs = {k: v for k, v in specs.items() if v is not None}
            for name, spec in self._specs.items():
                ring = self._matches.get(name)
                if ring is None or abs(ring.width - spec.window_s / BUCKETS) > 1e-9:
                    self._matches[name] = _Ring(spec.window_s)
                self._orders.setdefault(spec.window_s, _Ring(spec.window_s))

    def observe(self, ruleset: Ruleset, matched: Sequence[RuleMatch]) -> None:
        """Record one decided order (called by the engine for every order)."""
        self.observe_many(ruleset, (matched,))

    def observe_many(self, ruleset: Ruleset, per_order: Sequence[Sequence[RuleMatch]]) -> None:
        """Record a batch of decided orders, as :meth:`observe` on each in turn (same trips, same counts).

        The batch shares one clock reading, so the order windows advance once and each order's check
        sees the orders counted up to and including it; only orders with matches cost anything.
        """
        n = len(per_order)
        if n == 0:
            return
        now = self.clock()
        hits: dict[tuple[str, str, str], int] = {}
        for matched in per_order:
            for m in matched:
                if m.error is None:
                    hit = (m.name, str(m.action), str(m.mode))
                    hits[hit] = hits.get(hit, 0) + 1
        for key, count in hits.items():
            c = self._counters.get(key)
            if c is None:
                c = self._counters[key] = RULE_MATCHES.labels(*key)
            c.inc(count)  # type: ignore[attr-defined]
        if not self._specs:
            return
        trip: list[tuple[str, KillSwitchEvent]] = []
        with self._lock:
            for ring in self._orders.values():
                ring.advance(now)
            base = {w: ring.total for w, ring in self._orders.items()}
            counted = n  # as observe(): once nothing is watched any more, later orders are not counted
            for i, matched in enumerate(per_order):
                if not self._specs:
                    counted = i
                    break
                for m in matched:
                    if m.mode != "active" or m.error is not None:
                        continue
                    spec = self._specs.get(m.name)
                    if spec is None:
                        continue
                    ring = self._matches[m.name]
                    ring.add(now)
                    orders_total = base[spec.window_s] + i + 1  # this order and the ones before it
                    if orders_total >= spec.min_orders and ring.total > spec.max_rate * orders_total:
                        event = KillSwitchEvent(
                            rule=m.name, action=m.action, rate=round(ring.total / orders_total, 6),
                            max_rate=spec.max_rate, window_s=spec.window_s, orders=orders_total, matches=ring.total,
                            ruleset_version=ruleset.version, at=dt.datetime.now(dt.UTC),
                        )
                        del self._specs[m.name]
                        trip.append((m.name, event))
            for ring in self._orders.values():
                ring.add(now, counted)
        for name, event in trip:
            RULE_DEMOTIONS.labels(name).inc()
            RULE_DEMOTED.labels(name).set(1)
            log.error(
                "kill-switch: rule %s (%s) matched %d of %d orders (%.2f%% > ceiling %.2f%%) over %ds; "
                "demoted to shadow", name, event.action, event.matches, event.orders, 100 * event.rate,
                100 * event.max_rate, event.window_s,
            )
            self._demote(name, event)
            if self.sink is not None:
                try:
                    self.sink(event)
                except Exception:  # a failing sink must not stop decisions
                    log.exception("kill-switch event sink failed for rule %s", name)
