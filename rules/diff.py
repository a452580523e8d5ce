"""``fraudscore rules diff OLD NEW``: what changed between two rulesets, in words.

Rules are matched by name. For each: added, removed, or changed — condition (compared after
parsing, so re-formatting is not a change), action, mode, priority, kill-switch, tests. Thresholds
and lists (entries added/removed) too. With history, the backtest of NEW against OLD follows.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from feature_state.definitions import FeatureSet
from rules.celast import unparse
from rules.ruleset import Rule, Ruleset, load_report


def _cond(rule: Rule) -> str:
    return unparse(rule.tree) if rule.tree is not None else rule.when


def _ks(rule: Rule) -> str:
    ks = rule.kill_switch
    if ks is None:
        return "none"
    return f"max {100 * ks.max_rate:g}% over {ks.window_s}s (min {ks.min_orders} orders)"


def diff_rulesets(old: Ruleset, new: Ruleset) -> list[str]:
    """Sentences describing every difference (empty when the rulesets behave the same)."""
    out: list[str] = []
    old_rules = {r.name: r for r in old.rules}
    new_rules = {r.name: r for r in new.rules}
    for name in sorted(set(new_rules) - set(old_rules)):
        r = new_rules[name]
        out.append(f"added rule {name}: {r.mode} {r.action} when {r.when.strip()}")
    for name in sorted(set(old_rules) - set(new_rules)):
        r = old_rules[name]
        out.append(f"removed rule {name} (was {r.mode} {r.action})")
    for name in sorted(set(old_rules) & set(new_rules)):
        a, b = old_rules[name], new_rules[name]
        if _cond(a) != _cond(b):
            out.append(f"rule {name}: condition changed from `{a.when.strip()}` to `{b.when.strip()}`")
        if a.action != b.action:
            out.append(f"rule {name}: action changed from {a.action} to {b.action}")
        if a.mode != b.mode:
            verb = "promoted from shadow to active" if b.mode == "active" else "moved from active to shadow"
            out.append(f"rule {name}: {verb}")
        if a.priority != b.priority:
            out.append(f"rule {name}: priority changed from {a.priority} to {b.priority}")
        if _ks(a) != _ks(b):
            out.append(f"rule {name}: kill-switch changed from {_ks(a)} to {_ks(b)}")
        if len(a.tests) != len(b.tests):
            out.append(f"rule {name}: {len(b.tests)} inline tests (was {len(a.tests)})")
    ta, tb = dict((act, v) for v, act in old.thresholds), dict((act, v) for v, act in new.thresholds)
    for act in ("review", "challenge", "block"):
        if ta.get(act) != tb.get(act):
            if act not in ta:
                out.append(f"threshold {act} added at score {tb[act]}")
            elif act not in tb:
                out.append(f"threshold {act} (score {ta[act]}) removed")
            else:
                more = "more" if tb[act] < ta[act] else "fewer"
                out.append(f"threshold {act} moved from {ta[act]} to {tb[act]} ({more} orders reach it)")
    for lname in sorted(set(old.lists) | set(new.lists)):
        la, lb = old.lists.get(lname), new.lists.get(lname)
        if la is None and lb is not None:
            out.append(f"list {lname} added ({len(lb)} entries)")
        elif lb is None and la is not None:
            out.append(f"list {lname} removed ({len(la)} entries)")
        elif la is not None and lb is not None and la.values != lb.values:
            added, removed = len(lb.values - la.values), len(la.values - lb.values)
            out.append(f"list {lname}: {added} entries added, {removed} removed (now {len(lb)})")
    return out


def run_diff_cli(
    old_path: Path, new_path: Path, features: FeatureSet, *, orders: Path | None = None, labels: Path | None = None,
    models_dir: Path | None = None, model: str | None = None, features_path: Path | None = None,
) -> int:
    rulesets: list[Ruleset] = []
    for p in (old_path, new_path):
        if not p.exists():
            print(f"fraudscore rules diff: {p}: no such file or directory", file=sys.stderr)
            return 2
        report = load_report(p, features)
        if report.ruleset is None:
            for prob in report.errors:
                print(prob, file=sys.stderr)
            print(f"{p}: invalid ruleset", file=sys.stderr)
            return 1
        rulesets.append(report.ruleset)
    old, new = rulesets
    lines = diff_rulesets(old, new)
    print(f"{old_path} ({old.version}) → {new_path} ({new.version})")
    for line in lines:
        print(f"  - {line}")
    if not lines:
        print("  no differences in rules, thresholds or lists")
    if orders is not None:
        if labels is None:
            print("fraudscore rules diff: --orders needs --labels", file=sys.stderr)
            return 2
        from rules.backtest import BacktestOptions, run_backtest

        doc = run_backtest(BacktestOptions(rules=new_path, baseline=old_path, orders=orders, labels=labels,
                                           model=model, models_dir=models_dir, features_path=features_path,
                                           no_model=False))
        d: dict[str, Any] = doc["delta"]
        o = doc["ruleset"]["overall"]
        print(f"backtest over {o['orders']} orders ({doc['from'][:10]} … {doc['to'][:10]}):")
        print(f"  would block {d['block']:+d}, review {d['review']:+d}, challenge {d['challenge']:+d}")
        print(f"  fraud caught {d['flagged_fraud']:+d} (amount {d['flagged_fraud_amount']:+.2f}), "
              f"false positives {d['flagged_false_positives']:+d}")
    return 1 if lines else 0
