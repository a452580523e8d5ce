"""The SageMaker serving container's HTTP server (``fraudscore serve --sagemaker``).

SageMaker's contract: ``GET /ping`` (200 when ready) and ``POST /invocations`` on port 8080. The same
handler answers ``POST /endpoints/{name}/invocations``, the path boto3's ``sagemaker-runtime`` client
uses, so ``invoke_endpoint`` with ``endpoint_url`` pointed at this server works (tests, local runs).

Requests (``Content-Type``):

* ``text/csv`` — feature rows in the model's feature order (``GET /model`` lists it), no header,
  an empty field (or ``nan``) for a missing value. This is the SageMaker XGBoost container's format.
* ``application/json`` — ``{"instances": [[f1, f2, …], …]}`` or ``{"instances": [{"features": […]}, …]}``
  (SageMaker's common JSON format), or ``{"orders": [<order event>, …]}`` for whole decisions through
  the decision pipeline (features, model, rules, reasons).

Answers (``Accept``): ``text/csv`` (default: one probability per line), ``application/json``
(``{"predictions": [{"score": p}, …]}``) or ``application/jsonlines`` (one ``{"score": p}`` per line).
With the custom attribute ``contributions=true`` (header ``X-Amzn-SageMaker-Custom-Attributes``) the
JSON answers add ``"contributions"`` (per feature, bias last: XGBoost's layout) to each prediction.

Errors: 400 naming ``line:column`` (CSV) or the field (JSON), 413 over the payload limit, 415 for an
unknown content type, 503 while no model is loaded. A card number in an order is refused (400),
never echoed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import msgspec
import numpy as np

from contracts.events import Order, from_builtins, to_builtins
from contracts.exceptions import ContractError
from scoring.models import ModelHolder
from scoring.pipeline import DecisionPipeline
from scoring.scoring_metrics import SAGEMAKER_REQUESTS

log = logging.getLogger(__name__)

_INVOKE = re.compile(r"^/(?:endpoints/[A-Za-z0-9\-]{1,63}/)?invocations/?$")
MAX_PAYLOAD_BYTES = 6 * 1024 * 1024  # SageMaker real-time endpoints accept at most 6 MB


class BadRequest(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def parse_csv(body: bytes, n_features: int) -> np.ndarray:
    """Rows of floats; empty or ``nan`` = missing. Errors name ``line:column``."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(400, "text/csv body is not UTF-8") from None
    rows: list[list[float]] = []
    for ln, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split(",")
        if len(fields) != n_features:
            raise BadRequest(400, f"line {ln}: {len(fields)} values, the model takes {n_features} "
                                  "(GET /model lists the features in order)")
        row = []
        for col, field in enumerate(fields, 1):
            f = field.strip()
            if f == "" or f.lower() == "nan":
                row.append(math.nan)
                continue
            try:
                row.append(float(f))
            except ValueError:
                raise BadRequest(400, f"line {ln}:{col}: {f[:40]!r} is not a number") from None
        rows.append(row)
    if not rows:
        raise BadRequest(400, "no rows in the request body")
    return np.asarray(rows, dtype=np.float32)


def parse_instances(doc: Any, n_features: int) -> np.ndarray:
    inst = doc.get("instances") if isinstance(doc, dict) else None
    if inst is None and isinstance(doc, dict) and "features" in doc:
        inst = [doc]
    if not isinstance(inst, list) or not inst:
        raise BadRequest(400, 'JSON body needs "instances": [[...], ...] or "orders": [...]')
    rows = []
    for i, item in enumerate(inst):
        values = item.get("features") if isinstance(item, dict) else item
        if not isinstance(values, list) or len(values) != n_features:
            raise BadRequest(400, f"instances[{i}]: expected a list of {n_features} numbers")
        try:
            rows.append([math.nan if v is None else float(v) for v in values])
        except (TypeError, ValueError):
            raise BadRequest(400, f"instances[{i}]: values must be numbers or null") from None
    return np.asarray(rows, dtype=np.float32)


