"""The Flask application factory: every expensive part is built here, once per process.

Routes (CDS Hooks 2.0, https://cds-hooks.hl7.org/2.0/; README.md, 'HTTP API'): discovery, the services,
feedback, health, readiness and metrics, with CORS on every response (errors and preflights included) and every
error answered as a FHIR OperationOutcome by one handler.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from flask import Blueprint, Flask, Response, current_app, g, request
from werkzeug.exceptions import HTTPException

from cds_service.data_source import FhirDataSource
from cds_service.errors import (
    BadRequest,
    CdsError,
    InternalError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
)
from cds_service.feedback import parse_feedback
from cds_service.logs import bind_hook_instance, clear_hook_instance, peek_hook_instance, without_resource_ids
from cds_service.metrics import (
    AUDIT_DROPPED,
    AUTH_FAILURES,
    CARDS,
    FEEDBACK,
    FEEDBACK_STORED,
    FHIR_FETCHES,
    LATENCY,
    RATINGS,
    REQUESTS,
    STORE_ERRORS,
    STORE_UP,
    render_metrics,
)
from cds_service.protocol.validation import decode_json
from cds_service.registry import ServiceDefinition, ServiceRegistry, load_registry
from cds_service.security import ClientAuthenticator, TrustedClient, build_authenticator, expected_audience
from cds_service.service import HookServices
from cds_service.settings import Settings, settings_from_env
from cds_service.store import DecisionAudit, RatingAudit, Store, StoreUnavailable, open_store

log = logging.getLogger("cds_service.http")

JSON_MIMETYPE = "application/json"
CORS_ALLOW_METHODS = "GET, POST, OPTIONS"
CORS_ALLOW_HEADERS = "Content-Type, Authorization"
# Endpoints that carry or reveal CDS content need a client JWT when trusted clients are configured.
PROTECTED_ENDPOINTS = frozenset({"cds.discovery", "cds.call_service", "cds.feedback"})


@dataclass
class Components:
    """Everything built once per process and shared by requests (read-only after start-up)."""

    settings: Settings
    registry: ServiceRegistry
    services: HookServices
    authenticator: ClientAuthenticator | None
    store: Store
    discovery_body: bytes
    store_check: StoreCheck


def components() -> Components:
    value: Components = current_app.extensions["cds_service"]
    return value


def create_app(
    settings: Settings | None = None, overrides: Mapping[str, Any] | None = None, *, demo: bool = False
) -> Flask:
    """Create the WSGI application.

    :param settings: settings to use; read from the ``CDS_*`` environment when omitted.
    :param overrides: Flask config overrides (``{"TESTING": True}`` in tests).
    :param demo: also serve the order-entry demo page under ``/demo/`` (``cds-service demo``; never
        in production ``serve``).
    """
    settings = settings or settings_from_env()
    registry = load_registry(settings.hooks_dir)
    data_source = FhirDataSource(total_timeout=settings.fhir_timeout, on_fetch=_count_fetch)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config.update(overrides or {})
    app.extensions["cds_service"] = Components(
        settings=settings,
        registry=registry,
        services=HookServices(registry, settings, data_source),
        authenticator=build_authenticator(
            trusted_clients_path=settings.trusted_clients_path, redis_url=settings.redis_url
        ),
        store=(store := open_store(settings.database_url, settings.data_dir, on_audit_drop=_count_audit_drop)),
        discovery_body=orjson.dumps(registry.discovery_document()),
        store_check=StoreCheck(store),
    )
    app.register_blueprint(cds_blueprint)
    app.register_blueprint(ops_blueprint)
    if demo:
        from cds_service.demo.routes import demo_blueprint  # imported only when wanted: it imports this module

        app.register_blueprint(demo_blueprint)
    app.register_error_handler(CdsError, _cds_error_response)
    app.register_error_handler(HTTPException, _http_error_response)
    app.register_error_handler(Exception, _unexpected_error_response)
    app.before_request(_bind_log_context)
    app.before_request(_start_timer)
    app.before_request(_authenticate)
    app.after_request(_finish)
    return app


cds_blueprint = Blueprint("cds", __name__)
ops_blueprint = Blueprint("ops", __name__)


@cds_blueprint.get("/cds-services")
def discovery() -> Response:
    return Response(components().discovery_body, mimetype=JSON_MIMETYPE)


@cds_blueprint.post("/cds-services/<service_id>")
def call_service(service_id: str) -> Response:
    parts = components()
    definition = _definition(parts.registry, service_id)
    body = _json_body(parts.settings)
    client: TrustedClient | None = g.get("cds_client")
    allowed = client.fhir_servers if client else parts.settings.fhir_servers
    result = parts.services.call(
        definition, body, now=datetime.now(UTC), allowed_fhir_servers=allowed, request_url_root=request.url_root
    )

    cards = result.evaluation.response.cards
    for card in cards:
        CARDS.labels(service_id, card.indicator).inc()
    for rating in result.evaluation.ratings:
        RATINGS.labels(service_id, rating.rating).inc()
    duration_ms = (time.perf_counter() - g.started) * 1000
    _audit(parts.store, result, client, duration_ms)
    g.log_fields = {
        "hookInstance": result.request.hook_instance,
        "cards": len(cards),
        "ratings": [rating.rating for rating in result.evaluation.ratings],
        "unavailable": dict(result.unavailable),  # type -> why (no token, no patient id)
        "dataWarnings": len(result.evaluation.warnings),
        "data_ms": round(result.data_ms, 2),
        "engine_ms": round(result.engine_ms, 2),
    }
    for warning in result.evaluation.warnings:
        # The response names the resource ("Condition/c9 skipped: ..."); the log keeps its type only.
        log.warning("data quality: %s", without_resource_ids(warning))
    return Response(orjson.dumps(result.body), mimetype=JSON_MIMETYPE)


@cds_blueprint.post("/cds-services/<service_id>/feedback")
def feedback(service_id: str) -> Response:
    parts = components()
    _definition(parts.registry, service_id)
    items = parse_feedback(_json_body(parts.settings))
    client: TrustedClient | None = g.get("cds_client")
    try:
        new = parts.store.record_feedback(service_id, items, client.iss if client else None)
    except StoreUnavailable as exc:
        # StoreUnavailable is a 503 CdsError with a generic message; its detail is for operators only.
        STORE_ERRORS.labels("feedback").inc()
        STORE_UP.set(0)
        log.error("feedback store unavailable: %s", exc.detail)
        raise
    for item in items:
        FEEDBACK.labels(service_id, item.outcome).inc()
    FEEDBACK_STORED.labels(service_id).inc(new)  # the reply's "stored": a repeated item is stored (and counted) once
    g.log_fields = {"feedbackItems": len(items), "feedbackNew": new}
    return Response(orjson.dumps({"received": len(items), "stored": new}), mimetype=JSON_MIMETYPE)


@ops_blueprint.get("/healthz")
def healthz() -> Response:
    return Response(orjson.dumps({"status": "ok"}), mimetype=JSON_MIMETYPE)


@ops_blueprint.get("/readyz")
def readyz() -> Response:
    """Ready when the service definitions are loaded: that is all the cards need.

    The store is reported (``store`` in the body, the ``cds_store_up`` metric) but does not make the
    service unready: a database outage would otherwise take every replica out of the load balancer,
    and the EHR would get no cards at all, while only feedback (503) needs the store.
    """
    parts = components()
    store_up = parts.store_check.up()
    STORE_UP.set(1 if store_up else 0)
    ready = len(parts.registry) > 0
    body = {
        "status": "ready" if ready else "not ready",
        "store": "up" if store_up else "down",
        "checks": {"definitions": ready, "store": store_up},
    }
    return Response(orjson.dumps(body), status=200 if ready else 503, mimetype=JSON_MIMETYPE)


class StoreCheck:
    """The store's state for ``/readyz``: at most one ping per ``max_age`` seconds per process.

    Probes of every replica (and anyone else calling /readyz) then cost the database one connection a
    second at most, and a request that finds a ping under way answers with the last known state
    instead of waiting for it.
    """

    def __init__(self, store: Store, max_age: float = 1.0) -> None:
        self._store = store
        self._max_age = max_age
        self._lock = threading.Lock()
        self._state: bool | None = None
        self._checked_at = 0.0

    def up(self) -> bool:
        if self._state is not None and time.monotonic() - self._checked_at < self._max_age:
            return self._state
        if not self._lock.acquire(blocking=self._state is None):
            return bool(self._state)  # another thread is pinging: its answer comes with the next call
        try:
            self._state = self._store.ping()
            self._checked_at = time.monotonic()
            return self._state
        finally:
            self._lock.release()


@ops_blueprint.get("/metrics")
def metrics() -> Response:
    payload, content_type = render_metrics()
    return Response(payload, content_type=content_type)


def _definition(registry: ServiceRegistry, service_id: str) -> ServiceDefinition:
    definition = registry.get(service_id)
    if definition is None:
        raise NotFound(f"no CDS service with id {service_id!r}; GET /cds-services lists the services")
    return definition


def _json_body(settings: Settings) -> Any:
    mimetype = request.mimetype
    if mimetype != JSON_MIMETYPE and not mimetype.endswith("+json"):
        raise UnsupportedMediaType(f"Content-Type must be application/json, not {mimetype or 'missing'!r}")
    return decode_json(request.get_data(cache=False), max_depth=settings.max_json_depth)


def _audit(store: Store, result: Any, client: TrustedClient | None, duration_ms: float) -> None:
    """Queue the decision's audit record; a failing store must never block or fail the cards."""
    try:
        store.record_decision(
            DecisionAudit(
                hook_instance=result.request.hook_instance,
                service_id=result.request.service_id,
                hook=result.request.hook,
                client_iss=client.iss if client else None,
                evaluated_at=datetime.now(UTC),
                ratings=tuple(
                    RatingAudit(r.order_reference, r.procedure_key, r.rating, r.consult_id)
                    for r in result.evaluation.ratings
                ),
                card_ids=tuple(card.uuid for card in result.evaluation.response.cards),
                card_indicators=tuple(card.indicator for card in result.evaluation.response.cards),
                duration_ms=duration_ms,
            )
        )
    except Exception:  # noqa: BLE001 - by design: audit is best effort, cards are not
        STORE_ERRORS.labels("audit").inc()
        log.exception("audit record could not be queued")


