"""Feature store backends, chosen by a type name in the settings and imported lazily."""

from __future__ import annotations

import importlib

from contracts.config import FeatureStoreSettings
from contracts.exceptions import ConfigError
from feature_state.definitions import FeatureSet
from feature_state.stores.base import FeatureStore

#: type name → (module, class, pip extra that provides its driver)
STORE_CLASS_FOR_TYPE: dict[str, tuple[str, str, str | None]] = {
    "memory": ("feature_state.stores.memory", "MemoryStore", None),
}


def create_store(settings: FeatureStoreSettings, features: FeatureSet) -> FeatureStore:
    """Build the configured store."""
    try:
        module_name, class_name, extra = STORE_CLASS_FOR_TYPE[settings.type]
    except KeyError:
        raise ConfigError(
            f"feature store type {settings.type!r} is not available yet; known: {', '.join(STORE_CLASS_FOR_TYPE)}"
        ) from None
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = f" (pip install 'fraudscore[{extra}]')" if extra else ""
        raise ConfigError(f"feature store {settings.type!r} needs a driver that is not installed{hint}: {exc}") from None
    cls = getattr(module, class_name)
    if settings.type == "memory":
        store: FeatureStore = cls(features, allowed_lateness_s=settings.allowed_lateness_s)
    else:  # pragma: no cover - other backends take their settings
        store = cls(features, settings)
    return store
