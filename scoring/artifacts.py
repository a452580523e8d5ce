"""Model artifacts: an XGBoost model file plus a manifest, verified before use.

Layout of one version in the models directory::

    <models_dir>/<version>/model.ubj        XGBoost UBJSON (or model.json)
    <models_dir>/<version>/manifest.json    feature names and order, sha256 of every file, …
    <models_dir>/champion                   the version that serves (one line)

Loading verifies every checksum in the manifest and that the model's features exist in the
feature definitions. Pickles are refused: only XGBoost's JSON / UBJSON formats load.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scoring.exceptions import ModelArtifactError

MODEL_FILES = ("model.ubj", "model.json")
_PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Manifest:
    version: str
    feature_names: tuple[str, ...]
    model_file: str
    files: dict[str, str]
    raw: dict[str, Any]


def read_manifest(version_dir: Path) -> Manifest:
    path = version_dir / "manifest.json"
    if not path.is_file():
        raise ModelArtifactError(f"{version_dir}: manifest.json is missing")
    try:
        raw = json.loads(path.read_text())
        files = dict(raw["files"])
        names = tuple(raw["feature_names"])
        version = str(raw["version"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelArtifactError(f"{path}: invalid manifest ({exc})") from None
    model_file = next((f for f in MODEL_FILES if f in files), None)
    if model_file is None:
        raise ModelArtifactError(f"{path}: no model file (expected one of {', '.join(MODEL_FILES)}); pickles are refused")
    return Manifest(version, names, model_file, files, raw)


def verify(version_dir: Path, feature_names: list[str] | None = None) -> Manifest:
    """Check checksums, refuse pickles, check features; return the manifest."""
    manifest = read_manifest(version_dir)
    for name, digest in manifest.files.items():
        f = version_dir / name
        if not f.is_file():
            raise ModelArtifactError(f"{f}: listed in the manifest but missing")
        actual = sha256_file(f)
        if actual != digest:
            raise ModelArtifactError(f"{f}: sha256 mismatch (manifest {digest[:12]}…, file {actual[:12]}…); refusing to load")
    head = (version_dir / manifest.model_file).read_bytes()[:2]
    if head in _PICKLE_MAGIC:
        raise ModelArtifactError(f"{version_dir / manifest.model_file}: looks like a pickle; only XGBoost JSON/UBJSON load")
    if feature_names is not None:
        missing = [n for n in manifest.feature_names if n not in feature_names]
        if missing:
            raise ModelArtifactError(
                f"{version_dir}: model needs features not in the feature definitions: {', '.join(missing)}"
            )
    return manifest


def champion_version(models_dir: Path) -> str | None:
    pointer = models_dir / "champion"
    if not pointer.is_file():
        return None
    text = pointer.read_text().strip()
    return text or None
