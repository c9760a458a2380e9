"""Builders of FHIR JSON, records and requests for the clinical engine's unit tests.

Absolute dates only: every test evaluates at ``NOW``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from cds_service.clinical import facts
from cds_service.protocol.request import HookRequest
from cds_service.record import PatientRecord

NOW = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
SNOMED = "http://snomed.info/sct"
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC = "http://loinc.org"
CPT = "http://www.ama-assn.org/go/cpt"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
PATIENT_ID = "pat-1"

# Every resource type the engine reads.
RECORD_TYPES = facts.RECORD_TYPES

_counter = [0]


def _next_id(prefix: str) -> str:
    _counter[0] += 1
    return f"{prefix}-{_counter[0]}"


def concept(
    system: str | None, code: str | None, display: str | None = None, text: str | None = None
) -> dict[str, Any]:
    coding: dict[str, Any] = {}
    if system:
        coding = {"system": system, "code": code}
        if display:
            coding["display"] = display
    result: dict[str, Any] = {"coding": [coding]} if coding else {}
    if text:
        result["text"] = text
    return result


def patient(birth_date: str = "1980-05-01", gender: str = "female") -> dict[str, Any]:
    return {"resourceType": "Patient", "id": PATIENT_ID, "birthDate": birth_date, "gender": gender}


def condition(
    system: str | None,
    code: str | None,
    *,
    onset: str | None = "2026-09-01",
    display: str | None = None,
    text: str | None = None,
    clinical: str | None = "active",
    verification: str | None = "confirmed",
    abatement: str | None = None,
    id: str | None = None,
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Condition",
        "id": id or _next_id("cond"),
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "code": concept(system, code, display, text),
    }
    if clinical:
        resource["clinicalStatus"] = concept("http://terminology.hl7.org/CodeSystem/condition-clinical", clinical)
    if verification:
        resource["verificationStatus"] = concept(
            "http://terminology.hl7.org/CodeSystem/condition-ver-status", verification
        )
    if onset:
        resource["onsetDateTime"] = onset
    if abatement:
        resource["abatementDateTime"] = abatement
    return resource


def med_statement(
    rxnorm: str | None,
    *,
    start: str | None = "2026-09-10",
    end: str | None = "2026-10-10",
    text: str | None = None,
    dose: str | None = None,
    status: str = "completed",
    id: str | None = None,
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "MedicationStatement",
        "id": id or _next_id("ms"),
        "status": status,
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "medicationCodeableConcept": concept(RXNORM if rxnorm else None, rxnorm, text=text),
    }
    period = {k: v for k, v in (("start", start), ("end", end)) if v}
    if period:
        resource["effectivePeriod"] = period
    if dose:
        resource["dosage"] = [{"text": dose}]
    return resource


def med_request(
    rxnorm: str | None,
    *,
    authored: str = "2026-09-10",
    supply_days: int | None = 10,
    text: str | None = None,
    status: str = "completed",
    id: str | None = None,
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": id or _next_id("mr"),
        "status": status,
        "intent": "order",
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "medicationCodeableConcept": concept(RXNORM if rxnorm else None, rxnorm, text=text),
        "authoredOn": authored,
    }
    if supply_days is not None:
        resource["dispenseRequest"] = {
            "expectedSupplyDuration": {
                "value": supply_days,
                "unit": "days",
                "system": "http://unitsofmeasure.org",
                "code": "d",
            }
        }
    return resource


def procedure(
    system: str | None,
    code: str | None,
    *,
    performed: str = "2021-03-01",
    text: str | None = None,
    status: str = "completed",
) -> dict[str, Any]:
    return {
        "resourceType": "Procedure",
        "id": _next_id("proc"),
        "status": status,
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "code": concept(system, code, text=text),
        "performedDateTime": performed,
    }


def observation(
    code: str,
    *,
    value: float | None = None,
    unit: str = "mL/min/{1.73_m2}",
    effective: str = "2026-11-01",
    value_concept: dict[str, Any] | None = None,
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": _next_id("obs"),
        "status": "final",
        "code": concept(LOINC, code),
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "effectiveDateTime": effective,
    }
    if value is not None:
        resource["valueQuantity"] = {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}
    if value_concept is not None:
        resource["valueCodeableConcept"] = value_concept
    return resource


def device(text: str) -> dict[str, Any]:
    return {
        "resourceType": "Device",
        "id": _next_id("dev"),
        "status": "active",
        "type": {"text": text},
        "patient": {"reference": f"Patient/{PATIENT_ID}"},
    }


def allergy(text: str) -> dict[str, Any]:
    return {
        "resourceType": "AllergyIntolerance",
        "id": _next_id("alg"),
        "code": {"text": text},
        "patient": {"reference": f"Patient/{PATIENT_ID}"},
        "recordedDate": "2023-02-01",
    }


def prior_order(
    code: str, *, system: str = CPT, status: str = "completed", authored: str = "2026-06-01", text: str | None = None
) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "id": _next_id("prior"),
        "status": status,
        "intent": "order",
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "code": concept(system, code, text=text),
        "authoredOn": authored,
    }


def draft_service_request(
    code: str | None,
    *,
    system: str = CPT,
    id: str = "sr-1",
    text: str | None = None,
    reason: dict[str, Any] | None = None,
    priority: str | None = None,
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "id": id,
        "status": "draft",
        "intent": "order",
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "code": concept(system if code else None, code, text=text),
    }
    if reason:
        resource["reasonCode"] = [reason]
    if priority:
        resource["priority"] = priority
    return resource


def draft_medication(
    rxnorm: str | None, *, id: str = "mr-draft", text: str | None = None, resource_type: str = "MedicationRequest"
) -> dict[str, Any]:
    return {
        "resourceType": resource_type,
        "id": id,
        "status": "draft",
        "intent": "order",
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "medicationCodeableConcept": concept(RXNORM if rxnorm else None, rxnorm, text=text),
    }


def bundle(*resources: Mapping[str, Any], with_type: bool = True) -> dict[str, Any]:
    result: dict[str, Any] = {"resourceType": "Bundle", "entry": [{"resource": dict(r)} for r in resources]}
    if with_type:
        result["type"] = "collection"
    return result


def record(*resources: Mapping[str, Any], unavailable: Iterable[str] = (), with_patient: bool = True) -> PatientRecord:
    by_type: dict[str, list[Mapping[str, Any]]] = {}
    if with_patient:
        by_type["Patient"] = [patient()]
    for resource in resources:
        by_type.setdefault(resource["resourceType"], []).append(resource)
        if resource["resourceType"] == "Patient":
            by_type["Patient"] = [resource]
    missing = set(unavailable)
    return PatientRecord(
        resources={t: tuple(rs) for t, rs in by_type.items() if t not in missing},
        unavailable={t: "OperationOutcome in prefetch" for t in missing},
    )


def request(
    *drafts: Mapping[str, Any],
    selections: tuple[str, ...] | None = ("ServiceRequest/sr-1",),
    hook_instance: str = "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
    encounter_id: str | None = "enc-1",
    with_type: bool = True,
) -> HookRequest:
    return HookRequest(
        service_id="lumbar-imaging-order-select",
        hook="order-select" if selections is not None else "order-sign",
        hook_instance=hook_instance,
        patient_id=PATIENT_ID,
        user_id="Practitioner/pract-1",
        encounter_id=encounter_id,
        selections=selections,
        draft_orders=bundle(*drafts, with_type=with_type),
        prefetch=None,
    )


# Frequently used records ------------------------------------------------------------------------------------
def lbp(onset: str = "2026-09-01", **kwargs: Any) -> dict[str, Any]:
    """Low back pain (SNOMED and ICD-10-CM, as EHRs send it)."""
    resource = condition(SNOMED, "279039007", onset=onset, display="Low back pain", **kwargs)
    resource["code"]["coding"].append({"system": ICD, "code": "M54.50", "display": "Low back pain, unspecified"})
    return resource


def sciatica(onset: str = "2026-09-01", **kwargs: Any) -> dict[str, Any]:
    return condition(SNOMED, "23056005", onset=onset, display="Sciatica", **kwargs)


def naproxen_trial(start: str = "2026-09-10", end: str = "2026-10-10") -> dict[str, Any]:
    """Naproxen 500 mg for about 4 weeks: an adequate NSAID trial."""
    return med_statement("198014", start=start, end=end, dose="500 mg twice daily")
