"""The model registry: versioned artifacts on disk, a champion pointer and an audit log.

``<models_dir>/<version>/`` holds the artifact (see :mod:`scoring.artifacts`);
``<models_dir>/champion`` names the serving version (replaced atomically);
``<models_dir>/audit.jsonl`` records every registration, promotion and rollback.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np
import xgboost as xgb

from scoring.artifacts import champion_version, sha256_file, sign, verify
from training.exceptions import RegistryError

log = logging.getLogger(__name__)

REFERENCE_QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)


def reference_distributions(
    matrix: np.ndarray, feature_names: list[str], scores: np.ndarray | None = None, *, bins: int = 10
) -> dict[str, Any]:
    """Per-feature (and score) reference distributions for the drift monitors, stored in the manifest.

    For each feature: the missing rate, quantiles, and ``bins`` equal-frequency bin edges with the share
    of rows in each bin (what a PSI computation needs). Computed on the rows the model was trained on.
    """
    x = np.asarray(matrix, dtype=np.float64)

    def describe(col: np.ndarray) -> dict[str, Any]:
        present = col[~np.isnan(col)]
        missing = 1.0 - present.size / max(1, col.size)
        out: dict[str, Any] = {"count": int(col.shape[0]), "missing_rate": round(missing, 6)}
        if present.size:
            qs = np.quantile(present, REFERENCE_QUANTILES)
            out["quantiles"] = {str(q): float(v) for q, v in zip(REFERENCE_QUANTILES, qs, strict=True)}
            edges = np.unique(np.quantile(present, np.linspace(0, 1, bins + 1)))
            counts = np.histogram(present, bins=edges)[0] if edges.size > 1 else np.array([present.size])
            out["bin_edges"] = [float(e) for e in edges]
            out["bin_shares"] = [round(float(c) / present.size, 6) for c in counts]
            out["mean"] = float(present.mean())
        return out

    ref: dict[str, Any] = {"features": {n: describe(x[:, i]) for i, n in enumerate(feature_names)}}
    if scores is not None:
        ref["score"] = describe(np.asarray(scores, dtype=np.float64))
    return ref


def _audit(models_dir: Path, event: str, **fields: Any) -> None:
    rec = {"at": dt.datetime.now(dt.UTC).isoformat(), "event": event, **fields}
    with (models_dir / "audit.jsonl").open("a") as f:
        f.write(json.dumps(rec, default=str) + "\n")


def register(
    models_dir: Path,
    booster: xgb.Booster,
    feature_names: list[str],
    *,
    metrics: dict[str, float],
    training_window: dict[str, str],
    extra: dict[str, Any] | None = None,
    reference: dict[str, Any] | None = None,
    signing_key: bytes | None = None,
) -> str:
    """Write a new model version (UBJSON + manifest with checksums); return its version.

    ``reference`` (see :func:`reference_distributions`) is stored for drift monitoring; with a
    ``signing_key`` the manifest carries an HMAC-SHA256 ``signature`` (see :mod:`scoring.artifacts`).
    """
    models_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    raw = booster.save_raw("ubj")
    version = f"m{stamp}-{hashlib.sha256(bytes(raw)).hexdigest()[:8]}"
    vdir = models_dir / version
    vdir.mkdir(parents=True, exist_ok=False)
    (vdir / "model.ubj").write_bytes(bytes(raw))
    manifest = {
        "version": version,
        "format": "xgboost-ubj",
        "feature_names": feature_names,
        "files": {"model.ubj": sha256_file(vdir / "model.ubj")},
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "training_window": training_window,
        "metrics": metrics,
        "library_versions": {"xgboost": xgb.__version__, "numpy": np.__version__, "python": platform.python_version()},
        "model_sha256": sha256_file(vdir / "model.ubj"),
        **({"reference": reference} if reference is not None else {}),
        **(extra or {}),
    }
    if signing_key is not None:
        manifest["signature"] = sign(manifest, signing_key)
    (vdir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    _audit(models_dir, "register", version=version, metrics=metrics)
    return version


def promote(models_dir: Path, version: str, *, reason: str = "manual") -> None:
    """Make ``version`` the champion (atomic pointer swap), after verifying its artifact."""
    vdir = models_dir / version
    if not vdir.is_dir():
        known = ", ".join(list_versions(models_dir)) or "none"
        raise RegistryError(f"unknown model version {version!r} (known: {known})")
    verify(vdir)
    previous = champion_version(models_dir)
    tmp = models_dir / f".champion.{os.getpid()}"
    tmp.write_text(version + "\n")
    os.replace(tmp, models_dir / "champion")
    _audit(models_dir, "promote", version=version, previous=previous, reason=reason)


def list_versions(models_dir: Path) -> list[str]:
    if not models_dir.is_dir():
        return []
    return sorted(p.name for p in models_dir.iterdir() if (p / "manifest.json").is_file())


def history(models_dir: Path) -> list[dict[str, Any]]:
    """Every audited registry event, oldest first."""
    path = models_dir / "audit.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def rollback(models_dir: Path, *, reason: str = "manual rollback") -> str:
    """Make the champion before the current one the champion again; returns that version.

    Walks the audit log's promotions backwards and picks the latest earlier champion that still
    verifies (a tampered or deleted artifact is skipped, never served).
    """
    current = champion_version(models_dir)
    champions = [e["version"] for e in history(models_dir) if e.get("event") in ("promote", "rollback")]
    candidates = [v for v in reversed(champions) if v != current]
    for version in candidates:
        try:
            verify(models_dir / version)
        except Exception as exc:  # noqa: BLE001 - an unusable old version is skipped, the next one is tried
            log.warning("rollback: skipping %s, it does not verify: %s", version, exc)
            continue
        tmp = models_dir / f".champion.{os.getpid()}"
        tmp.write_text(version + "\n")
        os.replace(tmp, models_dir / "champion")
        _audit(models_dir, "rollback", version=version, previous=current, reason=reason)
        return version
    raise RegistryError(f"no earlier champion to roll back to (current: {current or 'none'})")
