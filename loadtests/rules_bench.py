"""Rules engine benchmark: online per-order evaluation of a 50-rule ruleset, batch (vectorised) evaluation
over a million orders, list loading and list membership. Ratios are against baselines measured in the
same run, interleaved in rounds, because the machine is shared and noisy.

    .venv/bin/python loadtests/rules_bench.py [--rules 50] [--orders 1000000] [--rounds 5]

Writes ``reports/rules_bench.json``. Targets (issue 5): online p50 per order ≤ 100 µs for 50 rules;
50 rules over 1,000,000 orders ≤ 30 s; a 1,000,000-entry list loads in < 1 s.

Baselines:
* online — the walking skeleton's way: one ``cel.Context`` built from the nested order + all features
  per order, then the 50 conditions *as written* (``order.amount``, ``features.x``…);
* batch — the flattened CEL programs row by row (what the vectorised path replaces), timed on a
  sample and scaled to the full size.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cel  # noqa: E402
import msgspec  # noqa: E402
import numpy as np  # noqa: E402

from contracts.events import Order, Payment  # noqa: E402
from feature_state.definitions import load_feature_set  # noqa: E402
from rules.engine import evaluate, evaluate_batch, rule_columns  # noqa: E402
from rules.lists import load_list_file  # noqa: E402
from rules.ruleset import build_ruleset  # noqa: E402

COUNTRIES = ["FR", "DE", "US", "GB", "NL", "ES", "IT", "BR", "NG", "RO"]
DOMAINS = ["gmail.com", "outlook.com", "yahoo.com", "mailinator.com", "yopmail.com", "web.de", "orange.fr"]
CHANNELS = ["web", "app", "pos", "phone"]


def make_rules(n: int, features: list[str]) -> list[dict[str, Any]]:
    """``n`` realistic conditions: velocity, amounts, geo, lists, string tests, guards, shadow rules."""
    templates = [
        "features.{f} != null && features.{f} >= {k}.0 && order.amount < {a}.0",
        "has(order.email_domain) && order.email_domain in lists.disposable && order.amount > {a}.0",
        "has(order.ip_country) && has(order.billing_country) && order.ip_country != order.billing_country"
        " && order.amount > {a}.0",
        "features.{f} != null && features.{g} != null && features.{f} > {k}.0 * 0.5 && features.{g} >= 1.0",
        'has(order.channel) && order.channel == "{c}" && features.{f} != null && features.{f} >= {k}.0',
        "has(order.payment) && has(order.payment.card_country) && order.payment.card_country in "
        '["NG", "RO", "{cc}"] && order.amount > {a}.0',
        'has(order.email_domain) && order.email_domain.endsWith(".{tld}") && order.amount >= {a}.0',
        "score != null && score > 0.{s} && order.amount > {a}.0",
        "order.customer_id in lists.vip",
        "features.{f} != null && (features.{f} * 2.0 + order.amount) > {a}.0 && !(order.amount < 1.0)",
    ]
    rules = []
    for i in range(n):
        t = templates[i % len(templates)]
        when = t.format(f=features[i % len(features)], g=features[(i * 7 + 3) % len(features)], k=2 + i % 9,
                        a=50 + 37 * (i % 13), c=CHANNELS[i % 4], cc=COUNTRIES[i % 10], tld=["com", "fr", "de"][i % 3],
                        s=5 + i % 5)
        action = ["review", "challenge", "block", "review", "allow"][i % 5] if "lists.vip" not in when else "allow"
        rules.append({"name": f"rule_{i:02d}", "when": when, "action": action, "priority": i % 7,
                      "mode": "shadow" if i % 11 == 10 else "active"})
    return rules


def make_orders(n: int, rng: np.random.Generator) -> list[Order]:
    country = rng.integers(0, len(COUNTRIES), size=(n, 3))
    amount = np.round(rng.lognormal(3.5, 1.2, n), 2)
    dom = rng.integers(0, len(DOMAINS), n)
    chan = rng.integers(0, 4, n)
    presence = rng.random((n, 4)) < np.array([0.9, 0.8, 0.85, 0.95])
    out = []
    for i in range(n):
        pay = (Payment(card_fingerprint=f"tok{i % 50000}", card_country=COUNTRIES[country[i, 2]])
               if presence[i, 3] else None)
        out.append(Order(
            order_id=f"o{i}", event_time=T0,
            customer_id=f"c{i % 200000}", amount=float(amount[i]), currency="EUR",
            channel=CHANNELS[chan[i]] if presence[i, 0] else None,
            email_domain=DOMAINS[dom[i]] if presence[i, 1] else None,
            ip_country=COUNTRIES[country[i, 0]] if presence[i, 2] else None,
            billing_country=COUNTRIES[country[i, 1]], payment=pay,
        ))
    return out


T0 = dt.datetime(2025, 1, 1, 12, tzinfo=dt.UTC)


def make_features(n: int, names: list[str], rng: np.random.Generator) -> dict[str, np.ndarray]:
    cols = {}
    for j, name in enumerate(names):
        v = rng.poisson(1 + j % 5, n).astype(np.float64)
        v[rng.random(n) < 0.05] = np.nan
        cols[name] = v
    return cols


def quantiles(samples: list[float]) -> dict[str, float]:
    a = np.asarray(samples) * 1e6
    return {"p50_us": round(float(np.percentile(a, 50)), 2), "p90_us": round(float(np.percentile(a, 90)), 2),
            "p99_us": round(float(np.percentile(a, 99)), 2), "mean_us": round(float(a.mean()), 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rules", type=int, default=50)
    ap.add_argument("--orders", type=int, default=1_000_000, help="orders in the batch (backtest) run")
    ap.add_argument("--online-orders", type=int, default=2000, help="distinct orders for the online run")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved measurement rounds (online)")
    ap.add_argument("--row-sample", type=int, default=20000, help="orders timed row by row for the batch baseline")
    ap.add_argument("--list-size", type=int, default=1_000_000)
    ap.add_argument("--online-only", action="store_true", help="only the online (per order) measurements")
    ap.add_argument("--out", type=Path, default=Path("reports/rules_bench.json"))
    args = ap.parse_args()
    rng = np.random.default_rng(7)
    fs = load_feature_set(None)
    feature_names = [a.name for a in fs.aggregates]
    lists = {"disposable": ["mailinator.com", "yopmail.com", "guerrillamail.com"],
             "vip": [f"c{i}" for i in range(0, 200000, 97)]}
    spec = make_rules(args.rules, feature_names)
    ruleset = build_ruleset(spec, lists=lists, thresholds={"review": 0.5, "block": 0.9}, features=fs)
    report: dict[str, Any] = {"rules": len(ruleset.rules), "python": sys.version.split()[0]}
    print(f"ruleset: {len(ruleset.rules)} rules, {len(ruleset.bindings)} distinct values read per order")

    # ------------------------------------------------------------------ online, per order
    orders = make_orders(args.online_orders, rng)
    fcols = make_features(args.online_orders, fs.names, rng)
    frows = [{k: (None if np.isnan(v[i]) else float(v[i])) for k, v in fcols.items()}
             for i in range(args.online_orders)]
    scores = [float(s) for s in rng.random(args.online_orders)]
    naive_programs = [cel.compile(r["when"]) for r in spec]
    naive_lists = {k: v for k, v in lists.items()}

    def naive(i: int) -> None:
        ctx = cel.Context({"order": msgspec.to_builtins(orders[i]), "features": frows[i], "score": scores[i],
                           "model": None, "lists": naive_lists})
        for p in naive_programs:
            try:
                p.execute(ctx)
            except Exception:  # noqa: S110 - errors are part of the work
                pass

    def naive_no_lists(i: int) -> None:  # the same, without the lists in the context (list rules then error)
        ctx = cel.Context({"order": msgspec.to_builtins(orders[i]), "features": frows[i], "score": scores[i],
                           "model": None})
        for p in naive_programs:
            try:
                p.execute(ctx)
            except Exception:  # noqa: S110 - errors are part of the work
                pass

    def ours(i: int) -> None:
        evaluate(ruleset, orders[i], frows[i], scores[i])

    def ours_dict(i: int) -> None:
        evaluate(ruleset, msgspec.to_builtins(orders[i]), frows[i], scores[i])

    # same answers first
    for i in range(200):
        ctx = cel.Context({"order": msgspec.to_builtins(orders[i]), "features": frows[i], "score": scores[i],
                           "model": None, "lists": naive_lists})
        ref = []
        for r, p in zip(spec, naive_programs, strict=True):
            try:
                v = p.execute(ctx)
            except Exception:
                v = "error"
            ref.append((r["name"], v))
        out = evaluate(ruleset, orders[i], frows[i], scores[i])
        got = {m.name: ("error" if m.error else True) for m in out.matched}
        for name, v in ref:
            assert got.get(name, False) == v, (name, v, got.get(name))
    timings: dict[str, list[float]] = {"naive": [], "naive_no_lists": [], "ours": [], "ours_dict": []}
    for _ in range(args.rounds):
        for label, fn in (("naive", naive), ("naive_no_lists", naive_no_lists), ("ours", ours),
                          ("ours_dict", ours_dict)):
            for i in range(args.online_orders):
                t0 = time.perf_counter()
                fn(i)
                timings[label].append(time.perf_counter() - t0)
    online = {k: quantiles(v) for k, v in timings.items()}
    online["speedup_p50_vs_naive"] = round(online["naive"]["p50_us"] / online["ours"]["p50_us"], 2)
    online["speedup_p50_vs_naive_no_lists"] = round(online["naive_no_lists"]["p50_us"] / online["ours"]["p50_us"], 2)
    report["online"] = online
    print(f"online, {len(ruleset.rules)} rules, per order: ours p50 {online['ours']['p50_us']} µs "
          f"(p99 {online['ours']['p99_us']}), dict input p50 {online['ours_dict']['p50_us']} µs; "
          f"naive nested context p50 {online['naive']['p50_us']} µs → {online['speedup_p50_vs_naive']}× faster; "
          f"naive without lists p50 {online['naive_no_lists']['p50_us']} µs → "
          f"{online['speedup_p50_vs_naive_no_lists']}× (target p50 ≤ 100 µs)")

    # stream-sized batches (2000 orders)
    t0 = time.perf_counter()
    reps = 3
    for _ in range(reps):
        evaluate_batch(ruleset, orders, frows, scores)
    per_order_batch = (time.perf_counter() - t0) / (reps * len(orders)) * 1e6
    report["stream_batch_2000_us_per_order"] = round(per_order_batch, 2)
    print(f"evaluate_batch, 2000-order batches: {per_order_batch:.2f} µs/order "
          f"({online['ours']['p50_us'] / per_order_batch:.1f}× less than one-by-one p50)")

    if args.online_only:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")
        return 0

    # ------------------------------------------------------------------ batch, a million orders
    t0 = time.perf_counter()
    big_orders = make_orders(args.orders, rng)
    big_features = make_features(args.orders, fs.names, rng)
    big_scores = rng.random(args.orders)
    gen_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    cols = rule_columns(ruleset, big_orders, big_features, big_scores)
    vec_s = time.perf_counter() - t0
    vectorised = sum(1 for c in cols.values() if c.vectorised)
    sample = args.row_sample
    srows = [{k: (None if np.isnan(v[i]) else float(v[i])) for k, v in big_features.items()} for i in range(sample)]
    t0 = time.perf_counter()
    for i in range(sample):
        evaluate(ruleset, big_orders[i], srows[i], float(big_scores[i]))
    row_s = (time.perf_counter() - t0) * args.orders / sample
    for i in range(0, sample, 997):  # spot-check equality on the sample
        out = evaluate(ruleset, big_orders[i], srows[i], float(big_scores[i]))
        got = {m.name: m.error is None for m in out.matched}
        for name, c in cols.items():
            assert (c.matched[i], c.error[i]) == (got.get(name) is True, got.get(name) is False), (name, i)
    report["batch"] = {"orders": args.orders, "rules": len(ruleset.rules), "vectorised_rules": vectorised,
                       "seconds": round(vec_s, 2), "row_by_row_seconds_estimated": round(row_s, 1),
                       "speedup": round(row_s / vec_s, 1), "generate_seconds": round(gen_s, 1)}
    print(f"batch: {len(ruleset.rules)} rules over {args.orders:,} orders in {vec_s:.1f}s ({vectorised} vectorised); "
          f"row by row would take ~{row_s:.0f}s → {row_s / vec_s:.1f}× (target ≤ 30 s)")

    # ------------------------------------------------------------------ lists
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "big.txt"
        p.write_text("\n".join(f"domain{i}.example" for i in range(args.list_size)) + "\n")
        t0 = time.perf_counter()
        values, _ = load_list_file(p)
        load_s = time.perf_counter() - t0
        small = build_ruleset([{"name": "l", "when": "has(order.email_domain) && order.email_domain in lists.d"}],
                              lists={"d": ["a.com", "b.com"]})
        big = build_ruleset([{"name": "l", "when": "has(order.email_domain) && order.email_domain in lists.d"}],
                            lists={"d": list(values)})
        lt: dict[str, list[float]] = {"small": [], "big": []}
        for _ in range(args.rounds):
            for label, rs in (("small", small), ("big", big)):
                for i in range(1000):
                    t0 = time.perf_counter()
                    evaluate(rs, orders[i % len(orders)], {}, None)
                    lt[label].append(time.perf_counter() - t0)
    lq = {k: quantiles(v) for k, v in lt.items()}
    report["lists"] = {"entries": args.list_size, "load_seconds": round(load_s, 3),
                       "membership_p50_us_2_entries": lq["small"]["p50_us"],
                       "membership_p50_us_1m_entries": lq["big"]["p50_us"],
                       "ratio_1m_vs_2": round(lq["big"]["p50_us"] / lq["small"]["p50_us"], 2)}
    print(f"lists: {args.list_size:,} entries loaded in {load_s:.2f}s (target < 1 s); a rule testing membership: "
          f"p50 {lq['small']['p50_us']} µs with 2 entries, {lq['big']['p50_us']} µs with {args.list_size:,} "
          f"→ ratio {report['lists']['ratio_1m_vs_2']} (1.0 = independent of list size)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
