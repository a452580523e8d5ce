"""Typed settings: one model per component, one frozen top-level :class:`Settings`.

Settings come from, in increasing priority: the defaults below (which work on one machine with
nothing installed), a YAML file (``--config FILE`` or ``$FRAUDSCORE_CONFIG``), then environment
variables. Environment variables are read only by :func:`load_settings`, which the CLI calls at
its entry point; nothing else in the code base looks at ``os.environ``.

Environment variables:

========================  ==========================================================
``KAFKA_BOOTSTRAP``       Kafka bootstrap servers; unset → the embedded broker
``REDIS_URL``             Redis URL; set → the feature store is Redis (unless set)
``FRAUDSCORE_CONFIG``     path of the YAML settings file
``FRAUDSCORE_DATA_DIR``   where models, state and reports live (default ``.fraudscore``)
``FRAUDSCORE_GRPC_PORT``  gRPC port (default 50051)
``FRAUDSCORE_METRICS_PORT``  Prometheus metrics / health HTTP port (default 9108)
``FRAUDSCORE__A__B=v``    any field, by its dotted path (``FRAUDSCORE__KAFKA__PARTITIONS=12``)
========================  ==========================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from contracts.exceptions import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TopicNames(_Section):
    """Names of the topics (Kafka) or streams (Kinesis) the platform uses."""

    orders: str = Field("orders", description="incoming orders to score")
    labels: str = Field("labels", description="labelled outcomes: chargebacks, reviews, reports")
    decisions: str = Field("decisions", description="one decision record per scored order")
    actions: str = Field("actions", description="effects to carry out (block, review, challenge)")
    dead_letters: str = Field("dead-letters", description="malformed or unprocessable events, with the error")
    retrain_requests: str = Field("retrain-requests", description="requests from monitors to retrain")


class KafkaSettings(_Section):
    """Where the event log lives."""

    bootstrap: str | None = Field(
        None, description="bootstrap servers, host:port[,host:port]; None starts the embedded broker"
    )
    embedded_host: str = Field("127.0.0.1", description="address the embedded broker listens on")
    embedded_port: int = Field(9092, ge=1, le=65535, description="port of the embedded broker")
    partitions: int = Field(6, ge=1, description="partitions per topic when fraudscore creates topics")
    replication_factor: int = Field(1, ge=1, description="replication factor when creating topics")
    topics: TopicNames = Field(default_factory=TopicNames, description="topic names")
    consumer_group: str = Field("fraudscore-workers", description="consumer group of the stream workers")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol (MSK: SASL_SSL or SSL)"
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism when security_protocol is SASL_*"
    )
    sasl_username: str | None = Field(None, description="SASL user name")
    sasl_password: SecretStr | None = Field(None, description="SASL password")
    enable_idempotence: bool = Field(
        False,
        description="Kafka idempotent producer; turn on for Apache Kafka / MSK (the embedded broker lacks it)",
    )


class FeatureStoreSettings(_Section):
    """Where rolling aggregates live."""

    type: Literal["memory", "redis", "redis_cluster", "dynamodb"] = Field(
        "memory", description="backend: memory (embedded, in-process), redis, redis_cluster, dynamodb"
    )
    definitions: Path | None = Field(
        None, description="feature definitions YAML; None uses the packaged defaults"
    )
    redis_url: SecretStr | None = Field(None, description="redis://[:password@]host:port/db (may hold a password)")
    redis_key_prefix: str = Field("fs", min_length=1, description="prefix of every feature key in Redis")
    timeout_ms: int = Field(50, ge=1, description="per-call timeout against the store")
    write_timeout_ms: int = Field(
        2000, ge=1, description="timeout of one batch write (stream path); reads use timeout_ms"
    )
    dynamodb_table: str = Field("fraudscore-features", description="DynamoDB table name")
    aws_region: str = Field("us-east-1", description="AWS region for DynamoDB")
    aws_endpoint_url: str | None = Field(None, description="endpoint override (a local DynamoDB API server)")
    persist_path: Path | None = Field(None, description="memory store: snapshot file to persist to, if any")
    allowed_lateness_s: float = Field(
        3600.0, ge=0, description="how late (event time) an event may arrive and still be applied"
    )


class TlsSettings(_Section):
    """TLS for the gRPC server; mTLS when a client CA is given."""

    cert_file: Path | None = Field(None, description="server certificate chain (PEM)")
    key_file: Path | None = Field(None, description="server private key (PEM)")
    client_ca_file: Path | None = Field(None, description="CA that signs client certificates; set → mTLS required")


class ScoringSettings(_Section):
    """The scoring server and the decision pipeline."""

    grpc_host: str = Field("127.0.0.1", description="address the gRPC server binds")
    grpc_port: int = Field(50051, ge=1, le=65535, description="gRPC port")
    model_version: str | None = Field(None, description="pin a model version; None follows the registry's champion")
    runtime: Literal["auto", "native", "compiled", "sagemaker"] = Field(
        "auto", description="model runtime; auto = compiled when it builds and passes parity, else native"
    )
    sagemaker_endpoint: str | None = Field(None, description="SageMaker endpoint name (runtime=sagemaker)")
    sagemaker_endpoint_url: str | None = Field(None, description="sagemaker-runtime endpoint override")
    default_deadline_ms: float = Field(250.0, gt=0, description="deadline when the client sends none")
    max_message_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="max gRPC message size")
    max_concurrency: int = Field(256, ge=1, description="in-flight calls before RESOURCE_EXHAUSTED")
    auth_tokens: tuple[SecretStr, ...] = Field((), description="accepted bearer tokens; empty = no token auth")
    tls: TlsSettings = Field(default_factory=TlsSettings, description="TLS / mTLS")
    reflection: bool = Field(False, description="enable gRPC server reflection")
    fail_mode: Literal["open", "closed"] = Field(
        "open",
        description="when neither model nor rules can answer: open → allow, closed → review",
    )
    reasons_top_k: int = Field(3, ge=0, le=20, description="number of reasons in each answer")
    reasons_for: Literal["all", "non_allow"] = Field(
        "all",
        description="which answers carry reason codes: all, or only review/challenge/block (saves the "
        "contributions computation on allowed orders; the decision record keeps the features to explain later)",
    )
    model_signing_key: SecretStr | None = Field(
        None, description="HMAC key: when set, only model manifests signed with it load (hmac-sha256)"
    )
    shadow_models: tuple[str, ...] = Field(
        (), description="model versions scored alongside the champion, recorded in `shadow`, never deciding "
        "(added to those listed in <models_dir>/shadows)"
    )
    on_feature_store_down: Literal["score", "rules_only"] = Field(
        "score",
        description="feature store down or late: score = model without velocity features (+ rules); "
        "rules_only = no model score, rules and fail_mode decide",
    )
    feature_budget_fraction: float = Field(
        0.5, gt=0, le=1, description="share of the remaining deadline the feature read may use"
    )
    min_deadline_ms: float = Field(
        1.0, ge=0, description="a call arriving with less time left than this fails fast with DEADLINE_EXCEEDED"
    )
    workers: int = Field(1, ge=1, le=64, description="`fraudscore serve` processes sharing the port (SO_REUSEPORT)")
    shutdown_grace_s: float = Field(10.0, ge=0, description="on SIGTERM: how long in-flight calls may finish")
    model_reload_interval_s: float = Field(2.0, gt=0, description="how often to look for a new champion / shadows")
    publish_buffer: int = Field(10_000, ge=1, description="decisions buffered for Kafka before dropping (never blocks)")
    sagemaker_region: str = Field("us-east-1", description="AWS region of the SageMaker endpoint")
    sagemaker_timeout_ms: float = Field(500.0, gt=0, description="connect and read timeout per endpoint call")
    sagemaker_max_attempts: int = Field(2, ge=1, description="attempts per endpoint call (botocore standard retries)")
    sagemaker_contributions: bool = Field(
        True, description="ask the endpoint for contributions (fraudscore's container gives them; AWS's ignores it)"
    )
    sagemaker_port: int = Field(8080, ge=1, le=65535, description="`serve --sagemaker`: HTTP port (SageMaker: 8080)")

    @field_validator("auth_tokens", "shadow_models", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        """Environment variables carry lists as ``a,b,c`` (FRAUDSCORE__SCORING__AUTH_TOKENS=tok1,tok2)."""
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        return value


class RulesSettings(_Section):
    """Where analysts' rule files live."""

    dir: Path | None = Field(None, description="rules directory; None uses the packaged example rules")
    reload_interval_s: float = Field(1.0, gt=0, description="how often to look for changed rule files")


