"""The demo blueprint: the order-entry page, its assets and data, registered only in demo mode.

The page is a plain CDS client: it calls the real service routes (discovery, the two hooks,
feedback) exactly as an EHR would. The routes here only serve the page and its data, plus one
helper for "FHIR server" mode that reads a patient's record through the service's own data
source, so that the same allow-list (``CDS_FHIR_SERVERS``) and timeouts apply.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

import orjson
from flask import Blueprint, Response, redirect, request

from cds_service.app import JSON_MIMETYPE, components
from cds_service.data_source import is_allowed_server
from cds_service.demo.catalogue import orderables, patients_for
from cds_service.errors import BadRequest
from cds_service.protocol.request import FhirAuthorization, HookRequest

# Everything the page needs comes from this origin: no inline script or style, no third-party hosts.
# Card links open in a new tab (navigation is not governed by these directives).
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_FHIR_ID: Final = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_MAX_TOKEN_CHARS: Final = 8192

demo_blueprint = Blueprint("demo", __name__, url_prefix="/demo", static_folder="static", static_url_path="/static")


@demo_blueprint.after_request
def _security_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@demo_blueprint.get("")
def demo_root() -> Response:
    return redirect("/demo/", code=308)  # type: ignore[return-value]


@demo_blueprint.get("/")
def index() -> Response:
    return demo_blueprint.send_static_file("index.html")


@demo_blueprint.get("/api/patients")
def patients() -> Response:
    return Response(orjson.dumps(patients_for(datetime.now(UTC).date())), mimetype=JSON_MIMETYPE)


@demo_blueprint.get("/api/orderables")
def orderable_list() -> Response:
    return Response(orjson.dumps(orderables()), mimetype=JSON_MIMETYPE)


def _same_origin_only() -> None:
    """Refuse calls from other sites' pages.

    The service answers every origin (CORS ``*``, for sandbox work), and this helper returns raw records
    from the allowed FHIR servers: without this check any web page open in the same browser could use a
    running demo to read them. Browsers mark cross-site requests (Sec-Fetch-Site, Origin); tools such as
    curl send neither and are not refused.
    """
    fetch_site = request.headers.get("Sec-Fetch-Site")
    origin = request.headers.get("Origin")
    if fetch_site not in (None, "same-origin", "none") or (
        origin is not None and origin.rstrip("/") != request.host_url.rstrip("/")
    ):
        raise BadRequest("the record helper answers the demo page only (a same-origin request)")


@demo_blueprint.post("/api/record")
def record() -> Response:
    """A patient's record from a FHIR server, read as the service reads it (for the page's lists).

    Body: ``{"fhirServer": base URL, "patientId": id, "accessToken": optional bearer token}``.
    The server must be one the service may call (``CDS_FHIR_SERVERS``); the token is used for this
    call only and never stored or logged.
    """
    _same_origin_only()
    body = request.get_json(silent=True)
    if not isinstance(body, Mapping):
        raise BadRequest("the body must be a JSON object with fhirServer and patientId")
    server, patient_id, token = body.get("fhirServer"), body.get("patientId"), body.get("accessToken")
    if not isinstance(server, str) or not server.startswith(("http://", "https://")):
        raise BadRequest("fhirServer: an http(s) base URL is required", expression="fhirServer")
    if not isinstance(patient_id, str) or not _FHIR_ID.match(patient_id):
        raise BadRequest("patientId: a FHIR id (letters, digits, '-' and '.', up to 64) is required")
    if token is not None and (not isinstance(token, str) or not 0 < len(token) <= _MAX_TOKEN_CHARS):
        raise BadRequest("accessToken: a non-empty string is required when given", expression="accessToken")
    parts = components()
    allowed = parts.settings.fhir_servers
    if not is_allowed_server(server, allowed):
        listed = ", ".join(allowed) if allowed else "none are configured"
        raise BadRequest(
            f"fhirServer {server} is not allowed: the service calls only the servers in CDS_FHIR_SERVERS ({listed})",
            expression="fhirServer",
        )
    definition = next((d for d in parts.registry if d.hook == "order-select"), None)
    if definition is None:
        raise BadRequest("no order-select service is defined")
    hook_request = HookRequest(
        service_id=definition.id,
        hook="order-select",
        hook_instance=str(uuid.uuid4()),
        patient_id=patient_id,
        user_id="Practitioner/demo",
        encounter_id=None,
        selections=(),
        draft_orders={"resourceType": "Bundle", "type": "collection"},
        prefetch=None,
        fhir_server=server,
        fhir_authorization=FhirAuthorization(token, "Bearer", 300, "patient/*.read", "cds-service-demo")
        if token
        else None,
    )
    patient_record = parts.services.data_source.resolve(definition.prefetch, hook_request, allowed)
    answer: dict[str, Any] = {
        "resources": {kind: list(items) for kind, items in patient_record.resources.items()},
        "unavailable": dict(patient_record.unavailable),
        "warnings": list(patient_record.warnings),
    }
    return Response(orjson.dumps(answer), mimetype=JSON_MIMETYPE)
