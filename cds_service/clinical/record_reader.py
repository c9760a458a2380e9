"""The FHIR boundary: a PatientRecord and the draftOrders Bundle in, FHIR-free facts out.

This is the only module of the engine that uses ``fhir.resources`` (with its helper
:mod:`cds_service.clinical.fast_validation`, which reads the models' rules). Resources are handled in two
steps because a large record (2,000 resources) cannot afford full model validation of everything:

1. a pre-filter on the raw JSON (resource type, and whether any coding or text names a concept the
   knowledge base cares about), which costs one hash lookup per coding;
2. validation of the relevant resources only, of the elements the rules read: a verdict remembered for the
   same content, else the quick check of plain shapes, else the R4B models (``model_validate``), which
   alone refuse. A resource that fails is skipped and reported (``"<type>/<id> skipped: <reason>"``); it
   never fails the request.

Values are then read from the raw JSON that passed validation: FHIR partial dates (``"2024-05"``) stay
strings in the models anyway, and reading the dict avoids a second walk through pydantic objects.

Draft orders from STU3 (``ProcedureRequest``) and DSTU2 (``MedicationOrder``) clients, as the public
Sandbox sends, are read leniently from the raw JSON; R4 drafts are validated, but an invalid draft is
still read (the order being placed is the question asked; a warning says it did not validate).
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import Any

import orjson
from fhir.resources.R4B.allergyintolerance import AllergyIntolerance
from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.medicationstatement import MedicationStatement
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.procedure import Procedure
from fhir.resources.R4B.servicerequest import ServiceRequest
from pydantic import ValidationError

from cds_service.clinical.facts import (
    ClinicalFacts,
    CodeRef,
    CourseKind,
    DraftOrder,
    DrugClass,
    Extraction,
    Finding,
    LabResult,
    MedicationCourse,
    NotCountedReason,
    OrderKind,
    PriorImaging,
    SymptomEpisode,
    UncountedMedication,
)
from cds_service.clinical.fast_validation import QuickAcceptor
from cds_service.knowledge import Knowledge, MedicationInfo, Thresholds
from cds_service.knowledge.systems import CPT, ICD10CM, SNOMED
from cds_service.record import PatientRecord


def _with_extensions(*elements: str) -> frozenset[str]:
    """The element names and their primitive extensions ("_onsetDateTime" travels with "onsetDateTime")."""
    return frozenset({*elements, *(f"_{element}" for element in elements)})


# The elements the rules read, plus the elements R4 requires, per resource type. Only these are
# validated with fhir.resources (issue 5: "parse and validate only what the rules need"): it keeps a
# relevant resource's validation to about 60 % of a full one, and elements no rule reads (narrative,
# meta, identifiers, notes ...) cannot make a resource be skipped. Keep in step with the readers below.
_VALIDATED_ELEMENTS: Mapping[str, frozenset[str]] = {
    resource_type: _with_extensions("resourceType", "id", *elements)
    for resource_type, elements in {
        "Patient": ("birthDate", "gender"),
        "Condition": (
            "clinicalStatus",
            "verificationStatus",
            "code",
            "subject",
            "onsetDateTime",
            "onsetPeriod",
            "abatementDateTime",
            "abatementPeriod",
            "recordedDate",
        ),
        "MedicationStatement": (
            "status",
            "medicationCodeableConcept",
            "medicationReference",
            "contained",
            "subject",
            "effectiveDateTime",
            "effectivePeriod",
            "dateAsserted",
            "dosage",
        ),
        "MedicationRequest": (
            "status",
            "intent",
            "medicationCodeableConcept",
            "medicationReference",
            "contained",
            "subject",
            "authoredOn",
            "dosageInstruction",
            "dispenseRequest",
        ),
        "Procedure": ("status", "code", "subject", "performedDateTime", "performedPeriod"),
        "Observation": (
            "status",
            "code",
            "subject",
            "effectiveDateTime",
            "effectivePeriod",
            "issued",
            "valueQuantity",
            "valueCodeableConcept",
            "valueString",
            "interpretation",
        ),
        "AllergyIntolerance": (
            "code",
            "patient",
            "clinicalStatus",
            "verificationStatus",
            "onsetDateTime",
            "recordedDate",
        ),
        "Device": ("status", "type", "deviceName", "patient"),
        "ServiceRequest": (
            "status",
            "intent",
            "code",
            "subject",
            "occurrenceDateTime",
            "occurrencePeriod",
            "authoredOn",
            "reasonCode",
            "priority",
        ),
        "DiagnosticReport": ("status", "code", "subject", "effectiveDateTime", "effectivePeriod", "issued"),
        "ImagingStudy": ("status", "subject", "started", "procedureCode"),
    }.items()
}


# Within the heaviest elements, the parts the rules read (dose text and timing; supply period).
_VALIDATED_SUB_ELEMENTS: Mapping[str, frozenset[str]] = {
    "dosage": _with_extensions("text", "timing"),
    "dosageInstruction": _with_extensions("text", "timing"),
    "dispenseRequest": _with_extensions("validityPeriod", "expectedSupplyDuration"),
}


def _validated_part(resource: Mapping[str, Any]) -> Mapping[str, Any]:
    """The elements of ``resource`` that the rules read (the whole resource for a type not listed)."""
    elements = _VALIDATED_ELEMENTS.get(resource.get("resourceType", ""))
    if elements is None:
        return resource
    part = {key: value for key, value in resource.items() if key in elements}
    for name, keep in _VALIDATED_SUB_ELEMENTS.items():
        if name in part:
            part[name] = _only(part[name], keep)
    return part


def _only(value: Any, keep: frozenset[str]) -> Any:
    """``value`` (an object or a list of objects) reduced to the members in ``keep``; anything else as is."""
    if isinstance(value, dict):
        return {key: member for key, member in value.items() if key in keep}
    if isinstance(value, list):
        return [_only(item, keep) for item in value]
    return value


_MODELS: Mapping[str, Any] = {
    "Patient": Patient,
    "Condition": Condition,
    "MedicationStatement": MedicationStatement,
    "MedicationRequest": MedicationRequest,
    "Procedure": Procedure,
    "Observation": Observation,
    "AllergyIntolerance": AllergyIntolerance,
    "Device": Device,
    "ServiceRequest": ServiceRequest,
    "DiagnosticReport": DiagnosticReport,
    "ImagingStudy": ImagingStudy,
}

# Draft orders validated as R4; other versions' drafts (ProcedureRequest, MedicationOrder) are read leniently.
_R4_DRAFT_MODELS: Mapping[str, Any] = {"ServiceRequest": ServiceRequest, "MedicationRequest": MedicationRequest}

# Every resource type the engine reads; the missing-data card names the ones that could not be obtained.
RECORD_TYPES: tuple[str, ...] = tuple(_MODELS)

# Concepts that define the back-pain episode (PRODUCT.md §3.2) and the radicular subset (§3.3, variant 3).
EPISODE_CONCEPTS = frozenset(
    {"low_back_pain", "sciatica", "lumbar_radiculopathy", "lumbar_disc_disorder", "lumbar_stenosis"}
)
RADICULAR_CONCEPTS = frozenset({"sciatica", "lumbar_radiculopathy", "lumbar_disc_disorder", "lumbar_stenosis"})
RED_FLAG_CONCEPTS = frozenset(
    {
        "cauda_equina_syndrome",
        "urinary_retention",
        "fecal_incontinence",
        "saddle_anesthesia",
        "malignancy",
        "spinal_infection",
        "fever",
        "recent_infection",
        "iv_drug_use",
        "hiv",
        "transplant",
        "immunosuppression",
        "long_term_steroids",
        "weight_loss",
        "osteoporosis",
        "vertebral_fracture",
        "low_velocity_trauma",
        "prior_lumbar_surgery",
    }
)
# History red flags count whatever their clinical status and age (PRODUCT.md §3.1).
HISTORY_CONCEPTS = frozenset({"malignancy", "prior_lumbar_surgery"})
# Current findings only count within the look-back window.
CURRENT_FINDING_CONCEPTS = frozenset({"fever", "recent_infection", "low_velocity_trauma"})
SAFETY_CONCEPTS = frozenset({"mr_implant", "kidney_failure", "dialysis", "pregnancy", "gadolinium_allergy"})
THERAPY_CONCEPTS = frozenset({"physical_therapy", "epidural_steroid_injection", "spine_intervention_referral"})
CONDITION_CONCEPTS = EPISODE_CONCEPTS | RED_FLAG_CONCEPTS | SAFETY_CONCEPTS
OBSERVATION_CONCEPTS = frozenset({"body_temperature", "egfr", "pregnancy_test"})

_ACTIVE_CLINICAL = frozenset({"active", "recurrence", "relapse"})
_RESOLVED_CLINICAL = frozenset({"resolved", "inactive", "remission"})
_EXCLUDED_VERIFICATION = frozenset({"entered-in-error", "refuted"})
_EXCLUDED_EVENT_STATUS = frozenset({"entered-in-error", "not-done", "cancelled"})
_PRIOR_ORDER_STATUS = frozenset({"active", "completed"})
_POSITIVE_CODES = frozenset({"10828004", "pos", "positive", "detected", "260373001"})
_NEGATIVE_WORDS = ("neg", "not detected", "absent")
_DAYS_PER_UNIT = {
    "d": 1.0,
    "day": 1.0,
    "days": 1.0,
    "wk": 7.0,
    "week": 7.0,
    "weeks": 7.0,
    "mo": 30.44,
    "month": 30.44,
    "months": 30.44,
    "a": 365.25,
    "year": 365.25,
    "h": 1 / 24,
}
_DATE_RE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")
_RADIOLOGY_CPT = re.compile(r"^7\d{4}$")  # CPT radiology section 70010-79999: imaging, lumbar or not


def parse_date(value: Any) -> date | None:
    """Parse a FHIR date, dateTime or instant (partial dates allowed: "2024" -> 2024-01-01); None when absent or bad."""
    if not isinstance(value, str):
        return None
    if len(value) >= 10 and value[4] == "-" and value[7] == "-":
        # The common full date (or dateTime) in C; anything it refuses takes the general path below.
        try:
            return date.fromisoformat(value[:10])
        except ValueError:
            pass
    match = _DATE_RE.match(value)
    if not match:
        return None
    year, month, day = match.group(1), match.group(2) or "01", match.group(3) or "01"
    try:
        return date(int(year), int(month), int(day))
    except ValueError:
        return None


def _codings(concept: Any) -> list[tuple[str | None, str | None]]:
    """The (system, code) pairs of a CodeableConcept (raw JSON)."""
    if not isinstance(concept, dict):
        return []
    codings = concept.get("coding")
    if not isinstance(codings, list):
        return []
    return [(c.get("system"), c.get("code")) for c in codings if isinstance(c, dict)]


def _label(concept: Any) -> str | None:
    """A readable name of a CodeableConcept: its text, else the first coding display."""
    if not isinstance(concept, dict):
        return None
    text = concept.get("text")
    if isinstance(text, str) and text.strip():
        return text.strip()
    for coding in concept.get("coding") or ():
        if isinstance(coding, dict) and isinstance(coding.get("display"), str) and coding["display"].strip():
            return str(coding["display"]).strip()
    return None


def _code_refs(concept: Any) -> tuple[CodeRef, ...]:
    """ICD-10-CM and SNOMED codings of a CodeableConcept (what a suggested order's reasonCode carries)."""
    if not isinstance(concept, dict):
        return ()
    refs = []
    for coding in concept.get("coding") or ():
        if not isinstance(coding, dict):
            continue
        system, code = coding.get("system"), coding.get("code")
        if system in (SNOMED, ICD10CM) and isinstance(code, str) and code:
            display = coding.get("display")
            refs.append(CodeRef(system, code, display if isinstance(display, str) and display else None))
    return tuple(refs)


def _status_code(concept: Any) -> str | None:
    """The code of a status CodeableConcept (clinicalStatus, verificationStatus), or a plain string status."""
    if isinstance(concept, str):
        return concept
    for _system, code in _codings(concept):
        if code:
            return code
    return None


def _reference(resource: Mapping[str, Any]) -> str:
    return f"{resource.get('resourceType')}/{resource.get('id', '?')}"


def _first(*values: Any) -> Any:
    for value in values:
        if value is not None:
            return value
    return None


def _period(value: Any) -> tuple[date | None, date | None]:
    if not isinstance(value, dict):
        return None, None
    return parse_date(value.get("start")), parse_date(value.get("end"))


def _duration_days(value: Any) -> float | None:
    """Days of a FHIR Duration ({value, unit|code})."""
    if not isinstance(value, dict) or not isinstance(value.get("value"), int | float):
        return None
    unit = str(value.get("code") or value.get("unit") or "d").lower()
    per_unit = _DAYS_PER_UNIT.get(unit)
    return float(value["value"]) * per_unit if per_unit is not None else None


def _weeks_between(start: date | None, end: date | None) -> float | None:
    if start is None or end is None or end < start:
        return None
    return (end - start).days / 7.0


@dataclass
class _Collector:
    """Mutable accumulator used while one record is read (never shared between requests)."""

    episode: list[tuple[Finding, bool]] = field(default_factory=list)
    red_flags: list[Finding] = field(default_factory=list)
    implants: list[Finding] = field(default_factory=list)
    kidney: list[Finding] = field(default_factory=list)
    pregnancy: list[Finding] = field(default_factory=list)
    allergy: list[Finding] = field(default_factory=list)
    physical_therapy: list[Finding] = field(default_factory=list)
    referrals: list[Finding] = field(default_factory=list)
    courses: list[tuple[str, DrugClass, MedicationInfo, str | None, date | None, date | None, float | None]] = field(
        default_factory=list
    )
    prior_imaging: list[PriorImaging] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    uncounted: list[UncountedMedication] = field(default_factory=list)
    temperatures: list[LabResult] = field(default_factory=list)
    egfrs: list[LabResult] = field(default_factory=list)
    long_term_steroid_coded: bool = False
    age: int | None = None
    sex: str | None = None


@lru_cache(maxsize=1)
def quick_acceptor() -> QuickAcceptor:
    """The quick check of plain shapes for every type the engine reads (built once per process)."""
    return QuickAcceptor(_MODELS)


class ValidationMemo:
    """Remembers validation verdicts by a digest of the validated content (bounded; thread-safe).

    Validation is a pure function of the content, and the same record arrives again and again:
    order-select fires on every change to the order, then order-sign follows with the same
    prefetch. Validating a resource costs 40-100 µs with fhir.resources; its digest costs about
    5 µs. A resource whose content changes in any validated element gets a new digest, so a
    verdict is never reused for different content. Content seen for the first time goes to the
    quick check of plain shapes first (:mod:`cds_service.clinical.fast_validation`), and to
    fhir.resources only when that cannot say yes.
    """

    def __init__(self, capacity: int = 50_000, acceptor: QuickAcceptor | None = None) -> None:
        self._capacity = capacity
        self._verdicts: OrderedDict[bytes, str | None] = OrderedDict()
        self._lock = threading.Lock()
        self._acceptor = acceptor if acceptor is not None else quick_acceptor()

    def verdict(self, model: Any, part: Mapping[str, Any]) -> str | None:
        """None when ``part`` validates with ``model``; else the short reason (see ``_validation_error``)."""
        try:
            payload = orjson.dumps(part, option=orjson.OPT_SORT_KEYS)
        except (TypeError, orjson.JSONEncodeError):
            return _validation_error(model, part)  # not plain JSON: validate without remembering
        digest = hashlib.blake2b(payload, digest_size=16).digest()
        try:
            return self._verdicts[digest]
        except KeyError:
            pass
        verdict = None if self._acceptor.accepts(model.__name__, part) else _validation_error(model, part)
        with self._lock:
            if len(self._verdicts) >= self._capacity:
                # Oldest first: a bounded FIFO (OrderedDict, since popping a plain dict's first key scans
                # every slot already emptied: 2.7 µs per insert at capacity instead of 0.1).
                self._verdicts.popitem(last=False)
            self._verdicts[digest] = verdict
        return verdict

    def __len__(self) -> int:
        return len(self._verdicts)


class RecordReader:
    """Reads records and draft orders into facts. Build once per engine; :meth:`read` is re-entrant."""

    def __init__(self, knowledge: Knowledge, thresholds: Thresholds, memo: ValidationMemo | None = None) -> None:
        self._knowledge = knowledge
        self._thresholds = thresholds
        self._memo = memo if memo is not None else ValidationMemo()
        self._readers: Mapping[str, Callable[[Mapping[str, Any], _Collector, date, frozenset[str]], None]] = {
            "Condition": self._read_condition,
            "MedicationStatement": self._read_medication,
            "MedicationRequest": self._read_medication,
            "Procedure": self._read_procedure,
            "Observation": self._read_observation,
            "AllergyIntolerance": self._read_allergy,
            "Device": self._read_device,
            "ServiceRequest": self._read_service_request,
            "DiagnosticReport": self._read_imaging_report,
            "ImagingStudy": self._read_imaging_report,
        }

    # ----------------------------------------------------------------------------------------- public
    def read(
        self,
        record: PatientRecord,
        draft_orders: Mapping[str, Any],
        selections: tuple[str, ...] | None,
        now: datetime,
    ) -> Extraction:
        """Extract facts from ``record`` and recognise every draft order (``selections`` None: all are selected)."""
        today = now.date()
        orders, order_skips = self.read_draft_orders(draft_orders, selections)
        draft_refs = frozenset(order.reference for order in orders)
        collector = _Collector()
        collector.skipped.extend(order_skips)
        for patient in record.of_type("Patient")[:1]:
            if isinstance(patient, dict) and self._validate(patient, collector):
                self._read_patient(patient, collector, today)
        for resource_type, reader in self._readers.items():
            for resource in record.of_type(resource_type):
                if not isinstance(resource, dict):
                    collector.skipped.append(f"{resource_type} skipped: not a JSON object")
                    continue
                try:
                    reader(resource, collector, today, draft_refs)
                except (TypeError, ValueError, AttributeError, KeyError, IndexError) as error:
                    # The pre-filter reads raw JSON before validation; a shape it did not expect (a list where an
                    # object belongs ...) skips that one resource, never the request.
                    collector.skipped.append(f"{_reference(resource)} skipped: unreadable ({type(error).__name__})")
        unknown = frozenset(t for t in RECORD_TYPES if not record.is_known(t))
        facts = self._facts(collector, today, unknown, record)
        return Extraction(facts=facts, orders=orders, skipped=tuple(collector.skipped))

    def read_draft_orders(
        self, bundle: Mapping[str, Any], selections: tuple[str, ...] | None
    ) -> tuple[tuple[DraftOrder, ...], list[str]]:
        """Recognise the orders of a draftOrders Bundle (any FHIR version; ``type`` may be missing)."""
        orders: list[DraftOrder] = []
        notes: list[str] = []
        entries = bundle.get("entry") if isinstance(bundle, dict) else None
        for entry in entries if isinstance(entries, list) else ():
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
                continue
            reference = _reference(resource)
            selected = selections is None or any(s == reference or s.endswith("/" + reference) for s in selections)
            model = _R4_DRAFT_MODELS.get(resource["resourceType"])
            if model is not None and selected:
                reason = self._memo.verdict(model, resource)
                if reason:
                    notes.append(f"{reference} did not validate (read leniently): {reason}")
            try:
                orders.append(self._draft_order(resource, reference, selected))
            except (TypeError, ValueError, AttributeError, KeyError, IndexError) as error:
                # An order this service cannot read is not one it can rate: it gets nothing, the request goes on.
                notes.append(f"{reference} unreadable ({type(error).__name__}): not evaluated")
                orders.append(DraftOrder(reference, resource["resourceType"], "other", selected, raw=resource))
        return tuple(orders), notes

    # ---------------------------------------------------------------------------------- draft orders
    def _draft_order(self, resource: Mapping[str, Any], reference: str, selected: bool) -> DraftOrder:
        resource_type = resource["resourceType"]
        authored = parse_date(
            _first(resource.get("authoredOn"), resource.get("dateWritten"), resource.get("orderedOn"))
        )
        if resource_type in ("MedicationRequest", "MedicationOrder", "MedicationStatement"):
            info = self._medication_info(resource.get("medicationCodeableConcept"))
            drug_class = info.drug_class if info is not None and _counts_as_therapy(info) else None
            kind: OrderKind = "medication" if drug_class else "other"
            return DraftOrder(
                reference,
                resource_type,
                kind,
                selected,
                drug_class=_as_drug_class(drug_class),
                authored=authored,
                raw=resource,
            )
        if resource_type not in ("ServiceRequest", "ProcedureRequest", "ReferralRequest"):
            return DraftOrder(reference, resource_type, "other", selected, authored=authored, raw=resource)
        code = resource.get("code")
        codings = _codings(code)
        procedure_key = self._procedure_key(codings)
        concepts = self._knowledge.concepts_of_codings(codings) | self._knowledge.concepts_of_text(_label(code))
        for specialty in _as_list(resource.get("specialty")):  # STU3 ReferralRequest
            concepts |= self._knowledge.concepts_of_text(_label(specialty))
        reasons: dict[str, Finding] = {}
        for reason in _as_list(resource.get("reasonCode")) + _as_list(resource.get("reasonCodeableConcept")):
            found = self._knowledge.concepts_of_codings(_codings(reason)) | self._knowledge.concepts_of_text(
                _label(reason)
            )
            for concept in sorted(found):
                reasons.setdefault(
                    concept, Finding(concept, reference, authored, _label(reason) or concept, _code_refs(reason))
                )
        reason_concepts = frozenset(reasons)
        if procedure_key is not None:
            kind = "imaging"
        elif "epidural_steroid_injection" in concepts:
            kind = "procedure"
        elif "spine_intervention_referral" in concepts:
            kind = "referral"
        else:
            kind = "other"
        non_lumbar = procedure_key is None and any(
            system == CPT and code_ and _RADIOLOGY_CPT.match(code_) for system, code_ in codings
        )
        return DraftOrder(
            reference,
            resource_type,
            kind,
            selected,
            procedure_key=procedure_key,
            non_lumbar_imaging=bool(non_lumbar),
            concepts=concepts & THERAPY_CONCEPTS,
            reason_concepts=reason_concepts,
            reasons=tuple(reasons.values()),
            authored=authored,
            priority=resource.get("priority") if isinstance(resource.get("priority"), str) else None,
            raw=resource,
        )

    # ------------------------------------------------------------------------------------- record readers
    def _validate(self, resource: Mapping[str, Any], collector: _Collector) -> bool:
        model = _MODELS[resource.get("resourceType", "")]
        reason = self._memo.verdict(model, _validated_part(resource))
        if reason is None:
            return True
        # A Patient id is a patient identifier: name the type only.
        name = "Patient" if resource.get("resourceType") == "Patient" else _reference(resource)
        collector.skipped.append(f"{name} skipped: {reason}")
        return False

    def _read_patient(self, patient: Mapping[str, Any], collector: _Collector, today: date) -> None:
        birth = parse_date(patient.get("birthDate"))
        if birth is not None:
            collector.age = today.year - birth.year - ((today.month, today.day) < (birth.month, birth.day))
        gender = patient.get("gender")
        collector.sex = gender if isinstance(gender, str) else None

    def _read_condition(
        self, resource: Mapping[str, Any], collector: _Collector, today: date, _drafts: frozenset[str]
    ) -> None:
        code = resource.get("code")
        concepts = self._knowledge.concepts_of_codings(_codings(code)) & CONDITION_CONCEPTS
        if not concepts:
            # Text is weaker evidence than a code: only used when no coding was recognised.
            concepts = self._knowledge.concepts_of_text(_label(code)) & CONDITION_CONCEPTS
        if not concepts:
            return
        if _status_code(resource.get("verificationStatus")) in _EXCLUDED_VERIFICATION:
            return
        if not self._validate(resource, collector):
            return
        clinical = _status_code(resource.get("clinicalStatus"))
        onset_start, _ = _period(resource.get("onsetPeriod"))
        recorded = _first(
            parse_date(resource.get("onsetDateTime")), onset_start, parse_date(resource.get("recordedDate"))
        )
        abatement_end = _first(
            parse_date(resource.get("abatementDateTime")), _period(resource.get("abatementPeriod"))[1]
        )
        active = clinical is None or clinical in _ACTIVE_CLINICAL
        recently_resolved = (
            clinical in _RESOLVED_CLINICAL
            and abatement_end is not None
            and (today - abatement_end).days <= self._thresholds.current_finding_lookback_days
        )
        label = _label(code) or ""  # no words on record: the card names the concept
        codes = _code_refs(code)
        reference = _reference(resource)
        for concept in sorted(concepts):
            finding = Finding(concept, reference, recorded, label, codes)
            if concept in HISTORY_CONCEPTS:
                collector.red_flags.append(finding)
                continue
            if not (active or recently_resolved):
                continue
            if concept in CURRENT_FINDING_CONCEPTS and not self._within_lookback(recorded, today):
                continue
            if concept in EPISODE_CONCEPTS:
                collector.episode.append((finding, active))
            elif concept in RED_FLAG_CONCEPTS:
                collector.red_flags.append(finding)
                if concept == "long_term_steroids":
                    collector.long_term_steroid_coded = True
            elif concept == "mr_implant":
                collector.implants.append(finding)
            elif concept in ("kidney_failure", "dialysis"):
                collector.kidney.append(finding)
            elif concept == "pregnancy":
                collector.pregnancy.append(finding)
            elif concept == "gadolinium_allergy":
                collector.allergy.append(finding)

    def _read_medication(
        self, resource: Mapping[str, Any], collector: _Collector, today: date, _drafts: frozenset[str]
    ) -> None:
        if resource.get("status") == "entered-in-error":
            return
        if _reference(resource) in _drafts:
            return  # the order being placed is not history
        medication = resource.get("medicationCodeableConcept")
        if medication is None:
            medication = _contained_medication_code(resource)
        info = self._medication_info(medication)
        flag_concepts = self._knowledge.concepts_of_codings(_codings(medication)) & {
            "immunosuppression",
            "long_term_steroids",
        }
        excluded = (
            self._knowledge.medication_not_counted(_codings(medication), _label(medication)) if info is None else None
        )
        if info is None and excluded is None and not flag_concepts:
            return
        if not self._validate(resource, collector):
            return
        reference = _reference(resource)
        start, end = self._course_dates(resource, today)
        label = _label(medication) or (info.ingredient if info else "")
        for concept in sorted(flag_concepts):
            collector.red_flags.append(Finding(concept, reference, start, label, ()))
        if info is None:
            if excluded is not None and label:
                collector.uncounted.append(UncountedMedication(reference, label, start, excluded))
            return
        reason = _not_counted_reason(info)
        if reason is not None:
            # Found but not a trial: the card names it, so that the clinician sees why it did not count.
            collector.uncounted.append(UncountedMedication(reference, label, start, reason))
            return
        dose = _dose_text(resource) or info.strength
        drug_class = _as_drug_class(info.drug_class)
        if drug_class is None:
            return
        collector.courses.append((reference, drug_class, info, dose, start, end, _weeks_between(start, end)))

    def _course_dates(self, resource: Mapping[str, Any], today: date) -> tuple[date | None, date | None]:
        """Start and end of a medication exposure; an active statement with no end runs until today."""
        if resource.get("resourceType") == "MedicationStatement":
            start, end = _period(resource.get("effectivePeriod"))
            start = _first(
                start, parse_date(resource.get("effectiveDateTime")), parse_date(resource.get("dateAsserted"))
            )
            if end is None and start is not None and resource.get("status") in ("active", "intended", None):
                end = today if resource.get("effectivePeriod") else None
            return start, end
        start = parse_date(resource.get("authoredOn"))
        dispense = _mapping(resource.get("dispenseRequest"))
        validity_start, validity_end = _period(dispense.get("validityPeriod"))
        for dosage in _as_list(resource.get("dosageInstruction")):
            repeat = _mapping(_mapping(_mapping(dosage).get("timing")).get("repeat"))
            bounds_start, bounds_end = _period(repeat.get("boundsPeriod"))
            if bounds_start or bounds_end:
                return _first(bounds_start, start), bounds_end
            bounds_days = _duration_days(repeat.get("boundsDuration"))
            if bounds_days is not None and start is not None:
                return start, start + timedelta(days=bounds_days)
        supply_days = _duration_days(dispense.get("expectedSupplyDuration"))
        start = _first(start, validity_start)
        if supply_days is not None and start is not None:
            return start, start + timedelta(days=supply_days)
        return start, validity_end

    def _read_procedure(
        self, resource: Mapping[str, Any], collector: _Collector, today: date, _drafts: frozenset[str]
    ) -> None:
        code = resource.get("code")
        concepts = (
            self._knowledge.concepts_of_codings(_codings(code)) | self._knowledge.concepts_of_text(_label(code))
        ) & (THERAPY_CONCEPTS | RED_FLAG_CONCEPTS)
        if not concepts or resource.get("status") in _EXCLUDED_EVENT_STATUS:
            return
        if not self._validate(resource, collector):
            return
        performed = _first(parse_date(resource.get("performedDateTime")), _period(resource.get("performedPeriod"))[0])
        finding_date = performed or parse_date(resource.get("recorded"))
        self._therapy_or_flag(concepts, resource, code, finding_date, collector, today)

    def _therapy_or_flag(
        self,
        concepts: frozenset[str],
        resource: Mapping[str, Any],
        code: Any,
        when: date | None,
        collector: _Collector,
        today: date,
    ) -> None:
        reference, label = _reference(resource), _label(code) or ""
        for concept in sorted(concepts):
            finding = Finding(concept, reference, when, str(label), ())
            if concept == "physical_therapy":
                collector.physical_therapy.append(finding)
            elif concept in ("epidural_steroid_injection", "spine_intervention_referral"):
                collector.referrals.append(finding)
            elif concept in HISTORY_CONCEPTS or concept not in CURRENT_FINDING_CONCEPTS:
                collector.red_flags.append(finding)
            elif self._within_lookback(when, today):
                collector.red_flags.append(finding)

    def _read_observation(
        self, resource: Mapping[str, Any], collector: _Collector, today: date, _drafts: frozenset[str]
    ) -> None:
        concepts = self._knowledge.concepts_of_codings(_codings(resource.get("code"))) & OBSERVATION_CONCEPTS
        if not concepts or resource.get("status") in _EXCLUDED_EVENT_STATUS:
            return
        when = _first(
            parse_date(resource.get("effectiveDateTime")),
            _period(resource.get("effectivePeriod"))[0],
            parse_date(resource.get("issued")),
        )
        if "egfr" not in concepts and not self._within_lookback(when, today):
            # A temperature or pregnancy test outside the look-back is never used: a long chart's vital
            # signs would otherwise cost a validation each (the large-record budget).
            return
        if not self._validate(resource, collector):
            return
        reference = _reference(resource)
        quantity = _mapping(resource.get("valueQuantity"))
        value = quantity.get("value")
        unit = quantity.get("code") or quantity.get("unit")
        if "body_temperature" in concepts and isinstance(value, int | float):
            celsius = (float(value) - 32.0) * 5.0 / 9.0 if str(unit) in ("[degF]", "degF", "°F", "F") else float(value)
            if self._within_lookback(when, today):
                collector.temperatures.append(LabResult(reference, round(celsius, 1), when, "Cel"))
        if "egfr" in concepts and isinstance(value, int | float):
            collector.egfrs.append(LabResult(reference, float(value), when, str(unit) if unit else None))
        if "pregnancy_test" in concepts and _is_positive(resource) and self._within_lookback(when, today):
            collector.pregnancy.append(Finding("pregnancy", reference, when, _label(resource.get("code")) or "", ()))

    def _read_allergy(
        self, resource: Mapping[str, Any], collector: _Collector, today: date, _drafts: frozenset[str]
    ) -> None:
        code = resource.get("code")
        concepts = self._knowledge.concepts_of_codings(_codings(code)) | self._knowledge.concepts_of_text(_label(code))
        if "gadolinium_allergy" not in concepts:
            return
        if _status_code(resource.get("verificationStatus")) in _EXCLUDED_VERIFICATION:
            return
        if _status_code(resource.get("clinicalStatus")) in _RESOLVED_CLINICAL:
            return
        if not self._validate(resource, collector):
            return
        when = _first(parse_date(resource.get("onsetDateTime")), parse_date(resource.get("recordedDate")))
        collector.allergy.append(Finding("gadolinium_allergy", _reference(resource), when, _label(code) or "", ()))

    def _read_device(
        self, resource: Mapping[str, Any], collector: _Collector, today: date, _drafts: frozenset[str]
    ) -> None:
        type_ = resource.get("type")
        names = [n.get("name") for n in _as_list(resource.get("deviceName")) if isinstance(n, dict)]
        concepts = self._knowledge.concepts_of_codings(_codings(type_)) | self._knowledge.concepts_of_text(
            _label(type_)
        )
        for name in names:
            concepts |= self._knowledge.concepts_of_text(name if isinstance(name, str) else None)
        if "mr_implant" not in concepts or resource.get("status") in ("entered-in-error", "inactive"):
            return
        if not self._validate(resource, collector):
            return
        label = _label(type_) or next((n for n in names if isinstance(n, str)), None) or ""
        collector.implants.append(Finding("mr_implant", _reference(resource), None, label, ()))

    def _read_service_request(
        self, resource: Mapping[str, Any], collector: _Collector, today: date, drafts: frozenset[str]
    ) -> None:
        if _reference(resource) in drafts or resource.get("status") in ("entered-in-error", "draft", "revoked"):
            return  # draft orders are the question being asked, not history
        code = resource.get("code")
        codings = _codings(code)
        procedure_key = self._procedure_key(codings)
        concepts = (self._knowledge.concepts_of_codings(codings) | self._knowledge.concepts_of_text(_label(code))) & (
            THERAPY_CONCEPTS | RED_FLAG_CONCEPTS
        )
        is_prior_imaging = procedure_key is not None and resource.get("status") in _PRIOR_ORDER_STATUS
        if not is_prior_imaging and not concepts:
            return
        if not self._validate(resource, collector):
            return
        when = _first(
            parse_date(resource.get("occurrenceDateTime")),
            _period(resource.get("occurrencePeriod"))[0],
            parse_date(resource.get("authoredOn")),
        )
        if is_prior_imaging and procedure_key is not None:
            collector.prior_imaging.append(PriorImaging(_reference(resource), procedure_key, when))
        if concepts:
            self._therapy_or_flag(concepts, resource, code, when, collector, today)

    def _read_imaging_report(
        self, resource: Mapping[str, Any], collector: _Collector, today: date, _drafts: frozenset[str]
    ) -> None:
        if resource.get("status") in ("entered-in-error", "cancelled"):
            return
        if resource.get("resourceType") == "ImagingStudy":
            codings = [pair for concept in _as_list(resource.get("procedureCode")) for pair in _codings(concept)]
            when = parse_date(resource.get("started"))
        else:
            codings = _codings(resource.get("code"))
            when = _first(
                parse_date(resource.get("effectiveDateTime")),
                _period(resource.get("effectivePeriod"))[0],
                parse_date(resource.get("issued")),
            )
        procedure_key = self._procedure_key(codings)
        if procedure_key is None:
            return
        if not self._validate(resource, collector):
            return
        collector.prior_imaging.append(PriorImaging(_reference(resource), procedure_key, when))

    # ------------------------------------------------------------------------------------------ helpers
    def _procedure_key(self, codings: Iterable[tuple[str | None, str | None]]) -> str | None:
        for system, code in codings:
            key = self._knowledge.procedure_key(system, code)
            if key is not None:
                return key
        return None

    def _medication_info(self, concept: Any) -> MedicationInfo | None:
        for system, code in _codings(concept):
            info = self._knowledge.medication(system, code)
            if info is not None:
                return info
        return self._knowledge.medication_from_text(_label(concept)) if concept is not None else None

    def _within_lookback(self, when: date | None, today: date) -> bool:
        # An undated current finding still counts: dropping it would hide a possible red flag.
        return when is None or (today - when).days <= self._thresholds.current_finding_lookback_days

    def _facts(self, c: _Collector, today: date, unknown: frozenset[str], record: PatientRecord) -> ClinicalFacts:
        episode_findings = tuple(f for f, _active in c.episode)
        onsets = [f.recorded for f in episode_findings if f.recorded is not None]
        onset = min(onsets) if onsets else None
        episode = SymptomEpisode(
            onset=onset,
            weeks=(today - onset).days / 7.0 if onset is not None else None,
            findings=episode_findings,
            radicular=any(f.concept in RADICULAR_CONCEPTS for f in episode_findings),
            active=any(active for _f, active in c.episode),
        )
        courses = tuple(self._course(item, c.long_term_steroid_coded) for item in c.courses)
        egfr = max(c.egfrs, key=lambda r: r.recorded or date.min) if c.egfrs else None
        temperature = max(c.temperatures, key=lambda r: r.value) if c.temperatures else None
        return ClinicalFacts(
            age=c.age,
            sex=c.sex,
            episode=episode,
            courses=courses,
            physical_therapy=tuple(c.physical_therapy),
            intervention_referrals=tuple(c.referrals),
            red_flags=tuple(c.red_flags),
            prior_imaging=tuple(c.prior_imaging),
            implants=tuple(c.implants),
            kidney=tuple(c.kidney),
            egfr=egfr,
            max_temperature=temperature,
            pregnancy=tuple(c.pregnancy),
            gadolinium_allergy=tuple(c.allergy),
            unknown_types=unknown,
            unavailable_reasons=tuple(sorted((t, r) for t, r in record.unavailable.items() if t in RECORD_TYPES)),
            uncounted_medications=tuple(c.uncounted),
        )

    def _course(
        self,
        item: tuple[str, DrugClass, MedicationInfo, str | None, date | None, date | None, float | None],
        long_term_coded: bool,
    ) -> MedicationCourse:
        reference, drug_class, info, dose, start, end, weeks = item
        kind: CourseKind = "trial"
        if drug_class == "systemic_corticosteroid":
            long_term_days = self._thresholds.long_term_steroid_months * 30.44
            if long_term_coded or (weeks is not None and weeks * 7 >= long_term_days):
                kind = "long_term"
            elif weeks is not None and weeks > self._thresholds.steroid_burst_weeks:
                kind = "prolonged"
            else:
                kind = "burst"
        return MedicationCourse(
            reference,
            drug_class,
            info.ingredient,
            dose,
            start,
            end,
            weeks,
            kind,
            long_term_coded and drug_class == "systemic_corticosteroid",
        )


def _validation_error(model: Any, resource: Mapping[str, Any]) -> str | None:
    """None when the resource validates; else a short reason naming the field (never the offending value)."""
    try:
        model.model_validate(resource)
    except ValidationError as error:
        details = error.errors()
        if not details:
            return "invalid"
        location = ".".join(str(part) for part in details[0]["loc"]) or "resource"
        return f"{location}: {details[0]['type']}"
    except (TypeError, ValueError) as error:  # fhir.resources raises these for a wrong resourceType
        return type(error).__name__
    return None


def _mapping(value: Any) -> Mapping[str, Any]:
    """The value when it is a JSON object, else an empty one (lenient navigation of raw JSON)."""
    return value if isinstance(value, dict) else {}


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    return [] if value is None else [value]


def _as_drug_class(value: str | None) -> DrugClass | None:
    if value == "nsaid":
        return "nsaid"
    if value == "systemic_corticosteroid":
        return "systemic_corticosteroid"
    return None


def _counts_as_therapy(info: MedicationInfo) -> bool:
    """Topical forms and low-dose antiplatelet aspirin are not a systemic NSAID/steroid trial (clinical.md §2.2)."""
    return info.systemic and not info.antiplatelet_aspirin and info.drug_class in ("nsaid", "systemic_corticosteroid")


def _not_counted_reason(info: MedicationInfo) -> NotCountedReason | None:
    """Why a recognised drug is not a systemic NSAID/steroid trial (clinical.md §2.2); None when it counts."""
    if info.antiplatelet_aspirin:
        return "antiplatelet_aspirin"
    if not info.systemic:
        return "non_systemic"
    return None


def _dose_text(resource: Mapping[str, Any]) -> str | None:
    for dosage in _as_list(resource.get("dosage")) + _as_list(resource.get("dosageInstruction")):
        if isinstance(dosage, dict) and isinstance(dosage.get("text"), str) and dosage["text"].strip():
            return str(dosage["text"]).strip()
    return None


def _contained_medication_code(resource: Mapping[str, Any]) -> Any:
    reference = resource.get("medicationReference")
    target = reference.get("reference") if isinstance(reference, dict) else None
    if isinstance(target, str) and target.startswith("#"):
        for contained in _as_list(resource.get("contained")):
            if isinstance(contained, dict) and contained.get("id") == target[1:]:
                return contained.get("code")
    if isinstance(reference, dict) and isinstance(reference.get("display"), str):
        return {"text": reference["display"]}
    return None


def _is_positive(observation: Mapping[str, Any]) -> bool:
    value = observation.get("valueCodeableConcept")
    for _system, code in _codings(value):
        if code and code.lower() in _POSITIVE_CODES:
            return True
    text = _first(_label(value), observation.get("valueString"))
    if isinstance(text, str):
        lowered = text.lower()
        return "pos" in lowered and not any(word in lowered for word in _NEGATIVE_WORDS)
    for interpretation in _as_list(observation.get("interpretation")):
        for _system, code in _codings(interpretation):
            if code in ("POS", "A", "H"):
                return True
    return False
