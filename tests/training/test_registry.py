"""Model registry: register, promote, list, roll back — with an audit trail and verified artifacts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb

from fraudscore.cli import main
from scoring.artifacts import champion_version
from training.exceptions import RegistryError
from training.registry import history, list_versions, promote, register, rollback


def _booster(seed: int) -> xgb.Booster:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(200, 3)).astype(np.float32)
    y = (X[:, 0] + rng.normal(scale=0.5, size=200) > 0).astype(np.float32)
    return xgb.train({"objective": "binary:logistic", "seed": seed}, xgb.DMatrix(X, label=y), num_boost_round=3)


def _register(models: Path, seed: int) -> str:
    return register(models, _booster(seed), ["a", "b", "c"], metrics={"average_precision": 0.5},
                    training_window={"from": "x", "to": "y"})


def test_promote_and_rollback_with_audit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models = tmp_path / "models"
    v1, v2 = _register(models, 1), _register(models, 2)
    assert set(list_versions(models)) == {v1, v2}
    promote(models, v1)
    promote(models, v2, reason="better AP")
    assert champion_version(models) == v2
    assert rollback(models) == v1
    assert champion_version(models) == v1
    events = [(e["event"], e["version"]) for e in history(models)]
    assert events[-3:] == [("promote", v1), ("promote", v2), ("rollback", v1)]
    assert main(["--data-dir", str(tmp_path), "models", "list"]) == 0
    assert f"* {v1}" in capsys.readouterr().out


def test_rollback_skips_tampered_versions(tmp_path: Path) -> None:
    models = tmp_path / "models"
    v1, v2, v3 = (_register(models, s) for s in (1, 2, 3))
    for v in (v1, v2, v3):
        promote(models, v)
    (models / v2 / "model.ubj").write_bytes(b"tampered")
    assert rollback(models) == v1  # v2 no longer verifies


def test_errors_say_what_is_known(tmp_path: Path) -> None:
    models = tmp_path / "models"
    v1 = _register(models, 1)
    with pytest.raises(RegistryError, match=v1):
        promote(models, "m-does-not-exist")
    with pytest.raises(RegistryError, match="no earlier champion"):
        rollback(models)
    assert main(["--data-dir", str(tmp_path), "models", "promote", "nope"]) == 2


def test_trained_models_carry_reference_distributions(tmp_path: Path) -> None:
    from feature_state.definitions import load_feature_set
    from fraudscore.bootstrap import bootstrap_history
    from scoring.artifacts import read_manifest
    from training.train import train_and_register

    orders, labels = bootstrap_history(days=4, orders_per_day=800)
    version = train_and_register(orders, labels, load_feature_set(), tmp_path / "models", rounds=5)
    raw = read_manifest(tmp_path / "models" / version).raw
    ref = raw["reference"]
    assert set(ref["features"]) == set(raw["feature_names"])
    amount = ref["features"]["amount"]
    # each of the bins' shares is stored rounded to 6 decimals: their sum is 1 within bins × 5e-7
    assert amount["missing_rate"] == 0.0
    assert abs(sum(amount["bin_shares"]) - 1.0) <= len(amount["bin_shares"]) * 5e-7 + 1e-12
    assert 0.0 <= ref["score"]["quantiles"]["0.5"] <= 1.0
    assert "average_precision" in raw["metrics"]
