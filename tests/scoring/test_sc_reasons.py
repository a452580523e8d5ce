"""Reason codes: the tabulated TreeSHAP equals XGBoost's own contributions; reasons read well."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb
from hypothesis import given, settings
from hypothesis import strategies as st

from scoring.artifacts import verify
from scoring.exceptions import TreeShapUnsupported
from scoring.reasons import describe, top_reasons, top_reasons_batch
from scoring.runtimes.native import NativeRuntime
from scoring.treeshap import TreeShap


def _xgb_contribs(booster: xgb.Booster, x: np.ndarray) -> np.ndarray:
    return booster.predict(xgb.DMatrix(x, missing=np.nan), pred_contribs=True)


@pytest.fixture(scope="module")
def random_model() -> tuple[xgb.Booster, np.ndarray]:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3000, 8)).astype(np.float32)
    x[rng.random(x.shape) < 0.15] = np.nan
    y = (np.nan_to_num(x[:, 0]) * np.nan_to_num(x[:, 1]) + np.nan_to_num(x[:, 2]) > 0.3).astype(np.float32)
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 5, "nthread": 1, "seed": 1},
                        xgb.DMatrix(x, label=y, missing=np.nan), 40)
    return booster, x


@pytest.mark.parametrize("use_kernel", [True, False], ids=["c-kernel", "numpy"])
def test_treeshap_equals_xgboost_contributions(random_model: tuple[xgb.Booster, np.ndarray], use_kernel: bool) -> None:
    booster, x = random_model
    rows = x[:200]
    want = _xgb_contribs(booster, rows)
    ts = TreeShap(booster.save_raw("json"), 8, float(want[0, -1]), use_kernel=use_kernel)
    got = ts.contributions(rows)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)
    # local accuracy: contributions add up to the margin
    margin = booster.predict(xgb.DMatrix(rows, missing=np.nan), output_margin=True)
    np.testing.assert_allclose(got.sum(axis=1), margin, atol=1e-4)


def test_treeshap_handles_all_missing_and_extreme_rows(random_model: tuple[xgb.Booster, np.ndarray]) -> None:
    booster, _ = random_model
    rows = np.array([[np.nan] * 8, [1e30] * 8, [-1e30] * 8, [0.0] * 8], dtype=np.float32)
    want = _xgb_contribs(booster, rows)
    ts = TreeShap(booster.save_raw("json"), 8, float(want[0, -1]))
    np.testing.assert_allclose(ts.contributions(rows), want, atol=2e-5, rtol=1e-4)


def test_table_limit_refuses_instead_of_exhausting_memory(random_model: tuple[xgb.Booster, np.ndarray]) -> None:
    booster, _ = random_model
    with pytest.raises(TreeShapUnsupported, match="MiB"):
        TreeShap(booster.save_raw("json"), 8, 0.0, max_table_bytes=1024)


def test_trained_model_reasons_agree_with_xgboost(registry: tuple[Path, str], sample_orders: list) -> None:
    models, version = registry
    manifest = verify(models / version)
    rt = NativeRuntime(models / version, manifest)
    assert rt.treeshap is not None
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, len(manifest.feature_names))).astype(np.float32) * 10
    x[rng.random(x.shape) < 0.3] = np.nan
    np.testing.assert_allclose(rt.contributions(x), rt._xgb_contributions(x), atol=2e-5, rtol=1e-4)


def test_top_reasons_are_the_largest_positive_contributions() -> None:
    names = ("card_order_count_1h", "amount", "hour_of_day")
    values = np.array([9.0, 12.5, 3.0], dtype=np.float32)
    contribs = np.array([1.5, -0.2, 0.4, -3.0])
    reasons = top_reasons(names, values, contribs, 3)
    assert [r.feature for r in reasons] == ["card_order_count_1h", "hour_of_day"]
    assert reasons[0].text == "card placed 9 orders in the last hour"
    assert describe("account_age_days", 0.5) == "account is 0.5 days old"
    assert describe("amount", None) == "amount unknown"


def test_registry_stores_reference_distributions_and_signs(tmp_path: Path) -> None:
    import json

    from training.registry import reference_distributions, register

    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 3)).astype(np.float32)
    x[:40, 2] = np.nan
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 2}, xgb.DMatrix(x, label=(x[:, 0] > 0)), 5)
    ref = reference_distributions(x, ["a", "b", "c"], booster.predict(xgb.DMatrix(x)))
    v = register(tmp_path, booster, ["a", "b", "c"], metrics={}, training_window={"from": "x", "to": "y"},
                 reference=ref, signing_key=b"key")
    manifest = json.loads((tmp_path / v / "manifest.json").read_text())
    c = manifest["reference"]["features"]["c"]
    assert c["missing_rate"] == 0.1 and abs(sum(c["bin_shares"]) - 1) < 1e-6 and "0.5" in c["quantiles"]
    assert "score" in manifest["reference"]
    assert verify(tmp_path / v, ["a", "b", "c"], signing_key=b"key").version == v


@settings(max_examples=200, deadline=None)
@given(rows=st.integers(0, 12), f=st.integers(1, 9), k=st.integers(0, 12), seed=st.integers(0, 2**32 - 1),
       ties=st.booleans())
def test_batch_reasons_equal_the_per_row_reasons(rows: int, f: int, k: int, seed: int, ties: bool) -> None:
    rng = np.random.default_rng(seed)
    names = tuple(f"feature_{i}_count_{i + 1}h" for i in range(f))
    values = rng.normal(size=(rows, f)).astype(np.float32) * 10
    values[rng.random(values.shape) < 0.2] = np.nan
    contribs = rng.normal(size=(rows, f + 1))
    if ties:  # equal contributions: order by feature index in both
        contribs = np.round(contribs)
    batch = top_reasons_batch(names, values, contribs, k)
    assert batch == [top_reasons(names, values[i], contribs[i], k) for i in range(rows)]


@pytest.mark.parametrize("depth", [3, 6, 12])
def test_kernel_paths_equal_xgboost_for_any_batch_size_and_path_width(depth: int) -> None:
    """One row (two-pass gather), a few rows, and blocks of rows with a remainder (leaf-major blocks),
    for path widths with a specialised copy (≤ 8) and the generic one (depth 12)."""
    rng = np.random.default_rng(depth)
    x = rng.normal(size=(2000, 12)).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = np.nan
    y = (np.nan_to_num(x[:, 0]) + np.nan_to_num(x[:, 3]) * np.nan_to_num(x[:, 7]) > 0.2).astype(np.float32)
    if depth > 8:  # noisy labels and tiny leaves: paths that split on more than 8 distinct features
        y = rng.integers(0, 2, size=len(y)).astype(np.float32)
    booster = xgb.train({"objective": "binary:logistic", "max_depth": depth, "nthread": 1, "seed": 2,
                         "min_child_weight": 0, "eta": 0.3}, xgb.DMatrix(x, label=y, missing=np.nan),
                        15 if depth <= 8 else 2)
    want_all = _xgb_contribs(booster, x[:131])
    ts = TreeShap(booster.save_raw("json"), 12, float(want_all[0, -1]), threads=2)
    assert ts.uses_kernel
    if depth == 12:
        assert ts.width > 8, "the generic block path"
    for n in (1, 2, 33, 131):
        np.testing.assert_allclose(ts.contributions(x[:n]), want_all[:n], atol=2e-5, rtol=1e-4)
