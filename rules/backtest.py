"""Backtests: what a ruleset would have done to past orders, against what a baseline did.

History (orders and labels JSONL, e.g. from ``fraudscore simulate --to jsonl``) is replayed in
event-time order: features come from :func:`feature_state.replay.replay` over the *whole* history
(so a window that starts before ``--from`` holds the orders before it), model scores from the
scoring runtime (:func:`scoring.models.load_model`, batch ``predict``), and rules are evaluated
column-wise (:func:`rules.engine.rule_columns`). Labels count when they are *matured*: known by
``as_of`` (default: the latest label time in the file); the latest matured label of an order wins.

Per rule: matches (every mode), errors, match rate, orders it decided, fraud caught among its
matches (count and amount), false positives (matched, not labelled fraud), precision and recall,
and when its kill-switch would have demoted it. Overall: decision counts and rates, fraud caught
by blocks and by any intervention (count and amount), false positives, precision and recall, per
day. With a baseline, the same for the baseline and the deltas.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from contracts.events import DECISION_SEVERITY, Label, Order
from feature_state.definitions import FeatureSet, load_feature_set
from rules.engine import RuleColumns, rule_columns
from rules.exceptions import BacktestError, RulesetInvalid
from rules.ruleset import Ruleset, load_report

log = logging.getLogger(__name__)
DECISIONS = ("allow", "review", "challenge", "block")
_SEV = np.array([DECISION_SEVERITY[d] for d in DECISIONS])


@dataclass
class History:
    orders: list[Order]  # sorted by (event_time, order_id), de-duplicated
    labels: list[Label]
    bad_lines: int = 0
    bad_examples: list[str] = field(default_factory=list)


def _read_jsonl(path: Path, cls: type[Any], errors: list[str]) -> tuple[list[Any], int]:
    decoder = msgspec.json.Decoder(cls)
    out: list[Any] = []
    bad = 0
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BacktestError(f"{path}: cannot read: {exc.strerror or exc}") from None
    for lineno, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(decoder.decode(line))
        except msgspec.DecodeError as exc:
            bad += 1
            if len(errors) < 5:
                errors.append(f"{path}:{lineno}: {str(exc)[:160]}")
    return out, bad


def load_history(orders_path: Path, labels_path: Path) -> History:
    """Orders and labels from JSONL; malformed lines are counted and reported, never fatal."""
    errors: list[str] = []
    orders, bad_o = _read_jsonl(orders_path, Order, errors)
    labels, bad_l = _read_jsonl(labels_path, Label, errors)
    if not orders:
        raise BacktestError(f"{orders_path}: no valid orders")
    orders.sort(key=lambda o: (o.event_time, o.order_id))
    seen: set[str] = set()
    uniq = []
    for o in orders:
        if o.order_id not in seen:
            seen.add(o.order_id)
            uniq.append(o)
    return History(uniq, labels, bad_o + bad_l, errors)


def parse_time(text: str | None, what: str) -> dt.datetime | None:
    if text is None:
        return None
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BacktestError(f"{what}: {text!r} is not a date or RFC 3339 time (e.g. 2024-03-01 or "
                            "2024-03-01T00:00:00Z)") from None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


@dataclass
class Outcomes:
    """Decisions of one ruleset over the evaluated orders."""

    decision: np.ndarray  # index into DECISIONS
    deciding: np.ndarray  # index into ruleset.rules, -1 = the thresholds
    columns: dict[str, RuleColumns]


def decide_columns(ruleset: Ruleset, cols: dict[str, RuleColumns], scores: np.ndarray) -> Outcomes:
    """The engine's precedence (see :mod:`rules.engine`) over whole columns."""
    n = len(scores)
    base = np.zeros(n, dtype=np.int64)
    has_score = ~np.isnan(scores)
    # ascending: later (higher, then more severe) thresholds win, as in engine.threshold_decision
    for value, action in sorted(ruleset.thresholds, key=lambda va: (va[0], DECISION_SEVERITY[va[1]])):
        base = np.where(has_score & (scores >= value), DECISIONS.index(action), base)
    decision = base.copy()
    deciding = np.full(n, -1, dtype=np.int64)
    esc = np.full(n, -1, dtype=np.int64)
    esc_rule = np.full(n, -1, dtype=np.int64)
    block_rule = np.full(n, -1, dtype=np.int64)
    allow_rule = np.full(n, -1, dtype=np.int64)
    for idx, rule in enumerate(ruleset.rules):
        if rule.mode != "active":
            continue
        hit = cols[rule.name].matched & ~cols[rule.name].error
        if rule.action == "block":
            block_rule = np.where(hit & (block_rule < 0), idx, block_rule)
        elif rule.action == "allow":
            allow_rule = np.where(hit & (allow_rule < 0), idx, allow_rule)
        else:
            sev = DECISION_SEVERITY[rule.action]
            better = hit & (sev > esc)
            esc = np.where(better, sev, esc)
            esc_rule = np.where(better, idx, esc_rule)
    escalates = esc > _SEV[base]
    decision = np.where(escalates, esc, base)
    deciding = np.where(escalates, esc_rule, -1)
    decision = np.where(allow_rule >= 0, 0, decision)
    deciding = np.where(allow_rule >= 0, allow_rule, deciding)
    decision = np.where(block_rule >= 0, 3, decision)
    deciding = np.where(block_rule >= 0, block_rule, deciding)
    return Outcomes(decision, deciding, cols)