def _count_fetch(outcome: str) -> None:
    FHIR_FETCHES.labels(outcome).inc()


def _count_audit_drop(reason: str, count: int) -> None:
    AUDIT_DROPPED.labels(reason).inc(count)


def _start_timer() -> None:
    g.started = time.perf_counter()


def _bind_log_context() -> None:
    """Server threads are reused: forget the previous request's hookInstance, and take a service call's own from its
    raw body, so that the lines written before the body is parsed (authentication, a 401) carry it too."""
    clear_hook_instance()
    if request.endpoint != "cds.call_service" or request.method != "POST":
        return
    length = request.content_length
    if length is not None and length <= components().settings.max_body_bytes:
        bind_hook_instance(peek_hook_instance(request.get_data(cache=True)))


def _authenticate() -> None:
    if request.method == "OPTIONS" or request.endpoint not in PROTECTED_ENDPOINTS:
        return
    authenticator = components().authenticator
    if authenticator is None:  # open mode: no trusted clients configured
        return
    settings = components().settings
    audience = expected_audience(settings.public_url, request.url_root, request.path)
    g.cds_client = authenticator.authenticate(request.headers.get("Authorization"), audience)


def _finish(response: Response) -> Response:
    settings = components().settings
    origin = request.headers.get("Origin")
    if "*" in settings.cors_origins:
        response.headers["Access-Control-Allow-Origin"] = "*"
    elif origin and origin in settings.cors_origins:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers.add("Vary", "Origin")
    response.headers["Access-Control-Allow-Methods"] = CORS_ALLOW_METHODS
    response.headers["Access-Control-Allow-Headers"] = CORS_ALLOW_HEADERS
    response.headers["Access-Control-Max-Age"] = "600"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-store"

    endpoint, view_args = _route()
    service_id = view_args.get("service_id", "")
    if endpoint.startswith("cds.") and request.method != "OPTIONS":
        known_service = service_id if components().registry.get(service_id) else ("" if not service_id else "unknown")
        REQUESTS.labels(endpoint.removeprefix("cds."), known_service, str(response.status_code)).inc()
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        if endpoint == "cds.call_service" and known_service and known_service != "unknown":
            LATENCY.labels(known_service).observe(elapsed)
        fields = {
            "event": "request",
            "endpoint": endpoint,
            "service": known_service or None,
            "status": response.status_code,
            "duration_ms": round(elapsed * 1000, 2),
        }
        fields.update(g.get("log_fields", {}))
        log.info("%s %s -> %s", request.method, endpoint, response.status_code, extra={"fields": fields})
    return response


