"""Conversion between the gRPC messages and the event contracts (one schema validates both)."""

from __future__ import annotations

from typing import Any

import msgspec

from contracts.events import Decision, Order, from_builtins
from contracts.exceptions import ContractError, FieldError
from contracts.pan import bytes_may_contain_pan
from scoring.proto.fraudscore.v1 import scoring_pb2 as pb

_ORDER_STRINGS = (
    "order_id", "event_time", "customer_id", "currency", "account_created_at", "merchant_id", "terminal_id",
    "channel", "ip_address", "ip_country", "device_id", "email_domain", "billing_country", "shipping_country",
)
_PAYMENT_STRINGS = ("method", "card_fingerprint", "card_bin", "card_country")
DECISION_TO_PB = {"allow": pb.ALLOW, "review": pb.REVIEW, "challenge": pb.CHALLENGE, "block": pb.BLOCK}


def order_dict(msg: pb.Order) -> dict[str, Any]:
    """The proto order as event builtins; empty strings mean "not sent"."""
    d: dict[str, Any] = {}
    for name in _ORDER_STRINGS:
        v = getattr(msg, name)
        if v:
            d[name] = v
    if msg.HasField("amount"):
        d["amount"] = msg.amount
    if msg.HasField("payment"):
        p = {n: v for n in _PAYMENT_STRINGS if (v := getattr(msg.payment, n))}
        if p:
            d["payment"] = p
    if msg.items:
        items = []
        for it in msg.items:
            item: dict[str, Any] = {"quantity": it.quantity}
            if it.sku:
                item["sku"] = it.sku
            if it.category:
                item["category"] = it.category
            if it.HasField("unit_price"):
                item["unit_price"] = it.unit_price
            items.append(item)
        d["items"] = items
    return d


def order_from_proto(msg: pb.Order, prefix: str = "order") -> Order:
    """Validate a proto order; errors name fields as ``order.amount`` (or ``orders[3].amount``).

    Fast path: the card-number scan first runs the cheap raw-bytes pre-filter over the serialized
    message (a PAN inside any string field appears there as a run of digits, so "no candidate" is
    certain); only a candidate triggers the per-field scan that names the offending fields.
    """
    d = order_dict(msg)
    if not bytes_may_contain_pan(msg.SerializeToString()):
        try:
            return msgspec.convert(d, Order)
        except msgspec.ValidationError:
            pass  # fall through: from_builtins explains every invalid field
    try:
        return from_builtins(Order, d)
    except ContractError as exc:
        errors = [FieldError(prefix + e.path[1:] if e.path.startswith("$") else e.path, e.message) for e in exc.errors]
        raise ContractError("invalid request: " + "; ".join(str(e) for e in errors), errors) from None


def decision_to_proto(d: Decision, include_features: bool = False) -> pb.ScoreResponse:
    resp = pb.ScoreResponse(
        order_id=d.order_id,
        decision=DECISION_TO_PB[d.decision],
        model_version=d.model_version or "",
        ruleset_version=d.ruleset_version or "",
        degraded=d.degraded,
        degraded_reasons=d.degraded_reasons,
        latency_ms=d.latency_ms,
    )
    if d.score is not None:
        resp.score = d.score
    for m in d.matched_rules:
        resp.matched_rules.add(name=m.name, action=DECISION_TO_PB[m.action], shadow=m.mode == "shadow",
                               error=m.error or "")
    for r in d.reasons:
        reason = resp.reasons.add(feature=r.feature, contribution=r.contribution, text=r.text)
        if r.value is not None:
            reason.value = r.value
    for k, v in d.shadow.items():
        resp.shadow_scores[k] = v
    if include_features:
        for k, fv in d.features.items():
            if fv is not None:
                resp.features[k] = fv
    return resp