def _ratio(a: float, b: float) -> float | None:
    return None if b == 0 else round(a / b, 6)


def _first_trip(ts: np.ndarray, hit: np.ndarray, max_rate: float, window_s: int, min_orders: int) -> float | None:
    """Event time at which the kill-switch would have demoted a rule (sliding event-time window)."""
    if not hit.any():
        return None
    cm = np.concatenate([[0], np.cumsum(hit)])
    j = np.searchsorted(ts, ts - window_s, side="right")
    i = np.arange(len(ts))
    orders = i - j + 1
    matches = cm[i + 1] - cm[j]
    trip = (orders >= min_orders) & (matches > max_rate * orders) & hit
    k = np.flatnonzero(trip)
    return float(ts[k[0]]) if len(k) else None


def summarize(
    ruleset: Ruleset, out: Outcomes, fraud: np.ndarray, amount: np.ndarray, ts: np.ndarray, days: np.ndarray,
    day_labels: list[str],
) -> dict[str, Any]:
    n = len(fraud)
    total_fraud = int(fraud.sum())
    fraud_amount = float(amount[fraud].sum())
    dec = out.decision
    overall: dict[str, Any] = {"orders": n, "fraud_orders": total_fraud, "fraud_amount": round(fraud_amount, 2)}
    for i, d in enumerate(DECISIONS):
        c = int((dec == i).sum())
        overall[d] = c
        overall[f"{d}_rate"] = _ratio(c, n)
    for name, mask in (("blocked", dec == 3), ("flagged", dec > 0)):
        caught = mask & fraud
        overall[f"{name}_fraud"] = int(caught.sum())
        overall[f"{name}_fraud_amount"] = round(float(amount[caught].sum()), 2)
        overall[f"{name}_false_positives"] = int((mask & ~fraud).sum())
        overall[f"{name}_precision"] = _ratio(int(caught.sum()), int(mask.sum()))
        overall[f"{name}_recall"] = _ratio(int(caught.sum()), total_fraud)
        overall[f"{name}_amount_recall"] = _ratio(float(amount[caught].sum()), fraud_amount)
    rules = []
    for idx, rule in enumerate(ruleset.rules):
        rc = out.columns[rule.name]
        hit = rc.matched & ~rc.error
        caught = hit & fraud
        decided = out.deciding == idx
        ks = rule.kill_switch
        trip = _first_trip(ts, hit, ks.max_rate, ks.window_s, ks.min_orders) if ks and rule.mode == "active" else None
        rules.append({
            "name": rule.name, "action": rule.action, "mode": rule.mode, "priority": rule.priority,
            "vectorised": rc.vectorised,
            "matches": int(hit.sum()), "match_rate": _ratio(int(hit.sum()), n),
            "errors": int(rc.error.sum()), "decided": int(decided.sum()),
            "fraud_caught": int(caught.sum()), "fraud_caught_amount": round(float(amount[caught].sum()), 2),
            "false_positives": int((hit & ~fraud).sum()),
            "precision": _ratio(int(caught.sum()), int(hit.sum())), "recall": _ratio(int(caught.sum()), total_fraud),
            "would_block": int((decided & (dec == 3)).sum()), "would_review": int((decided & (dec == 1)).sum()),
            "would_challenge": int((decided & (dec == 2)).sum()),
            "kill_switch_trip": None if trip is None else dt.datetime.fromtimestamp(trip, dt.UTC).isoformat(),
        })
    daily = []
    for di, label in enumerate(day_labels):
        m = days == di
        row: dict[str, Any] = {"day": label, "orders": int(m.sum()), "fraud": int((m & fraud).sum())}
        for i, d in enumerate(DECISIONS):
            row[d] = int((m & (dec == i)).sum())
        daily.append(row)
    return {"version": ruleset.version, "name": ruleset.name, "overall": overall, "rules": rules, "daily": daily}


