"""HTTP endpoint for Prometheus metrics (``/metrics``) and health (``/healthz``, JSON detail)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

HealthFn = Callable[[], tuple[bool, dict[str, Any]]]


class _Handler(BaseHTTPRequestHandler):
    health: HealthFn = staticmethod(lambda: (True, {}))

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        if self.path.startswith("/metrics"):
            body, ctype, code = generate_latest(), CONTENT_TYPE_LATEST, 200
        elif self.path.startswith("/healthz"):
            ok, detail = type(self).health()
            body = json.dumps({"status": "ok" if ok else "unhealthy", **detail}, default=str).encode()
            ctype, code = "application/json", 200 if ok else 503
        else:
            body, ctype, code = b"not found: try /metrics or /healthz\n", "text/plain", 404
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet access log
        return


class MetricsServer:
    """Serves /metrics and /healthz from a background thread."""

    def __init__(self, host: str, port: int, health: HealthFn) -> None:
        handler = type("Handler", (_Handler,), {"health": staticmethod(health)})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="metrics-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def start(self) -> MetricsServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
