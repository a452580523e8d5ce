"""The gRPC server over a real socket: answers, validation, deadlines, fallbacks, model safety."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from feature_state.stores.base import FeatureStore
from scoring.proto.fraudscore.v1 import scoring_pb2 as pb
from scoring.proto.fraudscore.v1 import scoring_pb2_grpc as pb_grpc
from tests.scoring.conftest import order_msg

PAN = "4111 1111 1111 1111"


async def _score(ch: grpc.aio.Channel, order: Any = None, deadline_s: float = 5.0, **kw: Any) -> pb.ScoreResponse:
    stub = pb_grpc.FraudScoringStub(ch)
    return await stub.Score(pb.ScoreRequest(order=order or order_msg(), **kw), timeout=deadline_s)


async def test_valid_score_has_decision_score_reasons_and_versions(grpc_server: Any, channel_for: Any,
                                                                   registry: tuple[Path, str]) -> None:
    srv = await grpc_server()
    resp = await _score(channel_for(srv.target), order_msg(amount=850.0, ip_country="NG"), include_features=True)
    assert resp.order_id == "o-1"
    assert resp.decision in (pb.ALLOW, pb.REVIEW, pb.CHALLENGE, pb.BLOCK)
    assert resp.HasField("score") and 0.0 <= resp.score <= 1.0
    assert resp.model_version == registry[1]
    assert resp.ruleset_version
    assert not resp.degraded
    assert resp.features["amount"] == 850.0
    assert resp.reasons and all(r.text and r.contribution > 0 for r in resp.reasons)
    health = health_pb2_grpc.HealthStub(channel_for(srv.target))
    h = await health.Check(health_pb2.HealthCheckRequest(service="fraudscore.v1.FraudScoring"))
    assert h.status == health_pb2.HealthCheckResponse.SERVING


async def test_score_batch_answers_in_order(grpc_server: Any, channel_for: Any) -> None:
    srv = await grpc_server()
    stub = pb_grpc.FraudScoringStub(channel_for(srv.target))
    resp = await stub.ScoreBatch(pb.ScoreBatchRequest(orders=[order_msg(order_id=f"b{i}") for i in range(5)]),
                                 timeout=5)
    assert [r.order_id for r in resp.results] == [f"b{i}" for i in range(5)]


@pytest.mark.parametrize(
    ("order", "field"),
    [
        (order_msg(order_id=""), "order.order_id"),
        (order_msg(amount=-3.0), "order.amount"),
        (order_msg(currency="euro"), "order.currency"),
    ],
    ids=["missing-order-id", "negative-amount", "bad-currency"],
)
async def test_invalid_request_names_the_field(grpc_server: Any, channel_for: Any, order: Any, field: str) -> None:
    srv = await grpc_server()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _score(channel_for(srv.target), order)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (err.value.details() or "")


@pytest.mark.parametrize("where", ["device_id", "email_domain", "payment.card_fingerprint", "items.sku"])
async def test_card_number_anywhere_is_refused_and_never_logged(
    grpc_server: Any, channel_for: Any, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    srv = await grpc_server()
    if where == "payment.card_fingerprint":
        order = order_msg(payment=pb.Payment(method="card", card_fingerprint=PAN))
    elif where == "items.sku":
        order = order_msg(items=[pb.Item(sku=f"sku {PAN}", quantity=1)])
    else:
        order = order_msg(**{where: PAN})
    caplog.set_level(logging.DEBUG)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _score(channel_for(srv.target), order)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = err.value.details() or ""
    assert "card number" in details and where.split(".")[0] in details
    digits = PAN.replace(" ", "")
    assert digits not in details and PAN not in details
    assert digits not in caplog.text and PAN not in caplog.text


async def test_expired_deadline_is_deadline_exceeded(grpc_server: Any, channel_for: Any) -> None:
    # A client deadline shorter than the server's minimum is refused at once, before any work.
    srv = await grpc_server(**{"scoring.min_deadline_ms": 200.0})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _score(channel_for(srv.target), deadline_s=0.1)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # A deadline that has already passed is DEADLINE_EXCEEDED too (grpc enforces it end to end).
    with pytest.raises(grpc.aio.AioRpcError) as err2:
        await _score(channel_for(srv.target), deadline_s=0.000001)
    assert err2.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


class _HangingStore(FeatureStore):
    """Our own interface, standing in for a store that never answers (the Redis test uses real Redis)."""

    async def read_as_of(self, orders: Any) -> Any:
        await asyncio.sleep(3600)

    async def apply_and_read(self, orders: Any) -> Any:
        await asyncio.sleep(3600)

    async def apply_batch(self, orders: Any) -> Any:  # the interface grew this (feature_state rewrite)
        await asyncio.sleep(3600)


async def test_hanging_feature_store_gives_degraded_answer_within_deadline(
    grpc_server: Any, channel_for: Any, feature_set: Any
) -> None:
    srv = await grpc_server(store=_HangingStore(feature_set))
    resp = await _score(channel_for(srv.target), deadline_s=0.5)
    assert resp.degraded
    assert "feature_store_unavailable" in resp.degraded_reasons
    assert resp.HasField("score")  # on_feature_store_down=score: the model still scores order-only features


async def test_rules_only_when_store_down_and_configured(grpc_server: Any, channel_for: Any, feature_set: Any) -> None:
    srv = await grpc_server(store=_HangingStore(feature_set), **{"scoring.on_feature_store_down": "rules_only"})
    resp = await _score(channel_for(srv.target), deadline_s=0.5)
    assert resp.degraded and not resp.HasField("score")


async def test_missing_model_dir_answers_with_rules_only(grpc_server: Any, channel_for: Any, tmp_path: Path) -> None:
    srv = await grpc_server(data_dir=str(tmp_path / "nowhere"))
    resp = await _score(channel_for(srv.target))
    assert resp.degraded and "model_unavailable" in resp.degraded_reasons
    assert not resp.HasField("score") and resp.ruleset_version


@pytest.mark.parametrize("mode", ["open", "closed"])
async def test_fail_mode_when_neither_model_nor_rules(grpc_server: Any, channel_for: Any, tmp_path: Path,
                                                      mode: str) -> None:
    bad_rules = tmp_path / "rules"
    bad_rules.mkdir()
    (bad_rules / "r.yaml").write_text("rules:\n  - name: x\n    when: 'this is not CEL ((('\n    action: block\n")
    srv = await grpc_server(data_dir=str(tmp_path / "nowhere"), **{"rules.dir": str(bad_rules),
                                                                    "scoring.fail_mode": mode})
    resp = await _score(channel_for(srv.target))
    assert resp.degraded and f"fail_{mode}" in resp.degraded_reasons
    assert resp.decision == (pb.ALLOW if mode == "open" else pb.REVIEW)


def _second_version(models: Path, feature_names: list[str]) -> str:
    import numpy as np
    import xgboost as xgb

    from training.registry import register

    rng = np.random.default_rng(5)
    x = rng.normal(size=(500, len(feature_names))).astype(np.float32)
    y = (x[:, 0] > 0.5).astype(np.float32)
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 3}, xgb.DMatrix(x, label=y), 10)
    return register(models, booster, feature_names, metrics={}, training_window={"from": "a", "to": "b"})


async def test_tampered_model_is_refused_and_previous_keeps_serving(
    grpc_server: Any, channel_for: Any, registry: tuple[Path, str], feature_set: Any
) -> None:
    from training.registry import promote

    models, v1 = registry
    srv = await grpc_server()
    v2 = _second_version(models, feature_set.names)
    promote(models, v2, reason="test")
    model_file = models / v2 / "model.ubj"
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model_file.write_bytes(bytes(data))  # tampered after promotion
    assert srv.parts.models.refresh() is False
    assert "sha256 mismatch" in (srv.parts.models.last_error or "")
    resp = await _score(channel_for(srv.target))
    assert resp.model_version == v1 and not resp.degraded


async def test_pickle_is_refused_before_xgboost_reads_it(registry: tuple[Path, str], feature_set: Any) -> None:
    import hashlib
    import json
    import pickle

    from scoring.artifacts import verify
    from scoring.exceptions import ModelArtifactError

    models, v1 = registry
    vdir = models / v1
    payload = pickle.dumps({"not": "a model"})
    (vdir / "model.ubj").write_bytes(payload)
    manifest = json.loads((vdir / "manifest.json").read_text())
    manifest["files"]["model.ubj"] = hashlib.sha256(payload).hexdigest()
    (vdir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelArtifactError, match="pickle"):
        verify(vdir, feature_set.names)


async def test_signed_manifests_only_when_key_configured(registry: tuple[Path, str], feature_set: Any) -> None:
    import json

    from scoring.artifacts import verify, write_signature
    from scoring.exceptions import ModelArtifactError

    models, v1 = registry
    vdir = models / v1
    with pytest.raises(ModelArtifactError, match="not signed"):
        verify(vdir, feature_set.names, signing_key=b"k1")
    write_signature(vdir, b"k1")
    verify(vdir, feature_set.names, signing_key=b"k1")
    with pytest.raises(ModelArtifactError, match="signature does not match"):
        verify(vdir, feature_set.names, signing_key=b"other")
    doc = json.loads((vdir / "manifest.json").read_text())
    doc["metrics"] = {"average_precision": 0.99}  # an edited manifest breaks the signature
    (vdir / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ModelArtifactError, match="signature does not match"):
        verify(vdir, feature_set.names, signing_key=b"k1")


async def test_model_hot_swap_drops_no_request(grpc_server: Any, channel_for: Any, registry: tuple[Path, str],
                                               feature_set: Any) -> None:
    from training.registry import promote

    models, v1 = registry
    srv = await grpc_server()
    v2 = _second_version(models, feature_set.names)
    ch = channel_for(srv.target)
    seen: list[str] = []

    async def client() -> None:
        for i in range(40):
            resp = await _score(ch, order_msg(order_id=f"h{i}"))
            seen.append(resp.model_version)

    async def swap() -> None:
        await asyncio.sleep(0.02)
        promote(models, v2, reason="test")
        await asyncio.to_thread(srv.parts.models.refresh)

    await asyncio.gather(client(), client(), swap())
    assert len(seen) == 80  # every call answered
    assert set(seen) <= {v1, v2} and seen[-1] == v2


async def test_load_shedding_resource_exhausted(grpc_server: Any, channel_for: Any, feature_set: Any) -> None:
    srv = await grpc_server(store=_HangingStore(feature_set), **{"scoring.max_concurrency": 2,
                                                                 "feature_store.timeout_ms": 300})
    ch = channel_for(srv.target)
    results = await asyncio.gather(*[_score(ch, order_msg(order_id=f"s{i}"), deadline_s=2) for i in range(6)],
                                   return_exceptions=True)
    codes = [r.code() for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 1
    assert sum(1 for r in results if isinstance(r, pb.ScoreResponse)) >= 2


async def test_shadow_models_score_alongside_without_deciding(
    grpc_server: Any, channel_for: Any, registry: tuple[Path, str], feature_set: Any
) -> None:
    models, v1 = registry
    v2 = _second_version(models, feature_set.names)
    (models / "shadows").write_text(f"{v2}\n")
    srv = await grpc_server()
    resp = await _score(channel_for(srv.target))
    assert resp.model_version == v1
    assert set(resp.shadow_scores) == {v2}
    assert 0.0 <= resp.shadow_scores[v2] <= 1.0


async def test_decisions_reach_the_sink_without_blocking(grpc_server: Any, channel_for: Any) -> None:
    got: list[Any] = []
    srv = await grpc_server(sink=got.append)
    await _score(channel_for(srv.target), order_msg(order_id="sink-1"))
    assert [d.order_id for d in got] == ["sink-1"] and got[0].source == "grpc"


async def test_reasons_only_for_non_allow_when_configured(grpc_server: Any, channel_for: Any) -> None:
    srv = await grpc_server(**{"scoring.reasons_for": "non_allow", "rules.dir": None})
    stub = pb_grpc.FraudScoringStub(channel_for(srv.target))
    orders = [order_msg(order_id=f"r{i}", amount=float(a), ip_country=c, shipping_country=c,
                        account_created_at="2026-03-02T09:00:00+00:00" if c != "DE" else "2024-01-01T00:00:00+00:00")
              for i, (a, c) in enumerate([(12.0, "DE"), (870.0, "NG"), (30.0, "DE"), (640.0, "RU")])]
    resp = await stub.ScoreBatch(pb.ScoreBatchRequest(orders=orders), timeout=5)
    decisions = [r.decision for r in resp.results]
    assert pb.ALLOW in decisions and any(d != pb.ALLOW for d in decisions), decisions
    for r in resp.results:
        if r.decision == pb.ALLOW:
            assert not r.reasons
        else:
            assert r.reasons and all(x.contribution > 0 for x in r.reasons)


async def test_refused_version_is_retried_once_repaired(registry: tuple[Path, str], feature_set: Any) -> None:
    from scoring.models import ModelHolder
    from training.registry import promote

    models, v1 = registry
    holder = ModelHolder(models, feature_set.names)
    holder.refresh()
    v2 = _second_version(models, feature_set.names)
    good = (models / v2 / "model.ubj").read_bytes()
    (models / v2 / "model.ubj").write_bytes(good[:-10])  # a half-copied file
    (models / "champion").write_text(v2 + "\n")
    assert holder.refresh() is False and holder.current is not None and holder.current.version == v1
    assert holder.refresh() is False  # not retried while nothing changed
    (models / v2 / "model.ubj").write_bytes(good)  # the copy completes
    promote(models, v2, reason="repaired")
    assert holder.refresh() is True and holder.current is not None and holder.current.version == v2
