"""`fraudscore serve`'s Prometheus page and health endpoint, read over HTTP from a real process.

A fresh process starts every counter at zero, so the values asserted here are exact: what the calls
made by the test should have counted, nothing more.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import grpc
import pytest

from rules.ruleset import PACKAGED_RULES, load_ruleset
from scoring.proto.fraudscore.v1 import scoring_pb2 as pb
from scoring.proto.fraudscore.v1 import scoring_pb2_grpc as pb_grpc
from tests.scoring.conftest import order_msg
from tests.scoring.serve_proc import ServeProcess, sample, samples_named
from tests.services import RedisServer

STAGES = ("features", "model", "rules", "total")


async def test_serve_metrics_count_calls_stages_degraded_answers_and_versions(
    registry: tuple[Path, str], tmp_path: Path
) -> None:
    models, version = registry
    packaged = load_ruleset(PACKAGED_RULES).version  # default settings serve the packaged example rules
    redis = RedisServer().start()  # our own: this test stops it
    srv = ServeProcess(models, tmp_path, env={"REDIS_URL": redis.url})
    try:
        await srv.wait_serving()
        code, health = await srv.healthz()
        assert code == 200 and health["status"] == "ok", health
        assert health["model"] == version and health["model_error"] is None
        assert health["model_runtime"] == "native"
        assert health["ruleset"] == packaged and health["ruleset_error"] is None

        answers: list[pb.ScoreResponse] = []
        async with grpc.aio.insecure_channel(srv.target) as ch:
            stub = pb_grpc.FraudScoringStub(ch)
            for i in range(3):  # Redis up: normal answers
                r = await stub.Score(pb.ScoreRequest(order=order_msg(order_id=f"ok{i}")), timeout=5)
                assert not r.degraded, r
                answers.append(r)
            batch = await stub.ScoreBatch(
                pb.ScoreBatchRequest(orders=[order_msg(order_id=f"b{i}") for i in range(2)]), timeout=5)
            assert not any(r.degraded for r in batch.results)
            answers.extend(batch.results)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Score(pb.ScoreRequest(order=order_msg(order_id="bad", amount=-1.0)), timeout=5)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

            redis.stop()  # feature store down: degraded answers (the model scores order-only features)
            for i in range(2):
                r = await stub.Score(pb.ScoreRequest(order=order_msg(order_id=f"down{i}")), timeout=5)
                assert r.degraded and list(r.degraded_reasons) == ["feature_store_unavailable"], r
                answers.append(r)

        assert {r.model_version for r in answers} == {version}
        assert {r.ruleset_version for r in answers} == {packaged}

        m = await srv.metrics()
        requests = samples_named(m, "fraudscore_grpc_requests_total")
        assert requests == {
            frozenset({("method", "Score"), ("code", "OK")}): 5.0,
            frozenset({("method", "Score"), ("code", "INVALID_ARGUMENT")}): 1.0,
            frozenset({("method", "ScoreBatch"), ("code", "OK")}): 1.0,
        }, requests
        # one observation per pipeline call (5 Score + 1 ScoreBatch), none for the refused request
        for stage in STAGES:
            assert sample(m, "fraudscore_stage_seconds_count", stage=stage, source="grpc") == 6.0, stage
            assert sample(m, "fraudscore_stage_seconds_bucket", stage=stage, source="grpc", le="+Inf") == 6.0
        assert sample(m, "fraudscore_stage_seconds_sum", stage="total", source="grpc") > 0.0
        # one decision per order, by the decision the answers carried
        by_kind = Counter(pb.Decision.Name(r.decision).lower() for r in answers)
        decisions = {dict(labels)["decision"]: v for labels, v in samples_named(m, "fraudscore_decisions_total").items()
                     if dict(labels)["source"] == "grpc" and v}
        assert decisions == {k: float(n) for k, n in by_kind.items()}, (decisions, by_kind)
        degraded = {dict(labels)["reason"]: v for labels, v in samples_named(m, "fraudscore_degraded_total").items()}
        assert degraded == {"feature_store_unavailable": 2.0}, degraded
        assert sample(m, "fraudscore_model_info", version=version) == 1.0
        assert sample(m, "fraudscore_ruleset_info", version=packaged, name="default") == 1.0
        runtime = samples_named(m, "fraudscore_model_runtime_info")
        assert [(dict(labels)["version"], dict(labels)["runtime"], v) for labels, v in runtime.items()] == [
            (version, "native", 1.0)], runtime
        assert sample(m, "fraudscore_grpc_in_flight") == 0.0
        assert sample(m, "fraudscore_grpc_shed_total") == 0.0
        assert sample(m, "fraudscore_rules_invalid") == 0.0

        code, health = await srv.healthz()  # still healthy: a feature-store outage degrades, never fails
        assert code == 200 and health["status"] == "ok"
        assert await srv.stop() == 0, srv.log()[-3000:]
    finally:
        srv.close()
        redis.stop()
