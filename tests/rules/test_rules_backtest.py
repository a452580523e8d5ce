"""Backtest on simulated history: counts equal a direct, row-by-row recomputation; the HTML report
renders in headless Chromium; diff and test commands."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from contracts.events import Order
from feature_state.definitions import load_feature_set
from feature_state.replay import replay
from fraudscore.cli import main
from rules.backtest import BacktestOptions, load_history, run_backtest, write_report
from rules.diff import diff_rulesets
from rules.engine import evaluate
from rules.ruleset import load_ruleset
from tests.services import missing

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim")
    subprocess.run(
        [sys.executable, "-m", "fraudscore", "--data-dir", str(out / "data"), "simulate", "--days", "6",
         "--orders-per-day", "1500", "--seed", "7", "--fraud-rate", "0.03", "--to", "jsonl", "--out", str(out),
         "--quiet"],
        check=True, timeout=240, env={**os.environ, "PYTHONPATH": str(Path.cwd())},
    )
    return out


@pytest.fixture(scope="module")
def model_dir(history: Path) -> tuple[Path, str]:
    from training.train import train_and_register

    h = load_history(history / "orders.jsonl", history / "labels.jsonl")
    models = history / "models"
    version = train_and_register(h.orders, h.labels, load_feature_set(None), models, rounds=15)
    return models, version


TIGHT = """\
ruleset: tight
version: 9
thresholds: {review: 0.3, block: 0.8}
lists:
  disposable: [mailinator.com, yopmail.com, guerrillamail.com, tempmail.dev, sharklasers.com]
rules:
  - name: small_amount_burst
    when: features.card_order_count_1h != null && features.card_order_count_1h >= 3.0 && order.amount < 20.0
    action: block
    kill_switch: {max_rate: 0.0005, window: 1h, min_orders: 50}
  - name: disposable
    when: has(order.email_domain) && order.email_domain in lists.disposable
    action: challenge
  - name: foreign_ip
    when: has(order.ip_country) && has(order.billing_country) && order.ip_country != order.billing_country
    action: review
    mode: shadow
  - name: night_big
    when: timestamp(order.event_time).getHours() < 5 && order.amount > 300.0
    action: review