def _delta(new: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in new["overall"].items():
        ov = old["overall"].get(k)
        if isinstance(v, (int, float)) and isinstance(ov, (int, float)):
            out[k] = round(v - ov, 6)
    old_rules = {r["name"]: r for r in old["rules"]}
    new_rules = {r["name"]: r for r in new["rules"]}
    out["rules_added"] = sorted(set(new_rules) - set(old_rules))
    out["rules_removed"] = sorted(set(old_rules) - set(new_rules))
    out["rules_changed_matches"] = {
        n: new_rules[n]["matches"] - old_rules[n]["matches"]
        for n in sorted(set(new_rules) & set(old_rules)) if new_rules[n]["matches"] != old_rules[n]["matches"]
    }
    return out


@dataclass
class BacktestOptions:
    rules: Path
    orders: Path
    labels: Path
    baseline: Path | None = None
    model: str | None = None
    start: str | None = None
    end: str | None = None
    as_of: str | None = None
    out: Path | None = None
    no_model: bool = False
    features_path: Path | None = None
    models_dir: Path | None = None


def _load_rules(path: Path, features: FeatureSet) -> Ruleset:
    report = load_report(path, features)
    if report.ruleset is None:
        raise RulesetInvalid([str(p) for p in report.errors])
    return report.ruleset


def _scores(opts: BacktestOptions, features: FeatureSet, cols: dict[str, np.ndarray]) -> tuple[np.ndarray, str | None]:
    n = len(next(iter(cols.values()))) if cols else 0
    if opts.no_model:
        return np.full(n, np.nan), None
    version = opts.model
    if version is None and opts.models_dir is not None:
        from scoring.artifacts import champion_version

        version = champion_version(opts.models_dir)
    if version is None:
        return np.full(n, np.nan), None
    from scoring.exceptions import ScoringError
    from scoring.models import load_model

    try:
        model = load_model(opts.models_dir or Path("."), version)
    except ScoringError as exc:
        raise BacktestError(f"model {version}: {exc}") from None
    missing = [f for f in model.feature_names if f not in cols]
    if missing:
        raise BacktestError(f"model {version} needs features the definitions do not have: {', '.join(missing)}")
    matrix = np.column_stack([cols[f] for f in model.feature_names]).astype(np.float32)
    scores = np.empty(n, dtype=np.float64)
    for lo in range(0, n, 100_000):
        scores[lo : lo + 100_000] = model.predict(matrix[lo : lo + 100_000])
    return scores, model.version


def run_backtest(opts: BacktestOptions, progress: Any = None) -> dict[str, Any]:
    """Run a backtest and return the report (the JSON document)."""
    say = progress or (lambda msg: None)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    features = load_feature_set(opts.features_path)
    ruleset = _load_rules(opts.rules, features)
    baseline = _load_rules(opts.baseline, features) if opts.baseline else None
    history = load_history(opts.orders, opts.labels)
    timings["load"] = time.perf_counter() - t0
    say(f"loaded {len(history.orders)} orders, {len(history.labels)} labels"
        + (f" ({history.bad_lines} malformed lines skipped)" if history.bad_lines else ""))
    start, end = parse_time(opts.start, "--from"), parse_time(opts.end, "--to")
    label_times = [lb.label_time for lb in history.labels]
    as_of = parse_time(opts.as_of, "--as-of") or (max(label_times) if label_times else None)
    from feature_state.replay import replay

    t1 = time.perf_counter()
    rep = replay(features, history.orders, history.labels)
    timings["features"] = time.perf_counter() - t1
    orders = [history.orders[i] for i in rep.source_index.tolist()]
    ts = np.array([o.event_time.timestamp() for o in orders])
    keep = np.ones(len(orders), dtype=bool)
    if start is not None:
        keep &= ts >= start.timestamp()
    if end is not None:
        keep &= ts < end.timestamp()
    idx = np.flatnonzero(keep)
    if len(idx) == 0:
        raise BacktestError("no orders in the --from/--to range")
    sel = [orders[i] for i in idx.tolist()]
    cols = {name: arr[idx] for name, arr in rep.columns.items()}
    ts = ts[idx]
    t2 = time.perf_counter()
    scores, model_version = _scores(opts, features, cols)
    timings["scores"] = time.perf_counter() - t2
    say(f"features and scores for {len(sel)} orders"
        + (f" (model {model_version})" if model_version else " (no model)"))
    latest: dict[str, tuple[dt.datetime, str]] = {}
    for lb in history.labels:
        if as_of is not None and lb.label_time > as_of:
            continue
        prev = latest.get(lb.order_id)
        if prev is None or lb.label_time >= prev[0]:
            latest[lb.order_id] = (lb.label_time, lb.label)
    fraud = np.fromiter((latest.get(o.order_id, (None, ""))[1] == "fraud" for o in sel), dtype=bool, count=len(sel))
    amount = np.fromiter((o.amount for o in sel), dtype=np.float64, count=len(sel))
    day0 = math.floor(ts.min() / 86400)
    days = (np.floor(ts / 86400) - day0).astype(np.int64)
    day_labels = [dt.datetime.fromtimestamp((day0 + d) * 86400, dt.UTC).date().isoformat()
                  for d in range(int(days.max()) + 1)]
    t3 = time.perf_counter()
    main_cols = rule_columns(ruleset, sel, cols, scores, model=model_version)
    timings["rules"] = time.perf_counter() - t3
    main = summarize(ruleset, decide_columns(ruleset, main_cols, scores), fraud, amount, ts, days, day_labels)
    say(f"evaluated {len(ruleset.rules)} rules in {timings['rules']:.2f}s")
    doc: dict[str, Any] = {
        "generated_at": dt.datetime.now(dt.UTC).isoformat(),
        "rules_path": str(opts.rules),
        "orders_path": str(opts.orders),
        "labels_path": str(opts.labels),
        "from": sel[0].event_time.isoformat(),
        "to": sel[-1].event_time.isoformat(),
        "labels_as_of": as_of.isoformat() if as_of else None,
        "model_version": model_version,
        "malformed_lines": history.bad_lines,
        "malformed_examples": history.bad_examples,
        "ruleset": main,
    }
    if baseline is not None:
        t4 = time.perf_counter()
        base_cols = rule_columns(baseline, sel, cols, scores, model=model_version)
        timings["baseline_rules"] = time.perf_counter() - t4
        doc["baseline"] = summarize(baseline, decide_columns(baseline, base_cols, scores), fraud, amount, ts, days,
                                    day_labels)
        doc["delta"] = _delta(main, doc["baseline"])
    timings["total"] = time.perf_counter() - t0
    doc["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    return doc


def write_report(doc: dict[str, Any], out: Path) -> tuple[Path, Path]:
    from rules.report import render_html

    out.mkdir(parents=True, exist_ok=True)
    jp, hp = out / "backtest.json", out / "backtest.html"
    jp.write_text(json.dumps(doc, indent=2))
    hp.write_text(render_html(doc), encoding="utf-8")
    return jp, hp


def run_backtest_cli(opts: BacktestOptions) -> int:
    for p, what in ((opts.rules, "--rules"), (opts.orders, "--orders"), (opts.labels, "--labels")):
        if not p.exists():
            print(f"fraudscore rules backtest: {what} {p}: no such file or directory", file=sys.stderr)
            return 2
    try:
        doc = run_backtest(opts, progress=lambda m: print(m, file=sys.stderr))
    except RulesetInvalid as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    except BacktestError as exc:
        print(f"fraudscore rules backtest: {exc}", file=sys.stderr)
        return 2
    assert opts.out is not None
    jp, hp = write_report(doc, opts.out)
    o = doc["ruleset"]["overall"]
    print(f"{o['orders']} orders {doc['from'][:10]} … {doc['to'][:10]}, {o['fraud_orders']} fraud (labels as of "
          f"{(doc['labels_as_of'] or 'n/a')[:10]})")
    print(f"would block {o['block']} ({100 * (o['block_rate'] or 0):.2f}%), review {o['review']}, challenge "
          f"{o['challenge']}; fraud caught by blocks {o['blocked_fraud']} (recall {o['blocked_recall']}, precision "
          f"{o['blocked_precision']}), by any action {o['flagged_fraud']} (recall {o['flagged_recall']})")
    if "delta" in doc:
        d = doc["delta"]
        print(f"vs baseline: block {d['block']:+d}, review {d['review']:+d}, challenge {d['challenge']:+d}, "
              f"fraud caught {d['flagged_fraud']:+d}, false positives {d['flagged_false_positives']:+d}")
    print(f"report: {hp}\njson:   {jp}")
    return 0
