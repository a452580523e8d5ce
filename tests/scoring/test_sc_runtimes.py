"""Runtimes: the compiled fast path agrees with XGBoost to 1e-6, is cached per model hash and falls
back to native on real failures; the SageMaker backend gives the local scores through boto3."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest

from scoring.artifacts import verify
from scoring.models import RuntimeOptions, load_model
from scoring.runtimes.compiled import CompiledRuntime, library_path, parity_rows
from scoring.runtimes.native import NativeRuntime
from tests.services import free_port, wait_port


@pytest.fixture(scope="module")
def compiled(trained_registry: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> CompiledRuntime:
    models, version = trained_registry
    cache = tmp_path_factory.mktemp("compiled")
    rt = load_model(models, version, None, RuntimeOptions(runtime="compiled", cache_dir=cache))
    assert isinstance(rt, CompiledRuntime), "tl2cgen compilation failed on this machine"
    return rt


def test_compiled_equals_native_to_1e6(compiled: CompiledRuntime) -> None:
    rows = parity_rows(compiled.native, n=500, seed=123)
    native = compiled.native.predict(rows)
    np.testing.assert_allclose(compiled.predict(rows), native, atol=1e-6, rtol=0)  # batch (tl2cgen Predictor)
    single = np.array([compiled.predict(rows[i : i + 1])[0] for i in range(100)])  # one row (ctypes)
    np.testing.assert_allclose(single, native[:100], atol=1e-6, rtol=0)
    np.testing.assert_allclose(compiled.contributions(rows[:10]), compiled.native.contributions(rows[:10]))


def test_compiled_library_is_cached_per_model_hash(compiled: CompiledRuntime,
                                                   trained_registry: tuple[Path, str]) -> None:
    models, version = trained_registry
    lib = compiled.library
    before = lib.stat().st_mtime_ns
    again = load_model(models, version, None, RuntimeOptions(runtime="compiled", cache_dir=lib.parent))
    assert isinstance(again, CompiledRuntime) and again.library == lib
    assert lib.stat().st_mtime_ns == before  # reused, not rebuilt


def test_unusable_cache_falls_back_to_native(trained_registry: tuple[Path, str], tmp_path: Path) -> None:
    models, version = trained_registry
    not_a_dir = tmp_path / "cache-file"
    not_a_dir.write_text("a file where the cache directory should be")
    rt = load_model(models, version, None, RuntimeOptions(runtime="compiled", cache_dir=not_a_dir))
    assert isinstance(rt, NativeRuntime)


def test_corrupt_cached_library_is_rebuilt(compiled: CompiledRuntime, trained_registry: tuple[Path, str],
                                           tmp_path: Path) -> None:
    models, version = trained_registry
    cache = tmp_path / "cache"
    cache.mkdir()
    manifest = verify(models / version)
    lib = library_path(cache, manifest.model_sha256)
    lib.write_bytes(b"\x7fELF garbage, not a shared library")
    rt = load_model(models, version, None, RuntimeOptions(runtime="compiled", cache_dir=cache))
    assert isinstance(rt, CompiledRuntime)  # rebuilt, parity-checked
    assert lib.read_bytes()[:4] == b"\x7fELF" and len(lib.read_bytes()) > 1000


def test_auto_serves_native_then_swaps_to_compiled(trained_registry: tuple[Path, str], tmp_path: Path,
                                                   feature_set: Any) -> None:
    from scoring.models import ModelHolder

    models, version = trained_registry
    holder = ModelHolder(models, feature_set.names, options=RuntimeOptions(runtime="auto", cache_dir=tmp_path))
    holder.refresh()
    assert holder.current is not None and holder.current.version == version
    assert holder.wait_compiled(240)
    assert isinstance(holder.current, CompiledRuntime)


# ------------------------------------------------------------------------------------ SageMaker


@pytest.fixture
def sagemaker_container(registry: tuple[Path, str], tmp_path: Path) -> Any:
    """``fraudscore serve --sagemaker`` as a process on a free port (the container's entry point)."""
    models, version = registry
    port = free_port()
    env = {**os.environ, "FRAUDSCORE_METRICS_PORT": str(free_port())}
    log = (tmp_path / "container.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fraudscore", "--data-dir", str(models.parent), "serve", "--sagemaker",
         "--runtime", "native", "--model-dir", str(models / version), "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        wait_port(port, timeout=60, proc=proc)
        yield f"http://127.0.0.1:{port}", models, version
    finally:
        proc.terminate()
        code = proc.wait(20)
        log.close()
        assert code == 0, (tmp_path / "container.log").read_text()[-3000:]


def _client(url: str) -> Any:
    return boto3.client("sagemaker-runtime", endpoint_url=url, region_name="us-east-1")


def test_container_ping_and_csv_through_boto3_equal_local(sagemaker_container: Any, sample_orders: list) -> None:
    url, models, version = sagemaker_container
    assert urllib.request.urlopen(url + "/ping", timeout=10).status == 200  # noqa: S310 - loopback
    local = NativeRuntime(models / version, verify(models / version))
    rows = parity_rows(local, n=50, seed=4)
    from scoring.runtimes.sagemaker import rows_to_csv

    resp = _client(url).invoke_endpoint(EndpointName="fraud", ContentType="text/csv", Body=rows_to_csv(rows))
    got = np.array([float(x) for x in resp["Body"].read().split()])
    np.testing.assert_allclose(got, local.predict(rows), atol=1e-6, rtol=0)


def test_container_json_and_errors(sagemaker_container: Any) -> None:
    import botocore.exceptions

    url, models, version = sagemaker_container
    client = _client(url)
    n = len(verify(models / version).feature_names)
    body = '{"instances": [{"features": [' + ",".join(["1.0"] * n) + "]}]}"
    resp = client.invoke_endpoint(EndpointName="fraud", ContentType="application/json", Accept="application/json",
                                  Body=body, CustomAttributes="contributions=true")
    import json

    pred = json.loads(resp["Body"].read())["predictions"][0]
    assert 0 <= pred["score"] <= 1 and len(pred["contributions"]) == n + 1
    with pytest.raises(botocore.exceptions.ClientError) as err:
        client.invoke_endpoint(EndpointName="fraud", ContentType="text/csv", Body="1,2,x\n")
    assert "line 1" in str(err.value)
    orders = {"orders": [{"order_id": "j1", "event_time": "2026-03-02T10:00:00Z", "customer_id": "c1",
                          "amount": 10.0, "currency": "EUR"}]}
    resp = client.invoke_endpoint(EndpointName="fraud", ContentType="application/json", Body=json.dumps(orders))
    decision = json.loads(resp["Body"].read())["decisions"][0]
    assert decision["order_id"] == "j1" and decision["model_version"] == version


async def test_sagemaker_backend_gives_the_local_scores_and_reasons(sagemaker_container: Any, feature_set: Any,
                                                                    sample_orders: list) -> None:
    from feature_state.stores.memory import MemoryStore
    from rules.reload import RulesHolder
    from rules.ruleset import PACKAGED_RULES
    from scoring.models import ModelHolder
    from scoring.pipeline import DecisionPipeline

    url, models, version = sagemaker_container

    def pipeline(opts: RuntimeOptions) -> DecisionPipeline:
        holder = ModelHolder(models, feature_set.names, options=opts)
        holder.refresh()
        assert holder.current is not None, holder.last_error
        rules = RulesHolder(PACKAGED_RULES)
        rules.refresh()
        return DecisionPipeline(MemoryStore(feature_set), holder, rules)

    local = pipeline(RuntimeOptions(runtime="native"))
    remote = pipeline(RuntimeOptions(runtime="sagemaker", sagemaker_endpoint="fraud", sagemaker_endpoint_url=url,
                                     sagemaker_region="us-east-1", sagemaker_timeout_s=5.0))
    assert remote.models.current is not None and remote.models.current.kind == "sagemaker"
    orders = sample_orders[:60]
    a = await local.decide(orders, source="batch", apply=True)
    b = await remote.decide(orders, source="batch", apply=True)
    np.testing.assert_allclose([d.score for d in b], [d.score for d in a], atol=1e-6, rtol=0)
    assert [d.decision for d in b] == [d.decision for d in a]
    assert [[r.feature for r in d.reasons] for d in b] == [[r.feature for r in d.reasons] for d in a]
    assert not any(d.degraded for d in b)


async def test_sagemaker_endpoint_down_degrades_within_deadline(registry: tuple[Path, str], feature_set: Any,
                                                                sample_orders: list) -> None:
    from feature_state.stores.memory import MemoryStore
    from rules.reload import RulesHolder
    from rules.ruleset import PACKAGED_RULES
    from scoring.models import ModelHolder
    from scoring.pipeline import DecisionPipeline

    models, _ = registry
    holder = ModelHolder(models, feature_set.names, options=RuntimeOptions(
        runtime="sagemaker", sagemaker_endpoint="fraud", sagemaker_endpoint_url=f"http://127.0.0.1:{free_port()}",
        sagemaker_region="us-east-1", sagemaker_timeout_s=0.2, sagemaker_max_attempts=1))
    holder.refresh()
    rules = RulesHolder(PACKAGED_RULES)
    rules.refresh()
    p = DecisionPipeline(MemoryStore(feature_set), holder, rules)
    d = (await p.decide(sample_orders[:1], source="grpc", budget_s=0.5))[0]
    assert d.degraded and "model_error" in d.degraded_reasons and d.score is None


def test_container_entrypoint_serves_ping(registry: tuple[Path, str], tmp_path: Path) -> None:
    """infra/sagemaker/entrypoint.sh `serve` (what SageMaker runs) starts the HTTP contract."""
    models, version = registry
    port = free_port()
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "SM_MODEL_DIR": str(models / version), "SAGEMAKER_BIND_TO_PORT": str(port),
           "FRAUDSCORE_DATA_DIR": str(tmp_path), "FRAUDSCORE__SCORING__RUNTIME": "native"}
    log = (tmp_path / "entry.log").open("wb")
    proc = subprocess.Popen([str(root / "infra/sagemaker/entrypoint.sh"), "serve"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        wait_port(port, timeout=60, proc=proc)
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=10).status == 200  # noqa: S310
    finally:
        proc.terminate()
        code = proc.wait(20)
        log.close()
    assert code == 0, (tmp_path / "entry.log").read_text()[-2000:]
