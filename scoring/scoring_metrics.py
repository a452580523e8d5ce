"""Prometheus metrics owned by the scoring package (the shared ones live in :mod:`monitoring.metrics`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info

IN_FLIGHT = Gauge("fraudscore_grpc_in_flight", "Score / ScoreBatch calls being served")
SHED = Counter("fraudscore_grpc_shed_total", "Calls refused with RESOURCE_EXHAUSTED (over max_concurrency)")
AUTH_FAILURES = Counter("fraudscore_grpc_auth_failures_total", "Calls refused for a missing or wrong token")
MODEL_LOAD_SECONDS = Histogram("fraudscore_model_load_seconds", "Time to verify and load a model version",
                               buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
COMPILED_BUILDS = Counter("fraudscore_compiled_builds_total", "Compiled-runtime builds by result", ["result"])
RUNTIME_INFO = Info("fraudscore_model_runtime", "The runtime serving the champion model")
MODEL_ERRORS = Counter("fraudscore_model_errors_total", "Model calls that failed (the answer fell back)", ["runtime"])
SAGEMAKER_REQUESTS = Counter("fraudscore_sagemaker_invocations_total", "Serving-container invocations",
                             ["content_type", "code"])
