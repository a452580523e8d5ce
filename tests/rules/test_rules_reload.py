"""Hot reload (valid change swaps, invalid change refused while the old keeps serving), version pointer,
and the kill-switch demoting a rule that matches too much."""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import REGISTRY

from contracts.events import RuleMatch
from rules.engine import evaluate
from rules.killswitch import KillSwitchEvent
from rules.reload import RulesHolder

ORDER = {"order_id": "o1", "event_time": "2024-01-15T12:00:00+00:00", "customer_id": "c1", "amount": 50.0,
         "currency": "EUR"}

V1 = """\
ruleset: live
version: {version}
thresholds: {{review: 0.5}}
rules:
  - name: big
    when: order.amount > {limit}
    action: {action}
"""


def write(path: Path, text: str) -> None:
    """Replace a file and make sure its mtime moves (the watcher compares size + mtime)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def metric(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def test_valid_change_swaps_invalid_change_is_refused_and_old_keeps_serving(tmp_path: Path):
    d = tmp_path / "rules"
    d.mkdir()
    f = d / "rules.yaml"
    write(f, V1.format(version=1, limit="100.0", action="block"))
    holder = RulesHolder(d)
    assert holder.refresh() is True
    v1 = holder.current
    assert v1 is not None and v1.version.startswith("1-")
    assert evaluate(v1, ORDER, {}, None).decision == "allow"
    assert holder.refresh() is False  # nothing changed

    write(f, V1.format(version=2, limit="10.0", action="block"))
    assert holder.refresh() is True
    v2 = holder.current
    assert v2 is not None and v2.version.startswith("2-") and v2.version != v1.version
    assert evaluate(v2, ORDER, {}, None).decision == "block"

    refused_before = metric("fraudscore_reload_refused_total", {"kind": "rules"})
    write(f, V1.format(version=3, limit="'ten'", action="block"))  # double > string: a type error
    assert holder.refresh() is False
    assert holder.current is v2, "an invalid change must never replace the serving ruleset"
    assert holder.last_error is not None and "rules.yaml:6:" in holder.last_error
    assert "cannot compare order.amount (double)" in holder.last_error
    assert metric("fraudscore_reload_refused_total", {"kind": "rules"}) == refused_before + 1
    assert metric("fraudscore_rules_invalid") == 1.0
    assert holder.status()["last_error"] == holder.last_error

    write(f, "ruleset: live\nrules: [unclosed\n")  # not even YAML
    assert holder.refresh() is False and holder.current is v2

    write(f, V1.format(version=4, limit="10.0", action="review"))
    assert holder.refresh() is True
    assert holder.current is not None and holder.current.version.startswith("4-")
    assert holder.last_error is None and metric("fraudscore_rules_invalid") == 0.0


def test_a_broken_list_file_is_refused_too(tmp_path: Path):
    d = tmp_path / "rules"
    d.mkdir()
    (d / "l.txt").write_text("a\nb\n")
    write(d / "rules.yaml", "ruleset: t\nlists:\n  l: {file: l.txt}\nrules:\n  - name: r\n"
          "    when: order.customer_id in lists.l\n    action: review\n")
    holder = RulesHolder(d)
    assert holder.refresh()
    good = holder.current
    (d / "l.txt").write_bytes(b"\xff\xfe broken")
    assert holder.refresh() is False and holder.current is good
    assert "not UTF-8" in (holder.last_error or "")


def test_version_pointer_deploys_and_rolls_back(tmp_path: Path):
    root = tmp_path / "rules"
    for v, action in (("v1", "review"), ("v2", "block")):
        (root / v).mkdir(parents=True)
        write(root / v / "rules.yaml", V1.format(version=v[1], limit="10.0", action=action))
    write(root / "CURRENT", "v1\n")
    holder = RulesHolder(root)
    assert holder.refresh()
    assert evaluate(holder.current, ORDER, {}, None).decision == "review"  # type: ignore[arg-type]
    assert holder.status()["path"] == str((root / "v1").resolve())
    write(root / "CURRENT", "v2\n")
    assert holder.refresh()
    assert evaluate(holder.current, ORDER, {}, None).decision == "block"  # type: ignore[arg-type]
    write(root / "CURRENT", "../../etc\n")
    assert holder.refresh() is False and "must name a subdirectory" in (holder.last_error or "")
    write(root / "CURRENT", "v1\n")
    assert holder.refresh()
    assert evaluate(holder.current, ORDER, {}, None).decision == "review"  # type: ignore[arg-type]


KILL = """\
ruleset: ks
version: 1
kill_switch: {max_rate: 0.2, window: 10m, min_orders: 20}
rules:
  - name: noisy_block
    when: order.amount > 40.0
    action: block
  - name: rare_review
    when: order.amount > 1000.0
    action: review
  - name: vip
    when: order.customer_id == "vip"
    action: allow