class SageMakerApp:
    """The request logic, independent of the HTTP server (tests call it directly too)."""

    def __init__(self, models: ModelHolder, pipeline: DecisionPipeline | None = None,
                 max_payload_bytes: int = MAX_PAYLOAD_BYTES) -> None:
        self.models = models
        self.pipeline = pipeline
        self.max_payload_bytes = max_payload_bytes
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_lock = threading.Lock()

    def ready(self) -> bool:
        return self.models.current is not None

    def _run(self, coro: Any) -> Any:
        with self._loop_lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                threading.Thread(target=self._loop.run_forever, name="sagemaker-pipeline", daemon=True).start()
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    def invoke(self, body: bytes, content_type: str, accept: str, custom_attributes: str) -> tuple[int, str, bytes]:
        model = self.models.current
        if model is None:
            raise BadRequest(503, "no model loaded yet")
        ctype = (content_type or "text/csv").split(";")[0].strip().lower()
        want_contribs = "contributions=true" in (custom_attributes or "").replace(" ", "").lower()
        n = len(model.feature_names)
        if ctype == "text/csv":
            matrix = parse_csv(body, n)
        elif ctype == "application/json":
            try:
                doc = json.loads(body)
            except ValueError as exc:
                raise BadRequest(400, f"body is not valid JSON: {exc}") from None
            if isinstance(doc, dict) and "orders" in doc:
                return self._orders(doc["orders"])
            matrix = parse_instances(doc, n)
        else:
            raise BadRequest(415, f"unsupported content type {ctype!r}; use text/csv or application/json")
        out_type = (accept or "text/csv").split(",")[0].split(";")[0].strip().lower()
        if out_type in ("*/*", ""):
            out_type = "text/csv"
        with_contribs = want_contribs and out_type != "text/csv" and model.supports_contributions
        probs, contribs = model.explain(matrix, with_contribs)
        if out_type == "text/csv":
            return 200, "text/csv", "".join(f"{float(p)!r}\n" for p in probs).encode()
        preds: list[dict[str, Any]] = [{"score": float(p)} for p in probs]
        if contribs is not None:
            for p, c in zip(preds, contribs, strict=True):
                p["contributions"] = [float(v) for v in c]
        if out_type == "application/json":
            return 200, "application/json", json.dumps({"predictions": preds}).encode()
        if out_type == "application/jsonlines":
            return 200, "application/jsonlines", "".join(json.dumps(p) + "\n" for p in preds).encode()
        raise BadRequest(406, f"unsupported Accept {out_type!r}; use text/csv, application/json or "
                              "application/jsonlines")

    def _orders(self, raw: Any) -> tuple[int, str, bytes]:
        if self.pipeline is None:
            raise BadRequest(400, "this server scores feature rows only (no decision pipeline configured)")
        if not isinstance(raw, list) or not raw:
            raise BadRequest(400, '"orders" must be a non-empty list of order events')
        orders: list[Order] = []
        problems: list[str] = []
        for i, o in enumerate(raw):
            try:
                orders.append(from_builtins(Order, o))
            except ContractError as exc:
                problems.extend(f"orders[{i}]{e.path[1:]}: {e.message}" for e in exc.errors)
        if problems:
            raise BadRequest(400, "invalid orders: " + "; ".join(problems))
        decisions = self._run(self.pipeline.decide(orders, source="batch"))
        return 200, "application/json", msgspec.json.encode({"decisions": [to_builtins(d) for d in decisions]})

    def model_info(self) -> dict[str, Any]:
        m = self.models.current
        return {"ready": m is not None, **(m.describe() if m else {}),
                "feature_names": list(m.feature_names) if m else []}


def make_handler(app: SageMakerApp) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: SageMaker reuses connections

        def _send(self, code: int, ctype: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server API
            if self.path == "/ping":
                ok = app.ready()
                self._send(200 if ok else 503, "text/plain", b"" if ok else b"no model loaded\n")
            elif self.path == "/model":
                self._send(200, "application/json", json.dumps(app.model_info()).encode())
            else:
                self._send(404, "text/plain", b"not found: GET /ping, GET /model, POST /invocations\n")

        def do_POST(self) -> None:  # noqa: N802
            if not _INVOKE.match(self.path.split("?")[0]):
                self._send(404, "text/plain", b"not found: POST /invocations\n")
                return
            length = int(self.headers.get("Content-Length") or 0)
            ctype = self.headers.get("Content-Type", "text/csv")
            if length > app.max_payload_bytes:
                self._send(413, "text/plain", f"payload over {app.max_payload_bytes} bytes\n".encode())
                self.close_connection = True
                return
            body = self.rfile.read(length)
            try:
                code, out_type, out = app.invoke(
                    body, ctype, self.headers.get("Accept", "text/csv"),
                    self.headers.get("X-Amzn-SageMaker-Custom-Attributes", ""),
                )
            except BadRequest as exc:
                code, out_type, out = exc.code, "text/plain", (str(exc) + "\n").encode()
            except Exception:  # never leak a traceback (or data) to the caller; log it here
                log.exception("invocation failed")
                code, out_type, out = 500, "text/plain", b"internal error (see the server log)\n"
            SAGEMAKER_REQUESTS.labels(ctype.split(";")[0], str(code)).inc()
            self._send(code, out_type, out)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - no access log (bodies hold data)
            return

    return Handler


class SageMakerServer:
    """``ThreadingHTTPServer`` running :class:`SageMakerApp` in a background thread."""

    def __init__(self, app: SageMakerApp, host: str = "0.0.0.0", port: int = 8080) -> None:  # noqa: S104
        self.app = app
        self.httpd = ThreadingHTTPServer((host, port), make_handler(app))
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="sagemaker-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def start(self) -> SageMakerServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


HealthFn = Callable[[], bool]
