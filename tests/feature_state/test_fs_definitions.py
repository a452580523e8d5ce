"""Feature definitions: the packaged defaults, the YAML format, and errors with file:line and a fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from feature_state.definitions import format_seconds, load_feature_set, parse_window
from feature_state.exceptions import FeatureDefinitionError

#: names rules and models already use: they must never disappear or move before the v2 additions
STABLE = [
    "customer_order_count_1h", "customer_order_count_24h", "customer_amount_sum_24h", "customer_amount_mean_30d",
    "card_order_count_1h", "card_amount_sum_24h", "device_customer_count_24h", "ip_order_count_1h",
    "merchant_order_count_1h",
]


def test_packaged_defaults_cover_payments_fraud_and_keep_names() -> None:
    fs = load_feature_set()
    assert fs.names[: len(STABLE)] == STABLE
    for name in ("amount", "amount_to_customer_mean_30d", "account_age_days", "hour_of_day",
                 "shipping_billing_mismatch", "ip_billing_mismatch", "card_billing_mismatch"):
        assert name in fs.names
    kinds = {(f.entity, f.source, f.aggregation) for f in fs.aggregates}
    assert ("merchant", "labels", "rate") in kinds and ("customer", "labels", "count") in kinds
    assert {"customer", "card", "device", "ip", "merchant"} <= {e for e, _, _ in kinds}
    assert {d.kind for d in fs.derived} >= {"seconds_since_previous", "is_night", "is_weekend", "ratio"}
    rate = next(f for f in fs.aggregates if f.name == "merchant_fraud_rate_30d")
    assert rate.delay_s == 2 * 86400 and rate.resolution_s == 86400 and rate.tiles == 30
    assert len(set(fs.names)) == len(fs.names)


def _write(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "features.yaml"
    p.write_text("version: 1\nentities: {customer: customer_id, card: payment.card_fingerprint, "
                 "merchant: merchant_id}\n" + body)
    return p


@pytest.mark.parametrize(("body", "line", "fragment"), [
    ("features:\n  - {name: a, entity: custmer, aggregation: count, window: 1h}\n", 4,
     "unknown entity 'custmer'; did you mean 'customer'?"),
    ("features:\n  - {name: a, entity: customer, aggregation: cnt, window: 1h}\n", 4,
     "did you mean 'count'?"),
    ("features:\n  - {name: a, entity: customer, aggregation: sum, window: 1h}\n", 4, "needs a `field`"),
    ("features:\n  - {name: a, entity: customer, aggregation: sum, field: amout, window: 1h}\n", 4,
     "did you mean 'amount'?"),
    ("features:\n  - {name: a, entity: customer, aggregation: max, field: merchant_id, window: 1h}\n", 4,
     "needs a numeric field"),
    ("features:\n  - {name: a, entity: customer, aggregation: count, window: 91d}\n", 4, "between 1m and 90d"),
    ("features:\n  - {name: a, entity: customer, aggregation: count, window: 1 hour}\n", 4, "not of the form"),
    ("features:\n  - {name: a, entity: customer, aggregation: count, window: 90m}\n", 4,
     "OK"),
    ("features:\n  - {name: a, entity: customer, aggregation: count, window: 25h, resolution: 1d}\n", 4,
     "is not a whole number of 1d tiles"),
    ("features:\n  - {name: a, entity: card, source: labels, aggregation: rate, window: 30d}\n", 4,
     "labels carry only customer_id, merchant_id"),
    ("features:\n  - {name: a, entity: merchant, source: labels, aggregation: sum, window: 30d}\n", 4,
     "not available for source labels"),
    ("features:\n  - {name: a, entity: customer, aggregation: count, window: 1h, delay: 1d}\n", 4,
     "applies to source: labels only"),
    ("features:\n  - {name: a, entity: customer, aggregation: count, window: 1h, windw: 2h}\n", 4,
     "unknown key 'windw'; did you mean 'window'?"),
    ("features:\n  - {name: a, entity: customer, aggregation: count, window: 1h}\n"
     "  - {name: a, entity: card, aggregation: count, window: 1h}\n", 5, "duplicate feature name 'a'"),
    ("features:\n  - {name: a, entity: customer, aggregation: count, window: 1h}\n"
     "derived:\n  - {name: r, kind: ratio, numerator: amount, denominator: b}\n", 6, "unknown feature 'amount'"),
    ("features:\n  - {name: a, entity: customer, aggregation: count, window: 1h}\n"
     "derived:\n  - {name: r, kind: ratoi}\n", 6, "did you mean 'ratio'?"),
    ("features:\n  - {name: a, entity: customer, aggregation: count, window: 1h}\n"
     "derived:\n  - {name: s, kind: seconds_since_previous, entity: cards}\n", 6, "did you mean 'card'?"),
])
def test_invalid_definitions_name_file_line_and_fix(tmp_path: Path, body: str, line: int, fragment: str) -> None:
    path = _write(tmp_path, body)
    if fragment == "OK":  # 90m is 90 one-minute tiles: valid
        assert load_feature_set(path).aggregates[0].tiles == 90
        return
    with pytest.raises(FeatureDefinitionError) as info:
        load_feature_set(path)
    assert str(info.value).startswith(f"{path}:{line}: "), str(info.value)
    assert fragment in str(info.value)


def test_unknown_entity_path_and_bad_yaml(tmp_path: Path) -> None:
    p = tmp_path / "f.yaml"
    p.write_text("version: 1\nentities: {customer: customer_idd}\nfeatures: []\n")
    with pytest.raises(FeatureDefinitionError, match="did you mean 'customer_id'"):
        load_feature_set(p)
    p.write_text("features: [\n")
    with pytest.raises(FeatureDefinitionError, match="not valid YAML"):
        load_feature_set(p)
    p.write_text("version: 2\nfeatures: []\n")
    with pytest.raises(FeatureDefinitionError, match="unsupported definitions version 2"):
        load_feature_set(p)
    with pytest.raises(FeatureDefinitionError, match="not found"):
        load_feature_set(tmp_path / "missing.yaml")


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    p = tmp_path / "f.yaml"
    p.write_text("version: 1\nentities: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(FeatureDefinitionError, match="not valid YAML"):
        load_feature_set(p)


def test_windows_parse_and_format() -> None:
    assert parse_window("90s") == 90 and parse_window("5m") == 300 and parse_window("30d") == 30 * 86400
    assert format_seconds(3600) == "1h" and format_seconds(7 * 86400) == "7d" and format_seconds(90) == "90s"
    with pytest.raises(ValueError, match="not of the form"):
        parse_window("soon")