"""


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_kill_switch_demotes_a_rule_over_its_ceiling_and_emits_metric_and_event(tmp_path: Path, caplog):
    d = tmp_path / "rules"
    d.mkdir()
    write(d / "rules.yaml", KILL)
    events: list[KillSwitchEvent] = []
    clock = Clock()
    holder = RulesHolder(d, kill_switch_sink=events.append, clock=clock)
    assert holder.refresh()
    small = {**ORDER, "amount": 5.0}
    for _ in range(19):  # 19 orders, none matching: under min_orders anyway
        assert evaluate(holder.current, small, {}, None).decision == "allow"  # type: ignore[arg-type]
        clock.t += 1
    decisions = []
    for _ in range(6):  # the 5th match makes 5/24 > 20%
        decisions.append(evaluate(holder.current, ORDER, {}, None).decision)  # type: ignore[arg-type]
        clock.t += 1
    assert decisions[:5] == ["block"] * 5, decisions
    assert decisions[5] == "allow", "demoted to shadow: still recorded, no longer decides"
    out = evaluate(holder.current, ORDER, {}, None)  # type: ignore[arg-type]
    assert out.matched == [RuleMatch(name="noisy_block", action="block", mode="shadow")]
    assert holder.current is not None and holder.current.version.endswith("+demoted:noisy_block")
    (event,) = events
    assert event.rule == "noisy_block" and event.matches == 5 and event.orders == 24 and event.max_rate == 0.2
    assert metric("fraudscore_rule_demoted", {"rule": "noisy_block"}) == 1.0
    assert metric("fraudscore_rule_demotions_total", {"rule": "noisy_block"}) >= 1.0
    assert "kill-switch: rule noisy_block" in caplog.text
    assert holder.status()["demoted"]["noisy_block"]["max_rate"] == 0.2

    # a reload of the unchanged rule keeps it demoted; changing the rule lifts the demotion
    write(d / "rules.yaml", KILL + "  - name: extra\n    when: order.amount < 0.0\n    action: review\n")
    assert holder.refresh()
    assert holder.current.rule("noisy_block").mode == "shadow"  # type: ignore[union-attr]
    write(d / "rules.yaml", KILL.replace("order.amount > 40.0", "order.amount > 45.0"))
    assert holder.refresh()
    assert holder.current.rule("noisy_block").mode == "active"  # type: ignore[union-attr]
    assert metric("fraudscore_rule_demoted", {"rule": "noisy_block"}) == 0.0


def test_kill_switch_window_slides_and_operators_can_reinstate(tmp_path: Path):
    d = tmp_path / "rules"
    d.mkdir()
    write(d / "rules.yaml", KILL)
    clock = Clock()
    holder = RulesHolder(d, clock=clock)
    holder.refresh()
    # 30 matches spread so that no 10-minute window holds more than 20%: 1 match then 9 non-matches
    for i in range(300):
        evaluate(holder.current, ORDER if i % 10 == 0 else {**ORDER, "amount": 5.0}, {}, None)  # type: ignore[arg-type]
        clock.t += 5
    assert holder.current.rule("noisy_block").mode == "active"  # type: ignore[union-attr]
    # a burst trips it
    for _ in range(30):
        evaluate(holder.current, ORDER, {}, None)  # type: ignore[arg-type]
        clock.t += 1
    assert holder.current.rule("noisy_block").mode == "shadow"  # type: ignore[union-attr]
    assert holder.reinstate("noisy_block") is True
    assert holder.current.rule("noisy_block").mode == "active"  # type: ignore[union-attr]
    assert holder.reinstate("noisy_block") is False
    # allow rules and rules without a ceiling are never demoted
    vip = {**ORDER, "customer_id": "vip", "amount": 5.0}
    clock.t += 3600
    for _ in range(100):
        evaluate(holder.current, vip, {}, None)  # type: ignore[arg-type]
        clock.t += 1
    assert holder.current.rule("vip").mode == "active"  # type: ignore[union-attr]


def test_refresh_without_changes_keeps_the_same_object(tmp_path: Path):
    d = tmp_path / "rules"
    d.mkdir()
    write(d / "rules.yaml", KILL)
    holder = RulesHolder(d)
    holder.refresh()
    first = holder.current
    for _ in range(50):
        assert holder.refresh() is False
    assert holder.current is first


def test_batch_observation_trips_exactly_like_one_order_at_a_time(tmp_path: Path) -> None:
    """The stream feeds the kill-switch a batch at a time (`observe_many`); whatever the batches, it
    demotes the same rules with the same counts as the gRPC path's one-order `observe`."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from rules.killswitch import KillSwitch

    d = tmp_path / "rules"
    d.mkdir()
    write(d / "rules.yaml", KILL)
    holder = RulesHolder(d)
    assert holder.refresh() and holder.current is not None
    ruleset = holder.current
    noisy = RuleMatch(name="noisy_block", action="block", mode="active")
    rare = RuleMatch(name="rare_review", action="review", mode="active")
    broken = RuleMatch(name="noisy_block", action="block", mode="active", error="no such key")
    kinds = {0: [], 1: [noisy], 2: [noisy, rare], 3: [rare], 4: [broken]}
    batch = st.tuples(st.integers(0, 400), st.lists(st.sampled_from(sorted(kinds)), max_size=40))

    @settings(max_examples=60, deadline=None)
    @given(st.lists(batch, min_size=1, max_size=12))
    def check(batches: list[tuple[int, list[int]]]) -> None:
        runs = []
        for mode in ("one", "many"):
            clock = Clock()
            events: list[tuple[str, int, int, int]] = []
            ks = KillSwitch(lambda name, e, ev=events, c=clock: ev.append((name, e.matches, e.orders, int(c.t))),
                            clock=clock)
            ks.watch(ruleset)
            for gap, rows in batches:
                clock.t += gap
                matched = [kinds[k] for k in rows]
                if mode == "one":
                    for m in matched:
                        ks.observe(ruleset, m)
                else:
                    ks.observe_many(ruleset, matched)
            runs.append((events, {w: r.total for w, r in ks._orders.items()},
                         {k: r.total for k, r in ks._matches.items()}))
        assert runs[0] == runs[1]

    check()
