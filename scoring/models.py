"""Loading verified models and hot-swapping the one that serves."""

from __future__ import annotations

import logging
from pathlib import Path

from monitoring import metrics
from scoring.artifacts import champion_version, verify
from scoring.exceptions import ModelArtifactError
from scoring.runtimes.base import ModelRuntime
from scoring.runtimes.native import NativeRuntime

log = logging.getLogger(__name__)


def load_model(models_dir: Path, version: str, feature_names: list[str] | None = None) -> ModelRuntime:
    """Verify and load one model version."""
    version_dir = models_dir / version
    if not version_dir.is_dir():
        raise ModelArtifactError(f"{version_dir}: no such model version")
    manifest = verify(version_dir, feature_names)
    return NativeRuntime(version_dir, manifest)


class ModelHolder:
    """The serving model. ``refresh()`` follows the champion pointer; a bad model never replaces a good one."""

    def __init__(self, models_dir: Path, feature_names: list[str], pinned: str | None = None) -> None:
        self.models_dir = models_dir
        self.feature_names = feature_names
        self.pinned = pinned
        self.current: ModelRuntime | None = None
        self.last_error: str | None = None
        self._tried: str | None = None

    def refresh(self) -> bool:
        """Load the wanted version if it changed. True when a new model now serves."""
        wanted = self.pinned or champion_version(self.models_dir)
        if wanted is None or (self.current is not None and self.current.version == wanted) or wanted == self._tried:
            return False
        self._tried = wanted
        try:
            model = load_model(self.models_dir, wanted, self.feature_names)
        except ModelArtifactError as exc:
            self.last_error = str(exc)
            metrics.RELOAD_REFUSED.labels("model").inc()
            log.error("refused model %s: %s (still serving %s)", wanted, exc,
                      self.current.version if self.current else "no model")
            return False
        self.current = model
        self.last_error = None
        metrics.MODEL_INFO.info({"version": model.version})
        log.info("serving model %s", model.version)
        return True