def _route() -> tuple[str, Mapping[str, Any]]:
    """The endpoint and path arguments of this request, also when routing refused its method (a 405 is counted and
    logged under the route it was sent to)."""
    if request.endpoint is not None:
        return request.endpoint, request.view_args or {}
    refused = request.routing_exception
    if isinstance(refused, HTTPException) and refused.code == 405:
        methods = getattr(refused, "valid_methods", None) or ()
        try:
            endpoint, view_args = current_app.url_map.bind_to_environ(request.environ).match(method=next(iter(methods)))
        except (HTTPException, StopIteration):
            return "unknown", {}
        return str(endpoint), view_args
    return "unknown", {}


def _error_body(error: CdsError) -> Response:
    response = Response(
        orjson.dumps(error.to_operation_outcome()), status=error.status, mimetype="application/fhir+json"
    )
    if isinstance(error, Unauthorized):
        response.headers["WWW-Authenticate"] = 'Bearer realm="cds-services", error="invalid_token"'
    return response


def _cds_error_response(error: CdsError) -> Response:
    if isinstance(error, Unauthorized):
        AUTH_FAILURES.inc()
        # The reason is logged for operators; the client learns nothing about why.
        log.warning("authentication refused: %s", error.reason, extra={"fields": {"path": request.path}})
    else:
        _note_error(error)
    return _error_body(error)


