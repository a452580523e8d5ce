"""Rules hot reload inside a running `fraudscore serve` process.

A valid change to the rules directory is picked up without a restart (new `ruleset_version`, the new
rule decides); an invalid change is refused while the last good ruleset keeps answering, and the
refusal is visible on /healthz and in the metrics; SIGTERM still exits 0.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import grpc

from rules.ruleset import PACKAGED_RULES, load_ruleset
from scoring.proto.fraudscore.v1 import scoring_pb2 as pb
from scoring.proto.fraudscore.v1 import scoring_pb2_grpc as pb_grpc
from tests.scoring.conftest import order_msg
from tests.scoring.serve_proc import ServeProcess, poll_until, sample

CUSTOMER = "cust-hot-reload-7"

NEW_RULE = f"""\
ruleset: default
version: 2
rules:
  - name: hot_reload_block_customer
    description: added while the server runs
    owner: tests@example.com
    when: order.customer_id == "{CUSTOMER}"
    action: block
    priority: 5000
    kill_switch: off
    tests:
      - order: {{customer_id: {CUSTOMER}}}
        expect: block
      - order: {{customer_id: someone-else}}
        matches: false
"""

BAD_RULE = """\
ruleset: default
version: 2
rules:
  - name: refers_to_a_feature_that_does_not_exist
    when: features.no_such_feature > 3.0
    action: block
"""


def put(staging: Path, target: Path, text: str) -> None:
    """Write a whole file at once (rename), so the watcher never reads half of it."""
    staging.write_text(text)
    os.replace(staging, target)


def serve_with_own_rules(models: Path, tmp_path: Path) -> tuple[ServeProcess, Path]:
    """`fraudscore serve` on a copy of the packaged rules, reloading rules and models every 0.1 s."""
    rules_dir = tmp_path / "rules"
    shutil.copytree(PACKAGED_RULES, rules_dir)
    srv = ServeProcess(models, tmp_path, env={
        "FRAUDSCORE_RULES_DIR": str(rules_dir),
        "FRAUDSCORE__RULES__RELOAD_INTERVAL_S": "0.1",
        "FRAUDSCORE__SCORING__MODEL_RELOAD_INTERVAL_S": "0.1",
    })
    return srv, rules_dir


async def test_serve_hot_reloads_valid_rules_and_refuses_invalid_ones(registry: tuple[Path, str],
                                                                      tmp_path: Path) -> None:
    models, _ = registry
    srv, rules_dir = serve_with_own_rules(models, tmp_path)
    staging = tmp_path / "staging.yaml"
    try:
        await srv.wait_serving()
        async with grpc.aio.insecure_channel(srv.target) as ch:
            stub = pb_grpc.FraudScoringStub(ch)

            async def score(customer: str = CUSTOMER) -> pb.ScoreResponse:
                return await stub.Score(pb.ScoreRequest(order=order_msg(customer_id=customer)), timeout=5)

            first = await score()
            v0 = first.ruleset_version
            # a copy of the packaged rules has the packaged rules' version (the version is a content hash)
            assert v0 == load_ruleset(PACKAGED_RULES).version == load_ruleset(rules_dir).version
            assert first.decision != pb.BLOCK and not first.degraded
            assert "hot_reload_block_customer" not in {m.name for m in first.matched_rules}

            # a valid change: served without a restart, and the new rule decides
            put(staging, rules_dir / "zz-hot.yaml", NEW_RULE)
            v1 = load_ruleset(rules_dir).version
            assert v1 != v0
            after = await poll_until(score, lambda r: r.ruleset_version != v0, "the new ruleset serving")
            assert after.ruleset_version == v1
            assert after.decision == pb.BLOCK and not after.degraded
            assert [(m.name, m.action) for m in after.matched_rules if not m.shadow][0] == (
                "hot_reload_block_customer", pb.BLOCK)
            other = await score("someone-else")
            assert other.ruleset_version == v1 and other.decision != pb.BLOCK

            # an invalid change: refused, the last good ruleset keeps answering, the refusal is visible
            put(staging, rules_dir / "zz-bad.yaml", BAD_RULE)
            _, health = await poll_until(srv.healthz, lambda h: h[1]["ruleset_error"] is not None,
                                         "the refusal on /healthz")
            assert "zz-bad.yaml" in health["ruleset_error"] and "no_such_feature" in health["ruleset_error"]
            assert health["ruleset"] == v1 and health["status"] == "ok"
            m = await srv.metrics()
            assert sample(m, "fraudscore_rules_invalid") == 1.0
            assert sample(m, "fraudscore_reload_refused_total", kind="rules") == 1.0
            assert sample(m, "fraudscore_ruleset_info", version=v1, name="default") == 1.0
            for _ in range(3):
                still = await score()
                assert still.ruleset_version == v1 and still.decision == pb.BLOCK and not still.degraded

            # repaired: the error clears and the same good version serves
            (rules_dir / "zz-bad.yaml").unlink()
            _, health = await poll_until(srv.healthz, lambda h: h[1]["ruleset_error"] is None, "the error cleared")
            assert health["ruleset"] == v1
            assert sample(await srv.metrics(), "fraudscore_rules_invalid") == 0.0
            assert (await score()).ruleset_version == v1

        assert await srv.stop() == 0, srv.log()[-3000:]
    finally:
        srv.close()
    log = srv.log()
    assert "refused rules change" in log and "zz-bad.yaml" in log


async def test_a_failing_model_reload_does_not_stop_rules_reloading(registry: tuple[Path, str],
                                                                    tmp_path: Path) -> None:
    """The reload loop looks at the model registry and the rules in turn: an error in one (here an
    unreadable champion pointer) must not keep the other from reloading."""
    models, version = registry
    srv, rules_dir = serve_with_own_rules(models, tmp_path)
    try:
        await srv.wait_serving()
        (models / "champion").write_bytes(b"\xff\xfe not a version\n")  # every model refresh now raises
        put(tmp_path / "staging.yaml", rules_dir / "zz-hot.yaml", NEW_RULE)
        v1 = load_ruleset(rules_dir).version
        async with grpc.aio.insecure_channel(srv.target) as ch:
            stub = pb_grpc.FraudScoringStub(ch)

            async def score() -> pb.ScoreResponse:
                return await stub.Score(pb.ScoreRequest(order=order_msg(customer_id=CUSTOMER)), timeout=5)

            after = await poll_until(score, lambda r: r.ruleset_version == v1, "the new ruleset serving")
            assert after.decision == pb.BLOCK
            assert after.model_version == version and not after.degraded  # the loaded model keeps serving
        assert await srv.stop() == 0, srv.log()[-3000:]
    finally:
        srv.close()
