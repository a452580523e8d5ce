"""Feature store backends, chosen by a type name in the settings and imported lazily.

=================  ====================================  =================================
type               backend                               driver (pip extra)
=================  ====================================  =================================
``memory``         in-process, optional snapshot file    (none)
``redis``          one Redis node                        redis-py (always installed)
``redis_cluster``  Redis Cluster                         redis-py (always installed)
``dynamodb``       Amazon DynamoDB (or a local API)      boto3 (``fraudscore[aws]``)
=================  ====================================  =================================
"""

from __future__ import annotations

import importlib

from contracts.config import FeatureStoreSettings
from contracts.exceptions import ConfigError
from feature_state.definitions import FeatureSet
from feature_state.stores.base import FeatureStore

#: type name → (module, factory function, pip extra that provides its driver)
STORE_CLASS_FOR_TYPE: dict[str, tuple[str, str, str | None]] = {
    "memory": ("feature_state.stores.memory", "from_settings", None),
    "redis": ("feature_state.stores.redis", "from_settings", None),
    "redis_cluster": ("feature_state.stores.redis", "from_settings", None),
    "dynamodb": ("feature_state.stores.dynamodb", "from_settings", "aws"),
}


def create_store(settings: FeatureStoreSettings, features: FeatureSet) -> FeatureStore:
    """Build the configured store."""
    try:
        module_name, factory_name, extra = STORE_CLASS_FOR_TYPE[settings.type]
    except KeyError:
        raise ConfigError(
            f"unknown feature store type {settings.type!r}; known: {', '.join(STORE_CLASS_FOR_TYPE)}"
        ) from None
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = f" (pip install 'fraudscore[{extra}]')" if extra else ""
        raise ConfigError(
            f"feature store {settings.type!r} needs a driver that is not installed{hint}: {exc}"
        ) from None
    store: FeatureStore = getattr(module, factory_name)(features, settings)
    return store
