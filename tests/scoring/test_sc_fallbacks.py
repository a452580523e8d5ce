"""The documented fallback answers (docs/scoring.md "Fallbacks") over a real gRPC server: no valid
ruleset, no model, neither — each with its `degraded_reasons`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from scoring.proto.fraudscore.v1 import scoring_pb2 as pb
from scoring.proto.fraudscore.v1 import scoring_pb2_grpc as pb_grpc
from tests.scoring.conftest import order_msg

BROKEN_RULES = """\
ruleset: broken
version: 1
rules:
  - name: not_cel
    action: block
    when: "order.amount >>> 3"
"""


def broken_rules_dir(tmp_path: Path) -> Path:
    d = tmp_path / "broken-rules"
    d.mkdir()
    (d / "rules.yaml").write_text(BROKEN_RULES)
    return d


async def _score(target: str, channel_for: Any, **over: Any) -> pb.ScoreResponse:
    stub = pb_grpc.FraudScoringStub(channel_for(target))
    return await stub.Score(pb.ScoreRequest(order=order_msg(**over)), timeout=5.0)


def _threshold(score: float) -> int:
    # the packaged defaults when no ruleset is loaded: review ≥ 0.5, block ≥ 0.9
    return pb.BLOCK if score >= 0.9 else pb.REVIEW if score >= 0.5 else pb.ALLOW


async def test_no_valid_ruleset_scores_against_the_default_thresholds(
    grpc_server: Any, channel_for: Any, registry: tuple[Path, str], tmp_path: Path
) -> None:
    _, version = registry
    srv = await grpc_server(**{"rules.dir": str(broken_rules_dir(tmp_path))})
    assert srv.parts.rules.current is None
    assert "rules.yaml:6" in (srv.parts.rules.last_error or ""), "refused with the file and line"
    for amount, ip in ((12.0, "DE"), (880.0, "NG")):
        resp = await _score(srv.target, channel_for, amount=amount, ip_country=ip)
        assert resp.model_version == version and resp.ruleset_version == ""
        assert resp.degraded and list(resp.degraded_reasons) == ["rules_unavailable"]
        assert resp.decision == _threshold(resp.score)
        assert not resp.matched_rules


@pytest.mark.parametrize(("mode", "expected", "reason"), [("open", pb.ALLOW, "fail_open"),
                                                          ("closed", pb.REVIEW, "fail_closed")])
async def test_neither_model_nor_rules_answers_by_fail_mode(
    grpc_server: Any, channel_for: Any, registry: tuple[Path, str], tmp_path: Path,
    mode: str, expected: int, reason: str,
) -> None:
    srv = await grpc_server(**{"rules.dir": str(broken_rules_dir(tmp_path)), "scoring.model_version": "m-missing",
                               "scoring.fail_mode": mode})
    assert srv.parts.models.current is None
    resp = await _score(srv.target, channel_for, amount=880.0, ip_country="NG")
    assert resp.decision == expected
    assert resp.degraded
    assert set(resp.degraded_reasons) == {"model_unavailable", "rules_unavailable", reason}
    assert resp.model_version == "" and resp.ruleset_version == ""


async def test_no_model_lets_the_rules_decide(
    grpc_server: Any, channel_for: Any, registry: tuple[Path, str]
) -> None:
    srv = await grpc_server(**{"scoring.model_version": "m-missing"})
    resp = await _score(srv.target, channel_for)
    assert resp.degraded and list(resp.degraded_reasons) == ["model_unavailable"]
    assert resp.ruleset_version and resp.model_version == ""
    assert not resp.HasField("score"), "no model answered: the score is absent, not 0"
    assert resp.decision in (pb.ALLOW, pb.REVIEW, pb.CHALLENGE, pb.BLOCK)


async def test_invalid_request_still_names_the_field_when_degraded(
    grpc_server: Any, channel_for: Any, registry: tuple[Path, str], tmp_path: Path
) -> None:
    srv = await grpc_server(**{"rules.dir": str(broken_rules_dir(tmp_path))})
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _score(srv.target, channel_for, amount=-1.0)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "amount" in (info.value.details() or "")
