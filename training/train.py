"""Train an XGBoost model on point-in-time features computed with the online code."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xgboost as xgb

from contracts.events import Label, Order
from feature_state.definitions import FeatureSet
from feature_state.replay import replay
from training.evaluate import average_precision, precision_at_k
from training.registry import promote, reference_distributions, register

log = logging.getLogger(__name__)

DEFAULT_PARAMS = {
    "objective": "binary:logistic",
    "eval_metric": "aucpr",
    "max_depth": 6,
    "eta": 0.1,
    "subsample": 0.8,
    "colsample_bytree": 0.8,
    "min_child_weight": 2,
    "tree_method": "hist",
    "nthread": 2,
    "seed": 7,
}


@dataclass
class Dataset:
    X: np.ndarray
    y: np.ndarray
    times: np.ndarray
    order_ids: list[str]
    feature_names: list[str]


def build_dataset(orders: Sequence[Order], labels: Sequence[Label], features: FeatureSet) -> Dataset:
    """Each order's features as of its event time and its label.

    Features come from :func:`feature_state.replay.replay`, the vectorised point-in-time replay that
    equals the online stores bit for bit; label-derived features only see labels known by then.
    The training label is whether the order was *ever* labelled fraud (a matured dataset).
    """
    ordered = sorted(orders, key=lambda o: (o.event_time, o.order_id))
    result = replay(features, ordered, labels)
    fraud = {lb.order_id for lb in labels if lb.label == "fraud"}
    kept = [ordered[i] for i in result.source_index.tolist()]
    X = result.matrix(np.float32)
    y = np.array([1.0 if o.order_id in fraud else 0.0 for o in kept], dtype=np.float32)
    times = np.array([o.event_time.timestamp() for o in kept])
    return Dataset(X, y, times, result.order_ids, list(result.names))


def train(ds: Dataset, *, holdout_fraction: float = 0.2, rounds: int = 200) -> tuple[xgb.Booster, dict[str, float]]:
    """Train on the earliest orders, evaluate on the latest ``holdout_fraction`` (time split)."""
    n = len(ds.y)
    cut = int(n * (1.0 - holdout_fraction))
    dtrain = xgb.DMatrix(ds.X[:cut], label=ds.y[:cut], feature_names=ds.feature_names, missing=np.nan)
    dtest = xgb.DMatrix(ds.X[cut:], label=ds.y[cut:], feature_names=ds.feature_names, missing=np.nan)
    pos = float(ds.y[:cut].sum())
    params = dict(DEFAULT_PARAMS)
    params["scale_pos_weight"] = max(1.0, (cut - pos) / max(pos, 1.0)) ** 0.5
    booster = xgb.train(params, dtrain, num_boost_round=rounds)
    scores = booster.predict(dtest)
    metrics = {
        "average_precision": round(average_precision(ds.y[cut:], scores), 6),
        "precision_at_100": round(precision_at_k(ds.y[cut:], scores, 100), 6),
        "holdout_orders": float(n - cut),
        "holdout_fraud_rate": round(float(ds.y[cut:].mean()) if n > cut else 0.0, 6),
        "train_orders": float(cut),
    }
    return booster, metrics


def train_and_register(
    orders: Sequence[Order],
    labels: Sequence[Label],
    features: FeatureSet,
    models_dir: Path,
    *,
    promote_now: bool = True,
    rounds: int = 200,
    signing_key: bytes | None = None,
) -> str:
    """Build the dataset, train, evaluate on the latest orders and register (optionally promote).

    The manifest carries reference distributions of every feature and of the score over the
    training rows, for the drift monitors.
    """
    ds = build_dataset(orders, labels, features)
    booster, metrics = train(ds, rounds=rounds)
    cut = int(len(ds.y) * 0.8)
    train_scores = booster.inplace_predict(ds.X[:cut], validate_features=False)
    reference = reference_distributions(ds.X[:cut], ds.feature_names, np.asarray(train_scores))
    window = {
        "from": str(min(o.event_time for o in orders)),
        "to": str(max(o.event_time for o in orders)),
    }
    version = register(models_dir, booster, ds.feature_names, metrics=metrics, training_window=window,
                       reference=reference, signing_key=signing_key)
    log.info("trained %s: %s", version, metrics)
    if promote_now:
        promote(models_dir, version, reason="initial model")
    return version
