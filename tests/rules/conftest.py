"""Fixtures for the rules tests: feature definitions, a type environment, rule files on disk."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from feature_state.definitions import FeatureSet, load_feature_set
from rules.schema import Environment

BASE_ORDER = {
    "order_id": "o-1",
    "event_time": "2024-01-15T12:00:00+00:00",
    "customer_id": "c-1",
    "amount": 12.5,
    "currency": "EUR",
}


@pytest.fixture(scope="session")
def feature_set() -> FeatureSet:
    return load_feature_set(None)


@pytest.fixture(scope="session")
def env(feature_set: FeatureSet) -> Environment:
    return Environment.build(feature_set, {"disposable_domains": 3, "vip": 2})


RulesWriter = Callable[..., Path]


@pytest.fixture
def write_rules(tmp_path: Path) -> RulesWriter:
    """Write rule files into a fresh directory: ``write_rules(rules="...yaml...", other="...")``."""

    def factory(directory: str = "rules", **files: str) -> Path:
        d = tmp_path / directory
        d.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            target = d / (name if "." in name else f"{name}.yaml")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(textwrap.dedent(text))
        return d

    return factory