"""


def direct(ruleset: Any, orders: list[Order], rows: list[dict[str, Any]], scores: list[float | None],
           fraud: set[str], model: str | None) -> dict[str, Any]:
    """The straightforward recomputation: one evaluate() per order, counted in Python."""
    decisions: Counter[str] = Counter()
    matches: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    caught: Counter[str] = Counter()
    blocked_fraud = flagged_fraud = 0
    blocked_amount = 0.0
    for o, f, s in zip(orders, rows, scores, strict=True):
        out = evaluate(ruleset, o, f, s, model=model)
        decisions[out.decision] += 1
        for m in out.matched:
            if m.error:
                errors[m.name] += 1
            else:
                matches[m.name] += 1
                caught[m.name] += o.order_id in fraud
        if o.order_id in fraud:
            blocked_fraud += out.decision == "block"
            blocked_amount += o.amount if out.decision == "block" else 0.0
            flagged_fraud += out.decision != "allow"
    return {"decisions": decisions, "matches": matches, "errors": errors, "caught": caught,
            "blocked_fraud": blocked_fraud, "flagged_fraud": flagged_fraud, "blocked_amount": blocked_amount}


def test_backtest_counts_match_a_direct_recomputation(history: Path, model_dir: tuple[Path, str], tmp_path: Path):
    rules = tmp_path / "tight"
    rules.mkdir()
    (rules / "r.yaml").write_text(TIGHT)
    models, version = model_dir
    opts = BacktestOptions(rules=rules, baseline=Path("rules/examples"), orders=history / "orders.jsonl",
                           labels=history / "labels.jsonl", model=version, models_dir=models,
                           start="2025-01-02", end="2025-01-06")
    doc = run_backtest(opts)
    assert doc["model_version"] == version
    # the same history, recomputed order by order
    fs = load_feature_set(None)
    h = load_history(opts.orders, opts.labels)
    rep = replay(fs, h.orders, h.labels)
    ordered = [h.orders[i] for i in rep.source_index.tolist()]
    rows_all = rep.rows()
    keep = [i for i, o in enumerate(ordered) if "2025-01-02" <= o.event_time.date().isoformat() < "2025-01-06"]
    orders = [ordered[i] for i in keep]
    rows = [rows_all[i] for i in keep]
    from scoring.models import load_model

    model = load_model(models, version)
    matrix = np.array([[np.nan if r[n] is None else r[n] for n in model.feature_names] for r in rows], dtype=np.float32)
    scores = [float(s) for s in model.predict(matrix)]
    latest: dict[str, tuple[Any, str]] = {}
    for lb in h.labels:
        if lb.order_id not in latest or lb.label_time >= latest[lb.order_id][0]:
            latest[lb.order_id] = (lb.label_time, lb.label)
    fraud = {k for k, (_, v) in latest.items() if v == "fraud"}
    for label, ruleset_path, key in (("proposed", rules, "ruleset"), ("baseline", Path("rules/examples"), "baseline")):
        rs = load_ruleset(ruleset_path)
        want = direct(rs, orders, rows, scores, fraud, version)
        got = doc[key]
        o = got["overall"]
        assert o["orders"] == len(orders), label
        assert {d: o[d] for d in ("allow", "review", "challenge", "block")} == \
            {d: want["decisions"][d] for d in ("allow", "review", "challenge", "block")}, label
        assert o["fraud_orders"] == sum(1 for x in orders if x.order_id in fraud)
        assert o["blocked_fraud"] == want["blocked_fraud"] and o["flagged_fraud"] == want["flagged_fraud"], label
        assert o["blocked_fraud_amount"] == pytest.approx(want["blocked_amount"], abs=0.01)
        for r in got["rules"]:
            assert r["matches"] == want["matches"][r["name"]], (label, r["name"])
            assert r["errors"] == want["errors"][r["name"]], (label, r["name"])
            assert r["fraud_caught"] == want["caught"][r["name"]], (label, r["name"])
    assert sum(doc["ruleset"]["overall"][d] for d in ("review", "challenge", "block")) > 0, "a test that sees no action"
    rules_by_name = {r["name"]: r for r in doc["ruleset"]["rules"]}
    assert rules_by_name["small_amount_burst"]["kill_switch_trip"] is not None
    assert rules_by_name["night_big"]["vectorised"] is False and rules_by_name["disposable"]["vectorised"] is True
    delta = doc["delta"]
    assert delta["block"] == doc["ruleset"]["overall"]["block"] - doc["baseline"]["overall"]["block"]
    assert "small_amount_burst" in delta["rules_added"] and "blocked_card" in delta["rules_removed"]


def test_report_renders_in_headless_chromium(history: Path, tmp_path: Path):
    if not Path(CHROMIUM).exists():
        missing("chromium (scripts/install_chromium.sh)")
    doc = run_backtest(BacktestOptions(rules=Path("rules/examples"), baseline=Path("rules/examples"),
                                       orders=history / "orders.jsonl", labels=history / "labels.jsonl",
                                       no_model=True))
    doc["ruleset"]["rules"][0]["name"] = "</script><script>document.title='pwned'</script>"
    _, html_path = write_report(doc, tmp_path / "report")
    text = html_path.read_text()
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text
    profile = tmp_path / "chrome-profile"
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--no-first-run", "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
            "--virtual-time-budget=5000"]
    dom = subprocess.run([*args, "--dump-dom", html_path.as_uri()], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    assert 'data-rendered="true"' in dom, "the page's script did not finish"
    for chart in ("chart-decisions", "chart-daily", "chart-rules"):
        start = dom.index(f'data-chart="{chart}"')
        svg = dom[start: dom.index("</svg>", start)]
        assert svg.count("<rect") >= 3, (chart, svg[:300])
    assert "pwned" not in dom.split("<title>")[1].split("</title>")[0]
    subprocess.run([*args, f"--screenshot={tmp_path / 'report.png'}", "--window-size=1280,1600",
                    html_path.as_uri()], capture_output=True, timeout=120, check=True)
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_backtest_cli_writes_json_and_html_and_reports_bad_lines(history: Path, tmp_path: Path, capsys):
    orders = tmp_path / "orders.jsonl"
    orders.write_bytes((history / "orders.jsonl").read_bytes() + b'{"order_id": 1}\nnot json\n')
    out = tmp_path / "bt"
    code = main(["--data-dir", str(tmp_path / "d"), "rules", "backtest", "--rules", "rules/examples",
                 "--orders", str(orders), "--labels", str(history / "labels.jsonl"), "--out", str(out), "--no-model"])
    assert code == 0
    doc = json.loads((out / "backtest.json").read_text())
    assert doc["malformed_lines"] >= 2 and any(":" in e for e in doc["malformed_examples"])
    assert (out / "backtest.html").read_text().startswith("<!DOCTYPE html>")
    assert "report:" in capsys.readouterr().out
    assert main(["--data-dir", str(tmp_path / "d"), "rules", "backtest", "--rules", "rules/examples",
                 "--orders", str(tmp_path / "none.jsonl"), "--labels", str(history / "labels.jsonl")]) == 2
    assert main(["--data-dir", str(tmp_path / "d"), "rules", "backtest", "--rules", "rules/examples",
                 "--orders", str(orders), "--labels", str(history / "labels.jsonl"), "--from", "yesterday"]) == 2


def test_diff_in_words(tmp_path: Path, capsys):
    new = tmp_path / "new"
    shutil.copytree("rules/examples", new)
    f = new / "velocity.yaml"
    f.write_text(f.read_text().replace("features.customer_order_count_1h >= 8.0", "features.customer_order_count_1h >= 6.0")  # noqa: E501
                 .replace("    action: challenge\n    priority: 55", "    action: block\n    priority: 55"))
    g = new / "card_testing.yaml"
    g.write_text(g.read_text().replace("    mode: shadow\n", ""))
    h = new / "00-ruleset.yaml"
    h.write_text(h.read_text().replace("review: 0.5", "review: 0.4"))
    (new / "lists" / "vip_customers.txt").write_text("cust_vip_0001\ncust_vip_0003\n")
    lines = diff_rulesets(load_ruleset("rules/examples"), load_ruleset(new))
    text = "\n".join(lines)
    assert "rule customer_velocity_spike: condition changed from" in text and ">= 6.0" in text
    assert "rule ip_velocity_spike: action changed from challenge to block" in text
    assert "rule card_testing_many_cards_one_device: promoted from shadow to active" in text
    assert "threshold review moved from 0.5 to 0.4 (more orders reach it)" in text
    assert "list vip_customers: 1 entries added, 1 removed (now 2)" in text
    assert main(["--data-dir", str(tmp_path / "d"), "rules", "diff", "rules/examples", str(new)]) == 1
    assert "promoted from shadow to active" in capsys.readouterr().out
    assert main(["--data-dir", str(tmp_path / "d"), "rules", "diff", "rules/examples", "rules/examples"]) == 0


def test_inline_tests_command(tmp_path: Path, capsys):
    assert main(["--data-dir", str(tmp_path / "d"), "rules", "test", "rules/examples"]) == 0
    out = capsys.readouterr().out
    assert "27 passed, 0 failed" in out
    broken = tmp_path / "broken"
    shutil.copytree("rules/examples", broken)
    f = broken / "card_testing.yaml"
    f.write_text(f.read_text().replace("features: {card_order_count_1h: 6}\n        expect: block",
                                       "features: {card_order_count_1h: 2}\n        expect: block", 1))
    assert main(["--data-dir", str(tmp_path / "d"), "rules", "test", str(broken)]) == 1
    out = capsys.readouterr().out
    assert "card_testing.yaml:14::card_testing_burst::sixth small order in an hour" in out
    assert "expected block, got allow" in out and "1 failed" in out
