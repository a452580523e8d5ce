"""Build the platform's parts from settings (the one place that wires packages together)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from contracts.config import Settings
from feature_state.definitions import FeatureSet, load_feature_set
from feature_state.stores import create_store
from feature_state.stores.base import FeatureStore
from rules.reload import RulesHolder
from rules.ruleset import PACKAGED_RULES
from scoring.models import ModelHolder
from scoring.pipeline import DecisionPipeline


@dataclass
class Parts:
    features: FeatureSet
    store: FeatureStore
    models: ModelHolder
    rules: RulesHolder
    pipeline: DecisionPipeline

    def health(self) -> tuple[bool, dict[str, object]]:
        detail: dict[str, object] = {
            "model": self.models.current.version if self.models.current else None,
            "model_error": self.models.last_error,
            "ruleset": self.rules.current.version if self.rules.current else None,
            "ruleset_error": self.rules.last_error,
        }
        return True, detail


def rules_dir(settings: Settings) -> Path:
    return settings.rules.dir or PACKAGED_RULES


def build_parts(settings: Settings) -> Parts:
    features = load_feature_set(settings.feature_store.definitions)
    store = create_store(settings.feature_store, features)
    models = ModelHolder(settings.models_dir, features.names, pinned=settings.scoring.model_version)
    models.refresh()
    rules = RulesHolder(rules_dir(settings))
    rules.refresh()
    pipeline = DecisionPipeline(
        store,
        models,
        rules,
        fail_mode=settings.scoring.fail_mode,
        reasons_top_k=settings.scoring.reasons_top_k,
        store_timeout_s=settings.feature_store.timeout_ms / 1000.0,
    )
    return Parts(features, store, models, rules, pipeline)
