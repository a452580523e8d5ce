"""Model runtime benchmark: compiled (tl2cgen) vs ``xgboost.inplace_predict`` on one row, batch throughput,
and reason-code cost (tabulated TreeSHAP vs XGBoost ``pred_contribs``). Ratios are measured in one run,
interleaved in rounds, because the machine is shared and noisy.

    .venv/bin/python loadtests/model_bench.py [--trees 200] [--depth 6] [--rows 20000] [--rounds 5]

Writes ``reports/model_bench.json``. Targets (DESIGN.md): compiled ≥ 5× faster than inplace_predict on one
row, same predictions to 1e-6.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import xgboost as xgb  # noqa: E402

from scoring.models import RuntimeOptions, load_model  # noqa: E402
from scoring.runtimes.compiled import CompiledRuntime, parity_rows  # noqa: E402
from training.registry import register  # noqa: E402


def _quantiles(samples: list[float]) -> dict[str, float]:
    a = np.asarray(samples) * 1e6
    return {"p50_us": float(np.percentile(a, 50)), "p90_us": float(np.percentile(a, 90)),
            "p99_us": float(np.percentile(a, 99)), "mean_us": float(a.mean())}


def _time(fn, rows: np.ndarray, n: int) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for i in range(n):
        r = rows[i % len(rows) : i % len(rows) + 1]
        t0 = time.perf_counter()
        fn(r)
        out.append(time.perf_counter() - t0)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trees", type=int, default=200)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--features", type=int, default=16)
    ap.add_argument("--rows", type=int, default=20000, help="training rows")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved measurement rounds")
    ap.add_argument("--per-round", type=int, default=2000, help="single-row calls per runtime per round")
    ap.add_argument("--out", type=Path, default=Path("reports/model_bench.json"))
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.rows, args.features)).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = np.nan
    z = np.nan_to_num(x)
    y = (z[:, 0] + z[:, 1] * z[:, 2] - 0.5 * z[:, 3] + rng.normal(size=args.rows) * 0.7 > 1.0).astype(np.float32)
    print(f"training {args.trees} trees, depth {args.depth}, {args.features} features …", flush=True)
    booster = xgb.train({"objective": "binary:logistic", "max_depth": args.depth, "eta": 0.1, "nthread": 2,
                         "tree_method": "hist", "seed": 1}, xgb.DMatrix(x, label=y, missing=np.nan), args.trees)
    work = Path(tempfile.mkdtemp(prefix="model-bench-"))
    names = [f"f{i}" for i in range(args.features)]
    version = register(work / "models", booster, names, metrics={}, training_window={"from": "-", "to": "-"})
    t0 = time.perf_counter()
    rt = load_model(work / "models", version, None, RuntimeOptions(runtime="compiled", cache_dir=work / "compiled"))
    compile_s = time.perf_counter() - t0
    if not isinstance(rt, CompiledRuntime):
        print("compiled runtime unavailable (see log); nothing to compare", file=sys.stderr)
        return 1
    native = rt.native
    rows = parity_rows(native, n=2000, seed=9)
    # parity
    want = native.predict(rows)
    batch_diff = float(np.max(np.abs(rt.predict(rows) - want)))
    single_diff = float(np.max(np.abs(np.array([rt.predict(rows[i : i + 1])[0] for i in range(500)]) - want[:500])))
    # one row, interleaved rounds
    samples: dict[str, list[float]] = {"xgboost_inplace_predict": [], "compiled": [],
                                       "xgboost_pred_contribs": [], "treeshap_table": []}
    for _ in range(args.rounds):
        samples["xgboost_inplace_predict"] += _time(native.predict, rows, args.per_round)
        samples["compiled"] += _time(rt.predict, rows, args.per_round)
        samples["xgboost_pred_contribs"] += _time(native._xgb_contributions, rows, max(50, args.per_round // 20))
        samples["treeshap_table"] += _time(native.contributions, rows, max(200, args.per_round // 4))
    one_row = {k: _quantiles(v) for k, v in samples.items()}
    # batch throughput
    big = np.tile(rows, (50, 1))  # 100,000 rows
    native.booster.set_param({"nthread": os.cpu_count() or 1})
    t0 = time.perf_counter()
    native.booster.inplace_predict(big)
    xgb_rps = len(big) / (time.perf_counter() - t0)
    from scoring.runtimes.compiled import CompiledRuntime as _C

    batch_rt = _C(native, rt.library, batch_threads=os.cpu_count() or 1)
    t0 = time.perf_counter()
    batch_rt._predict_batch(big)  # the tl2cgen Predictor itself
    comp_rps = len(big) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    native.contributions(rows[:1000])
    shap_rps = 1000 / (time.perf_counter() - t0)

    speedup_p50 = one_row["xgboost_inplace_predict"]["p50_us"] / one_row["compiled"]["p50_us"]
    speedup_p99 = one_row["xgboost_inplace_predict"]["p99_us"] / one_row["compiled"]["p99_us"]
    reasons_speedup = one_row["xgboost_pred_contribs"]["p50_us"] / one_row["treeshap_table"]["p50_us"]
    report = {
        "model": {"trees": args.trees, "depth": args.depth, "features": args.features,
                  "treeshap_table_mib": round((native.treeshap.table_bytes if native.treeshap else 0) / 2**20, 1)},
        "compile_seconds": round(compile_s, 2),
        "parity_max_abs_diff": {"batch": batch_diff, "single_row": single_diff},
        "one_row": one_row,
        "speedup_compiled_vs_inplace_predict": {"p50": round(speedup_p50, 2), "p99": round(speedup_p99, 2)},
        "speedup_treeshap_vs_pred_contribs_p50": round(reasons_speedup, 2),
        "batch_rows_per_s": {"xgboost_inplace_predict": round(xgb_rps), "compiled_tl2cgen_predictor": round(comp_rps),
                             "treeshap_table_contributions": round(shap_rps)},
        "targets": {"compiled_speedup_min": 5.0, "parity_max": 1e-6,
                    "met": bool(speedup_p50 >= 5.0 and max(batch_diff, single_diff) <= 1e-6)},
        "command": "python loadtests/model_bench.py " + " ".join(sys.argv[1:]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(f"\ncompiled vs inplace_predict, one row: {speedup_p50:.1f}x (p50), {speedup_p99:.1f}x (p99); "
          f"parity {max(batch_diff, single_diff):.2g}; reasons {reasons_speedup:.1f}x faster than pred_contribs")
    return 0 if report["targets"]["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
