"""``fraudscore rules check | test | backtest | diff`` — the analyst's commands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from contracts.config import Settings

CHECK_EPILOG = """\
examples:
  fraudscore rules check rules/examples
  fraudscore rules check my-rules/ --strict            # warnings fail too (use in CI)
  fraudscore rules check my-rules/ --format json       # machine-readable findings

Every problem is printed as FILE:LINE:COL: error|warning: message. Errors refuse the ruleset (a
running scorer keeps the last good one); warnings point at rules that are probably wrong: parts that
are always true or false, unreachable rules, optional fields used without has(), nullable features
used without `!= null`. Exit code: 0 valid, 1 problems found, 2 usage error.
"""

TEST_EPILOG = """\
examples:
  fraudscore rules test rules/examples
  fraudscore rules test my-rules/ -k card_testing -v

Each rule's inline `tests` run against the whole ruleset (precedence included). Features a test does
not give are those of the same order with no history. Exit code: 0 all passed, 1 failures or an
invalid ruleset, 2 usage error.
"""

BACKTEST_EPILOG = """\
examples:
  fraudscore simulate --days 60 --to jsonl --out data/
  fraudscore rules backtest --rules my-rules/ --baseline rules/examples \\
      --orders data/orders.jsonl --labels data/labels.jsonl --out reports/backtest
  fraudscore rules backtest --rules my-rules/ --orders data/orders.jsonl --labels data/labels.jsonl \\
      --model m20240101T000000-abcd1234 --from 2024-03-01 --to 2024-04-01

Replays the orders in event-time order with point-in-time features (feature_state replay over the
whole history, so windows that start before --from are right) and, when a model is given (or the
registry has a champion), its scores. Labels count only if known by --as-of (default: the last label
in the file) — "matured". Writes backtest.json and a self-contained backtest.html (open it in a
browser). Exit code: 0 done, 1 the rules are invalid, 2 usage error.
"""

DIFF_EPILOG = """\
examples:
  fraudscore rules diff rules/examples my-rules/
  fraudscore rules diff old/ new/ --orders data/orders.jsonl --labels data/labels.jsonl