class MetricsSettings(_Section):
    """Prometheus metrics and health over HTTP."""

    host: str = Field("127.0.0.1", description="address of the metrics / health HTTP server")
    port: int = Field(9108, ge=1, le=65535, description="metrics / health HTTP port")


class WebhookSettings(_Section):
    """Delivery of actions to an HTTP endpoint (``fraudscore worker --role webhook``)."""

    url: SecretStr | None = Field(None, description="POST actions here; None disables the webhook sink")
    secret: SecretStr | None = Field(None, description="HMAC-SHA256 key signing each body (X-Fraudscore-Signature)")
    actions: tuple[Literal["review", "challenge", "block"], ...] = Field(
        ("review", "challenge", "block"), description="which actions to deliver"
    )
    timeout_ms: int = Field(2000, ge=1, description="per-attempt timeout")
    max_attempts: int = Field(6, ge=1, description="attempts before the action is dead-lettered")
    backoff_base_ms: int = Field(200, ge=1, description="first retry delay; doubles per attempt, with jitter")
    backoff_max_ms: int = Field(10_000, ge=1, description="longest retry delay (Retry-After is honoured up to this)")
    concurrency: int = Field(16, ge=1, description="deliveries in flight at once")


class StreamSettings(_Section):
    """The stream worker's batching."""

    source: Literal["kafka", "kinesis"] = Field("kafka", description="where orders come from")
    max_batch: int = Field(2000, ge=1, description="max orders per micro-batch")
    max_batch_wait_ms: int = Field(20, ge=0, description="max time to fill a micro-batch")
    fetch_max_wait_ms: int = Field(
        20, ge=1, le=60_000,
        description="Kafka fetch long-poll bound. Kafka answers as soon as data arrives; the embedded broker "
        "(Tansu) answers an empty fetch only at this bound, so it bounds the added latency at low rates",
    )
    kinesis_stream: str = Field("orders", description="Kinesis stream of orders (source=kinesis)")
    kinesis_endpoint_url: str | None = Field(None, description="Kinesis endpoint override")
    # -- added by stream_app (issue 6); all optional, defaults keep the previous behaviour --
    sink: Literal["auto", "kafka", "kinesis"] = Field(
        "auto", description="where decisions, actions and dead letters go; auto = the source's transport"
    )
    session_timeout_ms: int = Field(10_000, ge=1000, description="Kafka consumer group session timeout")
    heartbeat_interval_ms: int = Field(3000, ge=100, description="Kafka consumer heartbeat interval")
    max_poll_interval_ms: int = Field(300_000, ge=1000, description="Kafka max time between polls")
    batch_retry_budget_s: float = Field(
        20.0, gt=0, description="how long a batch retries (store or sink down) before it is rewound and re-polled"
    )
    ledger_ttl_s: int = Field(7 * 86400, ge=60, description="how long decided order ids are remembered")
    labels_group: str | None = Field(None, description="consumer group of the labels consumer; None = <group>-labels")
    kinesis_region: str = Field("us-east-1", description="AWS region of the Kinesis streams")
    kinesis_labels_stream: str | None = Field(None, description="Kinesis stream of labels; None = labels not read")
    kinesis_checkpoint_table: str = Field(
        "fraudscore-kinesis-checkpoints", description="DynamoDB table holding shard leases and checkpoints"
    )
    kinesis_checkpoint_endpoint_url: str | None = Field(
        None, description="DynamoDB endpoint override for checkpoints; None = kinesis_endpoint_url"
    )
    kinesis_lease_s: float = Field(20.0, gt=0, description="shard lease duration; a dead worker's shards move after it")
    kinesis_poll_interval_ms: int = Field(200, ge=0, description="wait between GetRecords calls on an idle shard")
    webhook: WebhookSettings = Field(default_factory=WebhookSettings, description="HTTP webhook for actions")


