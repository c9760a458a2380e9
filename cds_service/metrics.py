"""Prometheus metrics (``GET /metrics``).

Under gunicorn each worker is a process, so ``cds-service serve`` sets ``PROMETHEUS_MULTIPROC_DIR``
before this module is imported and ``/metrics`` aggregates every worker's samples; without it
(tests, ``flask run``) the default in-process registry is used.
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess

REQUESTS = Counter(
    "cds_requests_total", "HTTP requests by endpoint kind, service and status", ["endpoint", "service", "status"]
)
LATENCY = Histogram(
    "cds_request_duration_seconds",
    "Time to answer a CDS service call, by service",
    ["service"],
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
CARDS = Counter("cds_cards_total", "Cards returned, by service and indicator", ["service", "indicator"])
RATINGS = Counter("cds_ratings_total", "Orders rated, by service and rating", ["service", "rating"])
FHIR_FETCHES = Counter("cds_fhir_fetch_total", "Fallback FHIR fetches by outcome", ["outcome"])
FEEDBACK = Counter(
    "cds_feedback_items_total",
    "Feedback items received, by service and outcome (a repeated POST counts again; see cds_feedback_stored_total)",
    ["service", "outcome"],
)
FEEDBACK_STORED = Counter(
    "cds_feedback_stored_total",
    "Feedback items newly stored, by service: the sum of the replies' 'stored' (a repeated item is stored once)",
    ["service"],
)
AUTH_FAILURES = Counter("cds_auth_failures_total", "Requests refused with 401")
STORE_ERRORS = Counter("cds_store_errors_total", "Store operations that failed", ["operation"])
AUDIT_DROPPED = Counter("cds_audit_dropped_total", "Audit records not written, by reason", ["reason"])


def render_metrics() -> tuple[bytes, str]:
    """The exposition text for every worker process (multi-process mode) or this process."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