Lists, in words, rules added, removed and changed (condition, action, mode, priority, kill-switch),
threshold and list changes. With history, adds the backtest delta of NEW against OLD. Exit code: 0 no
differences, 1 differences found, 2 usage error.
"""


def _features(settings: Settings, path: Path | None) -> Any:
    from feature_state.definitions import load_feature_set

    return load_feature_set(path or settings.feature_store.definitions)


def _cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    from rules.ruleset import load_report

    if not args.dir.exists():
        print(f"fraudscore rules check: {args.dir}: no such file or directory", file=sys.stderr)
        return 2
    report = load_report(args.dir, _features(settings, args.features))
    fail = bool(report.errors) or (args.strict and bool(report.warnings))
    if args.format == "json":
        print(json.dumps({
            "valid": not report.errors,
            "version": report.ruleset.version if report.ruleset else None,
            "rules": len(report.ruleset.rules) if report.ruleset else 0,
            "problems": [vars(p) for p in report.problems],
        }, indent=2))
        return 1 if fail else 0
    for p in report.problems:
        print(p, file=sys.stderr if p.severity == "error" else sys.stdout)
    rs = report.ruleset
    if rs is not None:
        active = sum(1 for r in rs.rules if r.mode == "active")
        print(f"{args.dir}: ruleset {rs.name} version {rs.version}: {len(rs.rules)} rules ({active} active, "
              f"{len(rs.rules) - active} shadow), {len(rs.lists)} lists, {len(report.warnings)} warnings")
    else:
        print(f"{args.dir}: {len(report.errors)} errors, {len(report.warnings)} warnings — ruleset refused",
              file=sys.stderr)
    return 1 if fail else 0


def _cmd_test(args: argparse.Namespace, settings: Settings) -> int:
    from rules.ruleset import load_report
    from rules.testing import run_tests

    if not args.dir.exists():
        print(f"fraudscore rules test: {args.dir}: no such file or directory", file=sys.stderr)
        return 2
    features = _features(settings, args.features)
    report = load_report(args.dir, features)
    if report.ruleset is None:
        for p in report.errors:
            print(p, file=sys.stderr)
        print(f"{args.dir}: the ruleset is invalid; fix the errors above (fraudscore rules check)", file=sys.stderr)
        return 1
    run = run_tests(report.ruleset, features, args.k)
    print(f"collected {len(run.results)} rule tests from {args.dir} "
          f"({len(report.ruleset.rules)} rules, version {report.ruleset.version})")
    for r in run.results:
        if args.verbose or not r.passed:
            print(f"{r.id} {'PASSED' if r.passed else 'FAILED'}")
    if not args.verbose:
        print("".join("." if r.passed else "F" for r in run.results))
    if run.failed:
        print("\n" + "=" * 30 + " FAILURES " + "=" * 30)
        for r in run.failed:
            print(f"{r.id}\n    {r.message}")
    if run.untested and args.verbose:
        print(f"rules without tests: {', '.join(run.untested)}")
    passed = len(run.results) - len(run.failed)
    summary = f"{passed} passed, {len(run.failed)} failed"
    print(f"{'=' * 20} {summary} in {run.seconds:.2f}s {'=' * 20}")
    return 1 if run.failed else 0


def _cmd_backtest(args: argparse.Namespace, settings: Settings) -> int:
    from rules.backtest import BacktestOptions, run_backtest_cli

    opts = BacktestOptions(
        rules=args.rules, baseline=args.baseline, orders=args.orders, labels=args.labels, model=args.model,
        start=args.start, end=args.end, as_of=args.as_of, out=args.out or settings.data_dir / "reports" / "backtest",
        no_model=args.no_model, features_path=args.features or settings.feature_store.definitions,
        models_dir=settings.models_dir,
    )
    return run_backtest_cli(opts)


def _cmd_diff(args: argparse.Namespace, settings: Settings) -> int:
    from rules.diff import run_diff_cli

    return run_diff_cli(args.old, args.new, _features(settings, args.features), orders=args.orders,
                        labels=args.labels, models_dir=settings.models_dir, model=args.model,
                        features_path=args.features or settings.feature_store.definitions)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "rules",
        help="check, test, backtest and diff analyst rule files (YAML + CEL)",
        description="Work with rule files: YAML with CEL conditions over order, features, score, model and "
        "lists. See docs/rules.md for the format, the decision precedence and the kill-switch.",
        epilog="examples:\n  fraudscore rules check rules/examples\n  fraudscore rules test rules/examples\n"
        "  fraudscore rules backtest --rules my-rules --orders o.jsonl --labels l.jsonl\n"
        "  fraudscore rules diff rules/examples my-rules",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rsub = p.add_subparsers(dest="rules_cmd", required=True, metavar="{check,test,backtest,diff}")

    cp = rsub.add_parser("check", help="parse, type-check and lint every rule file (file:line:col messages)",
                         description="Parse every rule file, type-check every condition against the order schema "
                         "and the feature definitions, and lint the ruleset.",
                         epilog=CHECK_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    cp.add_argument("dir", type=Path, help="rules directory (or one rule file)")
    cp.add_argument("--strict", action="store_true", help="fail on warnings too")
    cp.add_argument("--format", choices=("text", "json"), default="text", help="output format (default text)")
    cp.add_argument("--features", type=Path, help="feature definitions YAML (default: settings, else packaged)")
    cp.set_defaults(handler=_cmd_check)

    tp = rsub.add_parser("test", help="run every rule's inline tests, pytest-style",
                         description="Run the inline tests of every rule against the whole ruleset.",
                         epilog=TEST_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    tp.add_argument("dir", type=Path, help="rules directory (or one rule file)")
    tp.add_argument("-k", metavar="NAME", help="only rules whose name contains NAME")
    tp.add_argument("-v", "--verbose", action="store_true", help="one line per test")
    tp.add_argument("--features", type=Path, help="feature definitions YAML (default: settings, else packaged)")
    tp.set_defaults(handler=_cmd_test)

    bp = rsub.add_parser("backtest", help="replay history through a ruleset; JSON + HTML report",
                         description="What would these rules have done to past orders? Per rule and overall: "
                         "matches, would-block/review/challenge counts and rates, fraud caught (count and amount) "
                         "on matured labels, false positives, precision, recall, and the delta against a baseline.",
                         epilog=BACKTEST_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    bp.add_argument("--rules", type=Path, required=True, help="rules directory to evaluate")
    bp.add_argument("--baseline", type=Path, help="rules directory to compare with (e.g. what serves today)")
    bp.add_argument("--orders", type=Path, required=True, help="orders JSONL (fraudscore simulate --to jsonl)")
    bp.add_argument("--labels", type=Path, required=True, help="labels JSONL")
    bp.add_argument("--model", help="model version for scores (default: the registry's champion, if any)")
    bp.add_argument("--no-model", action="store_true", help="no scores: rules and thresholds see score = null")
    bp.add_argument("--from", dest="start", help="first event time to evaluate (RFC 3339 or YYYY-MM-DD)")
    bp.add_argument("--to", dest="end", help="evaluate orders before this event time")
    bp.add_argument("--as-of", dest="as_of", help="labels known by this time count (default: latest label time)")
    bp.add_argument("--out", type=Path, help="output directory (default <data_dir>/reports/backtest)")
    bp.add_argument("--features", type=Path, help="feature definitions YAML (default: settings, else packaged)")
    bp.set_defaults(handler=_cmd_backtest)

    dp = rsub.add_parser("diff", help="what changed between two rulesets, in words (+ backtest delta)",
                         description="Compare two rulesets: added, removed and changed rules, thresholds and lists.",
                         epilog=DIFF_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    dp.add_argument("old", type=Path, help="the ruleset serving today")
    dp.add_argument("new", type=Path, help="the proposed ruleset")
    dp.add_argument("--orders", type=Path, help="orders JSONL: add the backtest delta")
    dp.add_argument("--labels", type=Path, help="labels JSONL (with --orders)")
    dp.add_argument("--model", help="model version for the backtest scores")
    dp.add_argument("--features", type=Path, help="feature definitions YAML (default: settings, else packaged)")
    dp.set_defaults(handler=_cmd_diff)
