"""SageMaker endpoint runtime: the model lives behind ``sagemaker-runtime`` ``InvokeEndpoint``.

Requests use the content types of SageMaker's XGBoost container, so the endpoint may be the
AWS built-in XGBoost container or fraudscore's own serving container (``fraudscore serve
--sagemaker``, ``infra/sagemaker/``):

* request ``text/csv``: one row per order, features in the manifest's order, no header, an empty
  field for a missing value;
* response ``text/csv`` (one probability per line) or ``application/json``
  (``{"predictions": [{"score": p}, …]}``).

Reason codes: when ``contributions`` is on, the request carries the custom attribute
``contributions=true`` and asks for JSON; fraudscore's container then adds ``"contributions"`` to
each prediction (the AWS container ignores the attribute, and the answer has no reasons).

The model's manifest (feature names, version) comes from the local registry, as for the other
runtimes: it is the contract of what the endpoint serves. boto3 errors are translated at this
boundary into :class:`EndpointUnavailable` (gRPC ``UNAVAILABLE``); timeouts and retries are
botocore's (``connect_timeout``, ``read_timeout``, ``retries`` in standard mode).
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

from scoring.artifacts import Manifest
from scoring.exceptions import EndpointUnavailable
from scoring.runtimes.base import ModelRuntime


def rows_to_csv(matrix: np.ndarray) -> bytes:
    """Feature rows as SageMaker CSV: no header, ``repr``-exact floats, empty field = missing."""
    out = io.StringIO()
    for row in np.asarray(matrix, dtype=np.float32):
        out.write(",".join("" if np.isnan(v) else repr(float(v)) for v in row))
        out.write("\n")
    return out.getvalue().encode()


def parse_scores(body: bytes, content_type: str, rows: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Scores (and contributions when present) from an endpoint answer."""
    ctype = content_type.split(";")[0].strip().lower()
    try:
        if ctype == "application/json":
            doc = json.loads(body)
            preds = doc["predictions"] if isinstance(doc, dict) else doc
            scores = np.array([float(p["score"]) if isinstance(p, dict) else float(p) for p in preds])
            contribs = None
            if preds and isinstance(preds[0], dict) and "contributions" in preds[0]:
                contribs = np.array([p["contributions"] for p in preds], dtype=np.float64)
        else:
            text = body.decode().replace(",", "\n")
            scores = np.array([float(t) for t in text.split()])
            contribs = None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise EndpointUnavailable(f"unreadable endpoint answer ({ctype}): {exc}") from None
    if scores.shape[0] != rows:
        raise EndpointUnavailable(f"endpoint returned {scores.shape[0]} scores for {rows} rows")
    return scores, contribs


class SageMakerRuntime(ModelRuntime):
    kind = "sagemaker"
    blocking_io = True

    def __init__(
        self,
        manifest: Manifest,
        endpoint_name: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        timeout_s: float = 1.0,
        max_attempts: int = 2,
        contributions: bool = True,
        client: Any = None,
    ) -> None:
        import boto3
        from botocore.config import Config

        self.version = manifest.version
        self.feature_names = manifest.feature_names
        self.endpoint_name = endpoint_name
        self.want_contributions = contributions
        self.supports_contributions = contributions
        config = Config(
            connect_timeout=timeout_s,
            read_timeout=timeout_s,
            retries={"max_attempts": max_attempts, "mode": "standard"},
            tcp_keepalive=True,
        )
        self.client = client or boto3.client("sagemaker-runtime", endpoint_url=endpoint_url, region_name=region,
                                             config=config)

    def _invoke(self, matrix: np.ndarray, with_contributions: bool) -> tuple[np.ndarray, np.ndarray | None]:
        from botocore.exceptions import BotoCoreError, ClientError

        kwargs: dict[str, Any] = {
            "EndpointName": self.endpoint_name,
            "ContentType": "text/csv",
            "Body": rows_to_csv(matrix),
            "Accept": "application/json" if with_contributions else "text/csv",
        }
        if with_contributions:
            kwargs["CustomAttributes"] = "contributions=true"
        try:
            resp = self.client.invoke_endpoint(**kwargs)
            body = resp["Body"].read()
        except ClientError as exc:
            err = exc.response.get("Error", {})
            raise EndpointUnavailable(
                f"SageMaker endpoint {self.endpoint_name}: {err.get('Code', 'error')}: {err.get('Message', '')[:300]}"
            ) from None
        except BotoCoreError as exc:
            raise EndpointUnavailable(f"SageMaker endpoint {self.endpoint_name}: {exc}") from None
        return parse_scores(body, resp.get("ContentType", "text/csv"), matrix.shape[0])

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        return self._invoke(matrix, False)[0]

    def contributions(self, matrix: np.ndarray) -> np.ndarray:
        contribs = self._invoke(matrix, True)[1]
        if contribs is None:
            raise EndpointUnavailable(f"endpoint {self.endpoint_name} does not return contributions")
        return contribs

    def explain(self, matrix: np.ndarray, with_contributions: bool) -> tuple[np.ndarray, np.ndarray | None]:
        want = with_contributions and self.want_contributions
        scores, contribs = self._invoke(matrix, want)
        if want and contribs is None:
            self.supports_contributions = False  # the AWS container: stop asking
        return scores, contribs

    def describe(self) -> dict[str, object]:
        return {"version": self.version, "runtime": self.kind, "endpoint": self.endpoint_name}

    def close(self) -> None:
        self.client.close()
