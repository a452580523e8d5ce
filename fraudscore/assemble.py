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
from scoring.models import ModelHolder, RuntimeOptions
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
            "model_runtime": self.models.current.kind if self.models.current else None,
            "shadows": sorted(self.models.shadows),
            "ruleset": self.rules.current.version if self.rules.current else None,
            "ruleset_error": self.rules.last_error,
        }
        return True, detail


def rules_dir(settings: Settings) -> Path:
    return settings.rules.dir or PACKAGED_RULES


def runtime_options(settings: Settings, *, batch_threads: int = 1) -> RuntimeOptions:
    """How the scoring package loads models, from the settings."""
    sc = settings.scoring
    return RuntimeOptions(
        runtime=sc.runtime,
        cache_dir=settings.data_dir / "compiled",
        signing_key=sc.model_signing_key.get_secret_value().encode() if sc.model_signing_key else None,
        sagemaker_endpoint=sc.sagemaker_endpoint,
        sagemaker_endpoint_url=sc.sagemaker_endpoint_url,
        sagemaker_region=sc.sagemaker_region,
        sagemaker_timeout_s=sc.sagemaker_timeout_ms / 1000.0,
        sagemaker_max_attempts=sc.sagemaker_max_attempts,
        sagemaker_contributions=sc.sagemaker_contributions,
        batch_threads=batch_threads,
    )


def build_models(settings: Settings, features: FeatureSet, *, background_compile: bool = False,
                 batch_threads: int = 1) -> ModelHolder:
    models = ModelHolder(
        settings.models_dir, features.names, pinned=settings.scoring.model_version,
        options=runtime_options(settings, batch_threads=batch_threads),
        shadows=settings.scoring.shadow_models, background_compile=background_compile,
    )
    models.refresh()
    return models


def build_parts(settings: Settings, *, background_compile: bool = False) -> Parts:
    """The platform's parts. ``background_compile``: let ``scoring.runtime: auto`` build the compiled runtime
    in the background — worth it only in processes that score single orders (gRPC ``serve``, ``up``)."""
    features = load_feature_set(settings.feature_store.definitions)
    store = create_store(settings.feature_store, features)
    models = build_models(settings, features, background_compile=background_compile)
    rules = RulesHolder(rules_dir(settings), features)
    rules.refresh()
    pipeline = DecisionPipeline(
        store,
        models,
        rules,
        fail_mode=settings.scoring.fail_mode,
        reasons_top_k=settings.scoring.reasons_top_k,
        store_timeout_s=settings.feature_store.timeout_ms / 1000.0,
        on_feature_store_down=settings.scoring.on_feature_store_down,
        feature_budget_fraction=settings.scoring.feature_budget_fraction,
        reasons_for=settings.scoring.reasons_for,
    )
    return Parts(features, store, models, rules, pipeline)