class Settings(_Section):
    """Everything one fraudscore process needs. Frozen: build a new one to change it."""

    data_dir: Path = Field(Path(".fraudscore"), description="models, state snapshots and reports")
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    feature_store: FeatureStoreSettings = Field(default_factory=FeatureStoreSettings)
    scoring: ScoringSettings = Field(default_factory=ScoringSettings)
    rules: RulesSettings = Field(default_factory=RulesSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    stream: StreamSettings = Field(default_factory=StreamSettings)
    event_loop: Literal["auto", "uvloop", "asyncio"] = Field(
        "auto", description="asyncio event loop of the long-running processes (up, serve, worker): auto = uvloop "
        "(libuv, written in C) when it is installed, else the standard loop")

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"


_ENV_SHORTCUTS: dict[str, tuple[str, ...]] = {
    "KAFKA_BOOTSTRAP": ("kafka", "bootstrap"),
    "REDIS_URL": ("feature_store", "redis_url"),
    "FRAUDSCORE_DATA_DIR": ("data_dir",),
    "FRAUDSCORE_GRPC_PORT": ("scoring", "grpc_port"),
    "FRAUDSCORE_METRICS_PORT": ("metrics", "port"),
    "FRAUDSCORE_RULES_DIR": ("rules", "dir"),
}


def _set_path(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = tree
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[path[-1]] = value


def load_settings(
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings from a YAML file, the environment and explicit overrides.

    ``overrides`` maps dotted paths (``"scoring.grpc_port"``) to values, e.g. from CLI flags.
    Raises :class:`ConfigError` naming every invalid field.
    """
    env = dict(environ or {})
    tree: dict[str, Any] = {}
    file = path or env.get("FRAUDSCORE_CONFIG")
    if file:
        p = Path(file)
        if not p.is_file():
            raise ConfigError(f"settings file {p} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: expected a mapping at the top level")
        tree = loaded
    for var, target in _ENV_SHORTCUTS.items():
        if env.get(var):
            _set_path(tree, target, env[var])
    for var, value in env.items():
        if var.startswith("FRAUDSCORE__"):
            parts = tuple(p.lower() for p in var[len("FRAUDSCORE__") :].split("__") if p)
            if parts:
                _set_path(tree, parts, value)
    for dotted, value in (overrides or {}).items():
        _set_path(tree, tuple(dotted.split(".")), value)
    # REDIS_URL alone means "use Redis" unless the store type was chosen explicitly.
    fs = tree.get("feature_store") or {}
    if isinstance(fs, dict) and fs.get("redis_url") and "type" not in fs:
        fs["type"] = "redis"
    try:
        return Settings.model_validate(tree)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors(include_input=False)
        )
        raise ConfigError(f"invalid settings: {problems}") from None
