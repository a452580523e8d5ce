"""Prometheus metrics of the rules engine (the shared ones live in :mod:`monitoring.metrics`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

RULE_MATCHES = Counter(
    "fraudscore_rule_matches_total", "Orders a rule matched (shadow and demoted rules included)",
    ["rule", "action", "mode"],
)
RULE_DEMOTIONS = Counter(
    "fraudscore_rule_demotions_total", "Kill-switch demotions of an active rule to shadow", ["rule"]
)
RULE_DEMOTED = Gauge("fraudscore_rule_demoted", "1 while the kill-switch keeps a rule in shadow", ["rule"])
RULES_LAST_RELOAD = Gauge(
    "fraudscore_rules_last_reload_timestamp_seconds", "When a ruleset was last activated (unix time)"
)
RULES_INVALID = Gauge("fraudscore_rules_invalid", "1 while the latest rules change is refused (last good one serves)")