def _note_error(error: CdsError) -> None:
    """The request's log line names the cause: what the client was told, when that holds no client values."""
    g.log_fields = {"error": error.code, "errorAt": error.expression}
    if error.loggable:
        g.log_fields["diagnostics"] = error.message


_HTTP_ERRORS: dict[int, type[CdsError]] = {
    400: BadRequest,
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
}


def _http_error_response(error: HTTPException) -> Response:
    status = error.code or 500
    if status == 404:
        typed: CdsError = NotFound(f"no such endpoint: {request.path}")
    elif status == 405:
        typed = MethodNotAllowed(f"{request.method} is not allowed on {request.path}")
    elif status == 413:
        typed = PayloadTooLarge(f"the request body exceeds {components().settings.max_body_bytes} bytes")
    elif status in _HTTP_ERRORS:
        typed = _HTTP_ERRORS[status](error.description or "bad request")
    else:
        typed = BadRequest(error.description or "bad request") if 400 <= status < 500 else InternalError("error")
    _note_error(typed)
    return _error_body(typed)


def _unexpected_error_response(error: Exception) -> Response:
    # A bug, never the client's fault; the trace goes to the log, never to the client.
    log.exception("unexpected error while answering %s %s", request.method, request.endpoint)
    return _error_body(InternalError("internal error; the incident has been logged"))
