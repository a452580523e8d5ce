from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Decision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_UNSPECIFIED: _ClassVar[Decision]
    ALLOW: _ClassVar[Decision]
    REVIEW: _ClassVar[Decision]
    CHALLENGE: _ClassVar[Decision]
    BLOCK: _ClassVar[Decision]
DECISION_UNSPECIFIED: Decision
ALLOW: Decision
REVIEW: Decision
CHALLENGE: Decision
BLOCK: Decision

class Payment(_message.Message):
    __slots__ = ("method", "card_fingerprint", "card_bin", "card_country")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    CARD_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    CARD_BIN_FIELD_NUMBER: _ClassVar[int]
    CARD_COUNTRY_FIELD_NUMBER: _ClassVar[int]
    method: str
    card_fingerprint: str
    card_bin: str
    card_country: str
    def __init__(self, method: _Optional[str] = ..., card_fingerprint: _Optional[str] = ..., card_bin: _Optional[str] = ..., card_country: _Optional[str] = ...) -> None: ...

class Item(_message.Message):
    __slots__ = ("sku", "category", "quantity", "unit_price")
    SKU_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    UNIT_PRICE_FIELD_NUMBER: _ClassVar[int]
    sku: str
    category: str
    quantity: int
    unit_price: float
    def __init__(self, sku: _Optional[str] = ..., category: _Optional[str] = ..., quantity: _Optional[int] = ..., unit_price: _Optional[float] = ...) -> None: ...

class Order(_message.Message):
    __slots__ = ("order_id", "event_time", "customer_id", "amount", "currency", "account_created_at", "merchant_id", "terminal_id", "channel", "payment", "ip_address", "ip_country", "device_id", "email_domain", "billing_country", "shipping_country", "items")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    MERCHANT_ID_FIELD_NUMBER: _ClassVar[int]
    TERMINAL_ID_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_FIELD_NUMBER: _ClassVar[int]
    IP_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    IP_COUNTRY_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    EMAIL_DOMAIN_FIELD_NUMBER: _ClassVar[int]
    BILLING_COUNTRY_FIELD_NUMBER: _ClassVar[int]
    SHIPPING_COUNTRY_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    event_time: str
    customer_id: str
    amount: float
    currency: str
    account_created_at: str
    merchant_id: str
    terminal_id: str
    channel: str
    payment: Payment
    ip_address: str
    ip_country: str
    device_id: str
    email_domain: str
    billing_country: str
    shipping_country: str
    items: _containers.RepeatedCompositeFieldContainer[Item]
    def __init__(self, order_id: _Optional[str] = ..., event_time: _Optional[str] = ..., customer_id: _Optional[str] = ..., amount: _Optional[float] = ..., currency: _Optional[str] = ..., account_created_at: _Optional[str] = ..., merchant_id: _Optional[str] = ..., terminal_id: _Optional[str] = ..., channel: _Optional[str] = ..., payment: _Optional[_Union[Payment, _Mapping]] = ..., ip_address: _Optional[str] = ..., ip_country: _Optional[str] = ..., device_id: _Optional[str] = ..., email_domain: _Optional[str] = ..., billing_country: _Optional[str] = ..., shipping_country: _Optional[str] = ..., items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("order", "include_features")
    ORDER_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_FEATURES_FIELD_NUMBER: _ClassVar[int]
    order: Order
    include_features: bool
    def __init__(self, order: _Optional[_Union[Order, _Mapping]] = ..., include_features: _Optional[bool] = ...) -> None: ...

class MatchedRule(_message.Message):
    __slots__ = ("name", "action", "shadow", "error")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    name: str
    action: Decision
    shadow: bool
    error: str
    def __init__(self, name: _Optional[str] = ..., action: _Optional[_Union[Decision, str]] = ..., shadow: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class Reason(_message.Message):
    __slots__ = ("feature", "value", "contribution", "text")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    feature: str
    value: float
    contribution: float
    text: str
    def __init__(self, feature: _Optional[str] = ..., value: _Optional[float] = ..., contribution: _Optional[float] = ..., text: _Optional[str] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("order_id", "decision", "score", "model_version", "ruleset_version", "matched_rules", "reasons", "degraded", "degraded_reasons", "shadow_scores", "latency_ms", "features")
    class ShadowScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    RULESET_VERSION_FIELD_NUMBER: _ClassVar[int]
    MATCHED_RULES_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_REASONS_FIELD_NUMBER: _ClassVar[int]
    SHADOW_SCORES_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    decision: Decision
    score: float
    model_version: str
    ruleset_version: str
    matched_rules: _containers.RepeatedCompositeFieldContainer[MatchedRule]
    reasons: _containers.RepeatedCompositeFieldContainer[Reason]
    degraded: bool
    degraded_reasons: _containers.RepeatedScalarFieldContainer[str]
    shadow_scores: _containers.ScalarMap[str, float]
    latency_ms: float
    features: _containers.ScalarMap[str, float]
    def __init__(self, order_id: _Optional[str] = ..., decision: _Optional[_Union[Decision, str]] = ..., score: _Optional[float] = ..., model_version: _Optional[str] = ..., ruleset_version: _Optional[str] = ..., matched_rules: _Optional[_Iterable[_Union[MatchedRule, _Mapping]]] = ..., reasons: _Optional[_Iterable[_Union[Reason, _Mapping]]] = ..., degraded: _Optional[bool] = ..., degraded_reasons: _Optional[_Iterable[str]] = ..., shadow_scores: _Optional[_Mapping[str, float]] = ..., latency_ms: _Optional[float] = ..., features: _Optional[_Mapping[str, float]] = ...) -> None: ...

class ScoreBatchRequest(_message.Message):
    __slots__ = ("orders", "include_features")
    ORDERS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_FEATURES_FIELD_NUMBER: _ClassVar[int]
    orders: _containers.RepeatedCompositeFieldContainer[Order]
    include_features: bool
    def __init__(self, orders: _Optional[_Iterable[_Union[Order, _Mapping]]] = ..., include_features: _Optional[bool] = ...) -> None: ...

class ScoreBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ScoreResponse]
    def __init__(self, results: _Optional[_Iterable[_Union[ScoreResponse, _Mapping]]] = ...) -> None: ...
