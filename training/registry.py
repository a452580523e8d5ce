"""The model registry: versioned artifacts on disk, a champion pointer and an audit log.

``<models_dir>/<version>/`` holds the artifact (see :mod:`scoring.artifacts`);
``<models_dir>/champion`` names the serving version (replaced atomically);
``<models_dir>/audit.jsonl`` records every registration, promotion and rollback.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np
import xgboost as xgb

from scoring.artifacts import champion_version, sha256_file, verify
from training.exceptions import RegistryError


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
) -> str:
    """Write a new model version (UBJSON + manifest with checksums); return its version."""
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
        **(extra or {}),
    }
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
