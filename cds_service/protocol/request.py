"""The typed CDS Hooks request handed from the HTTP boundary (or the CLI) to the engine.

The JSON body has already been validated against ``schemas/request.schema.json`` when one
of these is built; FHIR content (``draftOrders``, prefetch values) stays raw JSON here and is
parsed by the clinical boundary (``cds_service.clinical.record_reader``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class FhirAuthorization:
    """``fhirAuthorization``: the bearer token is transient; it never appears in repr or logs."""

    access_token: str = field(repr=False)
    token_type: str
    expires_in: int
    scope: str
    subject: str
    patient: str | None = None


@dataclass(frozen=True)
class HookRequest:
    service_id: str
    hook: str  # "order-select" | "order-sign"
    hook_instance: str
    patient_id: str
    user_id: str
    encounter_id: str | None
    # order-select: the newly selected orders as "Type/id" references; order-sign: None (every draft counts).
    selections: tuple[str, ...] | None
    draft_orders: Mapping[str, Any]  # raw FHIR Bundle JSON (any FHIR version; Bundle.type may be missing)
    prefetch: Mapping[str, Any] | None  # raw prefetch object as sent, None when the member is absent
    fhir_server: str | None = None
    fhir_authorization: FhirAuthorization | None = field(default=None, repr=False)
    extension: Mapping[str, Any] = field(default_factory=dict)

    @property
    def session_key(self) -> str:
        """What identifies an ordering session: used to keep a consult id stable across re-invocations."""
        return f"{self.patient_id}|{self.encounter_id or ''}"


def hook_request_from_json(service_id: str, body: Mapping[str, Any]) -> HookRequest:
    """Build a HookRequest from a request body that has passed schema validation."""
    context = body["context"]
    auth = body.get("fhirAuthorization")
    selections = context.get("selections")
    return HookRequest(
        service_id=service_id,
        hook=body["hook"],
        hook_instance=body["hookInstance"],
        patient_id=context["patientId"],
        user_id=context["userId"],
        encounter_id=context.get("encounterId"),
        selections=tuple(selections) if selections is not None else None,
        draft_orders=context["draftOrders"],
        prefetch=body.get("prefetch"),
        fhir_server=body.get("fhirServer"),
        fhir_authorization=FhirAuthorization(
            access_token=auth["access_token"],
            token_type=auth["token_type"],
            expires_in=auth["expires_in"],
            scope=auth["scope"],
            subject=auth["subject"],
            patient=auth.get("patient"),
        )
        if auth
        else None,
        extension=body.get("extension") or {},
    )
