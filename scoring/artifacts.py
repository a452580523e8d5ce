"""Model artifacts: an XGBoost model file plus a manifest, verified before use.

Layout of one version in the models directory::

    <models_dir>/<version>/model.ubj        XGBoost UBJSON (or model.json)
    <models_dir>/<version>/manifest.json    feature names and order, sha256 of every file, …
    <models_dir>/champion                   the version that serves (one line)
    <models_dir>/shadows                    versions scored alongside, never deciding (one per line; optional)

Manifest fields (``manifest.json``; written by :func:`training.registry.register`):

=======================  =====================================================================
``version``              the version name (also the directory name)
``format``               ``xgboost-ubj`` or ``xgboost-json``
``feature_names``        the model's input columns, in order
``files``                file name → sha256 of every file of the version
``created_at``           when it was registered
``training_window``      ``{"from": …, "to": …}`` event times of the training orders
``metrics``              evaluation metrics (average precision, precision@100, …)
``reference``            optional reference distributions (per-feature quantiles, missing rate,
                         score quantiles) that the drift monitors compare live traffic with
``library_versions``     xgboost, numpy, python that trained it
``signature``            optional ``hmac-sha256:<hex>`` over the canonical manifest (all fields but
                         this one, sorted keys, compact separators) with the configured key
=======================  =====================================================================

Loading verifies every checksum, the signature when a key is configured (an unsigned or badly
signed manifest is then refused), that the model file is XGBoost JSON / UBJSON (pickles and
anything else are refused before XGBoost sees a byte) and that every model feature exists in the
feature definitions.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scoring.exceptions import ModelArtifactError

MODEL_FILES = ("model.ubj", "model.json")
_PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
SIGNATURE_PREFIX = "hmac-sha256:"


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

    @property
    def model_sha256(self) -> str:
        return self.files[self.model_file]


def canonical_bytes(raw: dict[str, Any]) -> bytes:
    """The bytes a signature covers: every field except ``signature``, sorted keys, compact."""
    body = {k: v for k, v in raw.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()


def sign(raw: dict[str, Any], key: bytes) -> str:
    """The ``signature`` value for a manifest."""
    return SIGNATURE_PREFIX + hmac.new(key, canonical_bytes(raw), hashlib.sha256).hexdigest()


def read_manifest(version_dir: Path) -> Manifest:
    path = version_dir / "manifest.json"
    if not path.is_file():
        raise ModelArtifactError(f"{version_dir}: manifest.json is missing")
    try:
        raw = json.loads(path.read_text())
        files = dict(raw["files"])
        names = tuple(str(n) for n in raw["feature_names"])
        version = str(raw["version"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelArtifactError(f"{path}: invalid manifest ({type(exc).__name__}: {exc})") from None
    model_file = next((f for f in MODEL_FILES if f in files), None)
    if model_file is None:
        raise ModelArtifactError(
            f"{path}: no model file (expected one of {', '.join(MODEL_FILES)}); only XGBoost JSON/UBJSON load, "
            "pickles are refused"
        )
    if not names:
        raise ModelArtifactError(f"{path}: feature_names is empty")
    return Manifest(version, names, model_file, files, raw)


def _check_model_bytes(path: Path) -> None:
    with path.open("rb") as f:
        head = f.read(64)
    if head[:2] in _PICKLE_MAGIC:
        raise ModelArtifactError(f"{path}: looks like a pickle; only XGBoost JSON/UBJSON load (pickles are never read)")
    first = head.lstrip()[:1]
    if first != b"{":  # both JSON and UBJSON models are one top-level object
        raise ModelArtifactError(f"{path}: not an XGBoost JSON/UBJSON model (it does not start with an object)")


def verify(
    version_dir: Path, feature_names: list[str] | None = None, *, signing_key: bytes | None = None
) -> Manifest:
    """Check checksums, signature, format and features; return the manifest."""
    manifest = read_manifest(version_dir)
    if signing_key is not None:
        sig = manifest.raw.get("signature")
        if not sig:
            raise ModelArtifactError(
                f"{version_dir}: manifest is not signed but a model signing key is configured; sign it "
                "(`fraudscore artifact sign VERSION`) or remove the key"
            )
        if not hmac.compare_digest(str(sig), sign(manifest.raw, signing_key)):
            raise ModelArtifactError(f"{version_dir}: manifest signature does not match; refusing to load")
    for name, digest in manifest.files.items():
        f = version_dir / name
        if Path(name).name != name:
            raise ModelArtifactError(f"{version_dir}/manifest.json: file name {name!r} must not contain a path")
        if not f.is_file():
            raise ModelArtifactError(f"{f}: listed in the manifest but missing")
        actual = sha256_file(f)
        if actual != digest:
            raise ModelArtifactError(
                f"{f}: sha256 mismatch (manifest {digest[:12]}…, file {actual[:12]}…); refusing to load"
            )
    _check_model_bytes(version_dir / manifest.model_file)
    if feature_names is not None:
        missing = [n for n in manifest.feature_names if n not in feature_names]
        if missing:
            raise ModelArtifactError(
                f"{version_dir}: model needs features not in the feature definitions: {', '.join(missing)}"
            )
    return manifest


def write_signature(version_dir: Path, key: bytes) -> str:
    """Sign an existing version's manifest in place (atomic replace); returns the signature."""
    manifest = read_manifest(version_dir)
    raw = dict(manifest.raw)
    raw["signature"] = sign(raw, key)
    tmp = version_dir / ".manifest.json.tmp"
    tmp.write_text(json.dumps(raw, indent=2, sort_keys=True))
    tmp.replace(version_dir / "manifest.json")
    return str(raw["signature"])


def champion_version(models_dir: Path) -> str | None:
    pointer = models_dir / "champion"
    if not pointer.is_file():
        return None
    text = pointer.read_text().strip()
    return text or None


def shadow_versions(models_dir: Path) -> list[str]:
    """Versions listed in ``<models_dir>/shadows`` (one per line, ``#`` comments), in order."""
    pointer = models_dir / "shadows"
    if not pointer.is_file():
        return []
    out = []
    for line in pointer.read_text().splitlines():
        v = line.split("#", 1)[0].strip()
        if v and v not in out:
            out.append(v)
    return out
