"""The FHIR boundary: a PatientRecord and the draftOrders Bundle in, neutral FHIR-free facts out.

It only reads: codes, dates, doses, routes, statuses, observation values and interpretations. It judges
nothing (no look-backs, no "is this a trial", no "is this test positive"): that is the decision's work
(:mod:`cds_service.clinical.evidence`). What it looks for, and in which resource types, comes from the
knowledge base's role table.

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
    RECORD_TYPES,
    ClinicalFacts,
    CodeRef,
    DraftOrder,
    Extraction,
    Finding,
    Measurement,
    MedicationExposure,
    OrderKind,
    PriorImaging,
)
from cds_service.clinical.fast_validation import QuickAcceptor
from cds_service.knowledge import Knowledge, MedicationInfo
from cds_service.knowledge.systems import ICD10CM, SNOMED
from cds_service.record import PatientRecord


def _with_extensions(*elements: str) -> frozenset[str]:
    """The element names and their primitive extensions ("_onsetDateTime" travels with "onsetDateTime")."""
    return frozenset({*elements, *(f"_{element}" for element in elements)})


# The elements the rules read, plus the elements R4 requires, per resource type. Only these are
# validated with fhir.resources ("parse and validate only what the rules need"): it keeps a
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
            "onsetAge",
            "onsetString",
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
    "dosage": _with_extensions("text", "timing", "route", "doseAndRate", "asNeededBoolean", "asNeededCodeableConcept"),
    "dosageInstruction": _with_extensions(
        "text", "timing", "route", "doseAndRate", "asNeededBoolean", "asNeededCodeableConcept"
    ),
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

assert tuple(_MODELS) == RECORD_TYPES, "a model for every record type, in the same order"

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
    "years": 365.25,
    "h": 1 / 24,
}
_FAHRENHEIT_UNITS = frozenset({"[degF]", "degF", "°F", "F"})
_DATE_RE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")


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


def _plain_status(resource: Mapping[str, Any]) -> str | None:
    status = resource.get("status")
    return status if isinstance(status, str) else None


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
    """Days of a FHIR Duration or Age ({value, unit|code})."""
    if not isinstance(value, dict) or not isinstance(value.get("value"), int | float):
        return None
    unit = str(value.get("code") or value.get("unit") or "d").lower()
    per_unit = _DAYS_PER_UNIT.get(unit)
    return float(value["value"]) * per_unit if per_unit is not None else None


@dataclass
class _Collector:
    """Mutable accumulator used while one record is read (never shared between requests)."""

    findings: list[Finding] = field(default_factory=list)
    medications: list[MedicationExposure] = field(default_factory=list)
    measurements: list[Measurement] = field(default_factory=list)
    prior_imaging: list[PriorImaging] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    age: int | None = None
    birth_date: date | None = None  # for onsetAge
    window_start: date = date.min  # measurements dated before this are not read


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


_Reader = Callable[[Mapping[str, Any], _Collector, frozenset[str]], None]


class RecordReader:
    """Reads records and draft orders into neutral facts. Build once per engine; :meth:`read` is re-entrant.

    What it looks for comes from the knowledge base's role table: a concept is looked for in the resource
    types its row lists (``found_in``). ``measurement_window_days``: observations of measured concepts older
    than this are not read at all (the rules only use recent ones, and a long chart's vital signs would
    otherwise cost a validation each); the rules still apply their own look-back.
    """

    def __init__(
        self, knowledge: Knowledge, *, measurement_window_days: int, memo: ValidationMemo | None = None
    ) -> None:
        self._knowledge = knowledge
        self._measurement_window_days = measurement_window_days
        self._memo = memo if memo is not None else ValidationMemo()
        self._found_in = {resource_type: knowledge.concepts_found_in(resource_type) for resource_type in _MODELS}
        self._medication_types = frozenset({"MedicationStatement", "MedicationRequest"})
        self._order_concepts = frozenset(
            key for key, role in knowledge.roles.items() if role.role in ("therapy", "candidacy")
        )
        self._order_kind_of = {key: role.order_kind for key, role in knowledge.roles.items() if role.order_kind}
        self._readers: Mapping[str, _Reader] = {
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
        """Facts of ``record`` and every draft order recognised (``selections`` None: all are selected)."""
        today = now.date()
        orders, order_skips = self.read_draft_orders(draft_orders, selections)
        draft_refs = frozenset(order.reference for order in orders)
        collector = _Collector()
        collector.skipped.extend(order_skips)
        for patient in record.of_type("Patient")[:1]:
            if isinstance(patient, dict) and self._validate(patient, collector):
                self._read_patient(patient, collector, today)
        collector.window_start = today - timedelta(days=self._measurement_window_days)
        for resource_type, reader in self._readers.items():
            for resource in record.of_type(resource_type):
                if not isinstance(resource, dict):
                    collector.skipped.append(f"{resource_type} skipped: not a JSON object")
                    continue
                try:
                    reader(resource, collector, draft_refs)
                except (TypeError, ValueError, AttributeError, KeyError, IndexError) as error:
                    # The pre-filter reads raw JSON before validation; a shape it did not expect (a list where an
                    # object belongs ...) skips that one resource, never the request.
                    collector.skipped.append(f"{_reference(resource)} skipped: unreadable ({type(error).__name__})")
        unknown = frozenset(t for t in RECORD_TYPES if not record.is_known(t))
        facts = ClinicalFacts(
            age=collector.age,
            findings=tuple(collector.findings),
            medications=tuple(collector.medications),
            measurements=tuple(collector.measurements),
            prior_imaging=tuple(collector.prior_imaging),
            unknown_types=unknown,
            unavailable_reasons=tuple(sorted((t, r) for t, r in record.unavailable.items() if t in RECORD_TYPES)),
        )
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
            medication = resource.get("medicationCodeableConcept")
            info = self._medication_info(medication)
            systemic = info is not None and info.systemic
            if info is not None and systemic:
                words = (_label(medication), _route_words(resource), _dose_text(resource))
                systemic = not any(self._knowledge.names_non_systemic_form(w, info.drug_class) for w in words)
            return DraftOrder(
                reference,
                resource_type,
                "medication" if info is not None else "other",
                selected,
                drug_class=info.drug_class if info is not None else None,
                systemic=systemic if info is not None else True,
                antiplatelet_aspirin=info.antiplatelet_aspirin if info is not None else False,
                raw=resource,
            )
        if resource_type not in ("ServiceRequest", "ProcedureRequest", "ReferralRequest"):
            return DraftOrder(reference, resource_type, "other", selected, raw=resource)
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
        order_concepts = concepts & self._order_concepts
        kind: OrderKind = "other"
        if procedure_key is not None:
            kind = "imaging"
        else:
            # "procedure" (an injection) before "referral" when a code names both.
            kinds = {self._order_kind_of[c] for c in order_concepts if c in self._order_kind_of}
            if "procedure" in kinds:
                kind = "procedure"
            elif "referral" in kinds:
                kind = "referral"
        return DraftOrder(
            reference,
            resource_type,
            kind,
            selected,
            procedure_key=procedure_key,
            concepts=order_concepts,
            reasons=tuple(reasons.values()),
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

    def _concepts(self, concept: Any, resource_type: str, *, text_only_if_uncoded: bool = False) -> frozenset[str]:
        """Concepts looked for in ``resource_type`` that a CodeableConcept names by code or, less surely, by words."""
        wanted = self._found_in[resource_type]
        coded = self._knowledge.concepts_of_codings(_codings(concept)) & wanted
        if coded and text_only_if_uncoded:
            return coded
        return coded | (self._knowledge.concepts_of_text(_label(concept)) & wanted)

    def _read_patient(self, patient: Mapping[str, Any], collector: _Collector, today: date) -> None:
        birth = parse_date(patient.get("birthDate"))
        collector.birth_date = birth
        if birth is not None:
            collector.age = today.year - birth.year - ((today.month, today.day) < (birth.month, birth.day))

    def _read_condition(self, resource: Mapping[str, Any], collector: _Collector, _drafts: frozenset[str]) -> None:
        code = resource.get("code")
        # Text is weaker evidence than a code: only used when no coding was recognised.
        concepts = self._concepts(code, "Condition", text_only_if_uncoded=True)
        if not concepts or not self._validate(resource, collector):
            return
        coded = bool(self._knowledge.concepts_of_codings(_codings(code)) & concepts)
        onset = _first(
            parse_date(resource.get("onsetDateTime")),
            _period(resource.get("onsetPeriod"))[0],
            self._date_at_age(resource.get("onsetAge"), collector.birth_date),
            parse_date(resource.get("onsetString")),
            parse_date(resource.get("recordedDate")),
        )
        ended = _first(parse_date(resource.get("abatementDateTime")), _period(resource.get("abatementPeriod"))[1])
        label = _label(code) or ""  # no words on record: the card names the concept
        codes = _code_refs(code)
        reference = _reference(resource)
        clinical = _status_code(resource.get("clinicalStatus"))
        verification = _status_code(resource.get("verificationStatus"))
        for concept in sorted(concepts):
            collector.findings.append(
                Finding(concept, reference, onset, label, codes, clinical, verification, None, ended, not coded)
            )

    @staticmethod
    def _date_at_age(age: Any, birth: date | None) -> date | None:
        days = _duration_days(age)
        if days is None or birth is None:
            return None
        try:
            return birth + timedelta(days=days)
        except OverflowError:
            return None

    def _read_medication(self, resource: Mapping[str, Any], collector: _Collector, drafts: frozenset[str]) -> None:
        if _reference(resource) in drafts:
            return  # the order being placed is not history
        medication = resource.get("medicationCodeableConcept")
        if medication is None:
            medication = _contained_medication_code(resource)
        codings = _codings(medication)
        info = self._medication_info(medication)
        flags = self._knowledge.concepts_of_codings(codings) & self._found_in[str(resource.get("resourceType"))]
        excluded = self._knowledge.medication_not_counted(codings, _label(medication)) if info is None else None
        if info is None and excluded is None and not flags:
            return
        if not self._validate(resource, collector):
            return
        reference = _reference(resource)
        status = _plain_status(resource)
        start, end, open_period = _course_dates(resource)
        label = _label(medication) or (info.ingredient if info else "")
        for concept in sorted(flags):
            collector.findings.append(Finding(concept, reference, start, label, (), status=status, ended=end))
        if info is None and excluded is None:
            return
        dose_text = _dose_text(resource)
        role = self._knowledge.drug_class_roles.get(info.drug_class) if info is not None else None
        route = _route_words(resource) if role is not None else None
        systemic = info.systemic if info is not None else True
        if info is not None and systemic:
            # The code may name only the ingredient: the drug's own words, its route and its dosage text still tell
            # a topical, inhaled or nasal form.
            systemic = not any(
                self._knowledge.names_non_systemic_form(words, info.drug_class) for words in (label, route, dose_text)
            )
        daily_mg = None
        if role is not None and role.role == "corticosteroid":  # the dose decides trial vs maintenance
            strength = _milligrams(info.strength) if info is not None and info.strength else _milligrams(label)
            daily_mg = _daily_dose_mg(resource, strength, dose_text)
        collector.medications.append(
            MedicationExposure(
                reference=reference,
                status=status,
                drug_class=info.drug_class if info is not None else None,
                ingredient=info.ingredient if info is not None else label,
                label=label,
                systemic=systemic,
                antiplatelet_aspirin=info.antiplatelet_aspirin if info is not None else False,
                excluded_reason=excluded,
                dose_text=dose_text or (info.strength if info is not None else None),
                start=start,
                end=end,
                open_period=open_period,
                daily_dose_mg=daily_mg,
                route=route,
            )
        )

    def _read_procedure(self, resource: Mapping[str, Any], collector: _Collector, _drafts: frozenset[str]) -> None:
        code = resource.get("code")
        concepts = self._concepts(code, "Procedure")
        if not concepts or not self._validate(resource, collector):
            return
        performed = _first(parse_date(resource.get("performedDateTime")), _period(resource.get("performedPeriod"))[0])
        self._add_findings(concepts, resource, code, performed, collector)

    def _add_findings(
        self,
        concepts: frozenset[str],
        resource: Mapping[str, Any],
        code: Any,
        when: date | None,
        collector: _Collector,
    ) -> None:
        reference, label, status = _reference(resource), _label(code) or "", _plain_status(resource)
        coded = self._knowledge.concepts_of_codings(_codings(code))
        for concept in sorted(concepts):
            by_text = concept not in coded
            collector.findings.append(Finding(concept, reference, when, str(label), (), status=status, by_text=by_text))

    def _read_observation(self, resource: Mapping[str, Any], collector: _Collector, _drafts: frozenset[str]) -> None:
        code = resource.get("code")
        concepts = self._knowledge.concepts_of_codings(_codings(code)) & self._found_in["Observation"]
        if not concepts:
            return
        when = _observation_date(resource)
        if when is not None and when < collector.window_start:
            return  # older than any rule looks (undated ones are read)
        if not self._validate(resource, collector):
            return
        quantity = _mapping(resource.get("valueQuantity"))
        value = quantity.get("value")
        unit = quantity.get("code") or quantity.get("unit")
        number = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
        if number is not None and str(unit) in _FAHRENHEIT_UNITS:
            number, unit = round((number - 32.0) * 5.0 / 9.0, 1), "Cel"
        value_concept = resource.get("valueCodeableConcept")
        value_text = _first(_label(value_concept), resource.get("valueString"))
        interpretation = tuple(
            code_
            for item in _as_list(resource.get("interpretation"))
            for _system, code_ in _codings(item)
            if isinstance(code_, str)
        )
        for concept in sorted(concepts):
            collector.measurements.append(
                Measurement(
                    concept=concept,
                    reference=_reference(resource),
                    recorded=when,
                    status=_plain_status(resource),
                    value=number,
                    unit=str(unit) if unit else None,
                    value_codes=tuple(c for _s, c in _codings(value_concept) if isinstance(c, str)),
                    value_text=value_text if isinstance(value_text, str) else None,
                    interpretation=interpretation,
                    label=_label(code) or "",
                )
            )

    def _read_allergy(self, resource: Mapping[str, Any], collector: _Collector, _drafts: frozenset[str]) -> None:
        code = resource.get("code")
        concepts = self._concepts(code, "AllergyIntolerance")
        if not concepts or not self._validate(resource, collector):
            return
        when = _first(parse_date(resource.get("onsetDateTime")), parse_date(resource.get("recordedDate")))
        reference, label = _reference(resource), _label(code) or ""
        clinical = _status_code(resource.get("clinicalStatus"))
        verification = _status_code(resource.get("verificationStatus"))
        coded = self._knowledge.concepts_of_codings(_codings(code))
        for concept in sorted(concepts):
            finding = Finding(concept, reference, when, label, (), clinical, verification, by_text=concept not in coded)
            collector.findings.append(finding)

    def _read_device(self, resource: Mapping[str, Any], collector: _Collector, _drafts: frozenset[str]) -> None:
        type_ = resource.get("type")
        names = [n.get("name") for n in _as_list(resource.get("deviceName")) if isinstance(n, dict)]
        concepts = self._concepts(type_, "Device")
        for name in names:
            if isinstance(name, str):
                concepts |= self._knowledge.concepts_of_text(name) & self._found_in["Device"]
        if not concepts or not self._validate(resource, collector):
            return
        label = _label(type_) or next((n for n in names if isinstance(n, str)), None) or ""
        reference, status = _reference(resource), _plain_status(resource)
        coded = self._knowledge.concepts_of_codings(_codings(type_))
        for concept in sorted(concepts):
            finding = Finding(concept, reference, None, label, (), status=status, by_text=concept not in coded)
            collector.findings.append(finding)

    def _read_service_request(self, resource: Mapping[str, Any], collector: _Collector, drafts: frozenset[str]) -> None:
        if _reference(resource) in drafts:
            return  # draft orders are the question being asked, not history
        code = resource.get("code")
        procedure_key = self._procedure_key(_codings(code))
        concepts = self._concepts(code, "ServiceRequest")
        if procedure_key is None and not concepts:
            return
        if not self._validate(resource, collector):
            return
        when = _first(
            parse_date(resource.get("occurrenceDateTime")),
            _period(resource.get("occurrencePeriod"))[0],
            parse_date(resource.get("authoredOn")),
        )
        if procedure_key is not None:
            collector.prior_imaging.append(
                PriorImaging(_reference(resource), procedure_key, when, _plain_status(resource))
            )
        if concepts:
            self._add_findings(concepts, resource, code, when, collector)

    def _read_imaging_report(self, resource: Mapping[str, Any], collector: _Collector, _drafts: frozenset[str]) -> None:
        if resource.get("resourceType") == "ImagingStudy":
            codings = [pair for concept in _as_list(resource.get("procedureCode")) for pair in _codings(concept)]
            when = parse_date(resource.get("started"))
        else:
            codings = _codings(resource.get("code"))
            when = _observation_date(resource)
        procedure_key = self._procedure_key(codings)
        if procedure_key is None or not self._validate(resource, collector):
            return
        collector.prior_imaging.append(PriorImaging(_reference(resource), procedure_key, when, _plain_status(resource)))

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


def _observation_date(resource: Mapping[str, Any]) -> date | None:
    when: date | None = _first(
        parse_date(resource.get("effectiveDateTime")),
        _period(resource.get("effectivePeriod"))[0],
        parse_date(resource.get("issued")),
    )
    return when


def _course_dates(resource: Mapping[str, Any]) -> tuple[date | None, date | None, bool]:
    """Start and end of a medication exposure as recorded, and whether it is an open period (no end stated).

    A request's end is its start plus a stated duration or supply (timing bounds, expected supply
    duration), else the end of the dispense validity.
    """
    if resource.get("resourceType") == "MedicationStatement":
        period = resource.get("effectivePeriod")
        start, end = _period(period)
        start = _first(start, parse_date(resource.get("effectiveDateTime")), parse_date(resource.get("dateAsserted")))
        return start, end, isinstance(period, dict) and end is None and start is not None
    start = parse_date(resource.get("authoredOn"))
    dispense = _mapping(resource.get("dispenseRequest"))
    validity_start, validity_end = _period(dispense.get("validityPeriod"))
    for dosage in _as_list(resource.get("dosageInstruction")):
        repeat = _mapping(_mapping(_mapping(dosage).get("timing")).get("repeat"))
        bounds_start, bounds_end = _period(repeat.get("boundsPeriod"))
        if bounds_start or bounds_end:
            return _first(bounds_start, start), bounds_end, False
        bounds_days = _duration_days(repeat.get("boundsDuration"))
        if bounds_days is not None and start is not None:
            return start, start + timedelta(days=bounds_days), False
    supply_days = _duration_days(dispense.get("expectedSupplyDuration"))
    start = _first(start, validity_start)
    if supply_days is not None and start is not None:
        return start, start + timedelta(days=supply_days), False
    return start, validity_end, False


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


_MG_AMOUNT = re.compile(r"(\d+(?:\.\d+)?)\s*(?:mg|milligrams?)\b", re.IGNORECASE)
_MILLIGRAM_UNITS = frozenset({"mg", "milligram", "milligrams"})
# Units that count dose units (tablets, capsules): multiplied by the product's strength.
_COUNT_UNITS = frozenset({"", "1", "{tbl}", "{tablet}", "tablet", "tablets", "tab", "{capsule}", "capsule", "capsules"})
_PERIOD_DAYS = {"s": 1 / 86400, "min": 1 / 1440, "h": 1 / 24, "d": 1.0, "wk": 7.0, "mo": 30.44, "a": 365.25}
# Times a day named in dosage text, most specific first.
_TIMES_A_DAY = (
    (re.compile(r"\b(four times|qid|q\.i\.d\.?)\b", re.IGNORECASE), 4.0),
    (re.compile(r"\b(three times|tid|t\.i\.d\.?)\b", re.IGNORECASE), 3.0),
    (re.compile(r"\b(twice|two times|bid|b\.i\.d\.?)\b", re.IGNORECASE), 2.0),
    (
        re.compile(
            r"\b(once daily|once a day|daily|every day|a day|qd|q\.d\.?|every morning|at night)\b", re.IGNORECASE
        ),
        1.0,
    ),
)
_EVERY_HOURS = re.compile(r"\bevery (\d+) ?(?:hours|hrs?|h)\b|\bq(\d+)h\b", re.IGNORECASE)


def _milligrams(text: str | None) -> float | None:
    match = _MG_AMOUNT.search(text or "")
    return float(match.group(1)) if match else None


def _dosages(resource: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [
        d for d in _as_list(resource.get("dosage")) + _as_list(resource.get("dosageInstruction")) if isinstance(d, dict)
    ]


def _daily_dose_mg(resource: Mapping[str, Any], strength_mg: float | None, dose_text: str | None) -> float | None:
    """Milligrams a day of the ingredient: the structured dose and timing first, then the dosage text."""
    for dosage in _dosages(resource):
        per_dose = None
        for dose_and_rate in _as_list(dosage.get("doseAndRate")):
            quantity = _mapping(_mapping(dose_and_rate).get("doseQuantity"))
            value = quantity.get("value")
            if not isinstance(value, int | float) or isinstance(value, bool):
                continue
            unit = str(quantity.get("code") or quantity.get("unit") or "").lower()
            if unit in _MILLIGRAM_UNITS:
                per_dose = float(value)
            elif unit in _COUNT_UNITS and strength_mg is not None:
                per_dose = float(value) * strength_mg
        repeat = _mapping(_mapping(dosage.get("timing")).get("repeat"))
        frequency, period = repeat.get("frequency"), repeat.get("period")
        period_days = _PERIOD_DAYS.get(str(repeat.get("periodUnit") or ""))
        if (
            per_dose is not None
            and isinstance(frequency, int | float)
            and isinstance(period, int | float)
            and period_days is not None
            and period > 0
        ):
            return per_dose * float(frequency) / (float(period) * period_days)
    return _daily_dose_from_text(dose_text, strength_mg)


def _daily_dose_from_text(text: str | None, strength_mg: float | None) -> float | None:
    if not text:
        return None
    per_dose = _milligrams(text) or strength_mg
    if per_dose is None:
        return None
    hours = _EVERY_HOURS.search(text)
    if hours:
        every = float(hours.group(1) or hours.group(2))
        return per_dose * 24.0 / every if every > 0 else None
    for pattern, times in _TIMES_A_DAY:
        if pattern.search(text):
            return per_dose * times
    return None


def _route_words(resource: Mapping[str, Any]) -> str | None:
    for dosage in _dosages(resource):
        words = _label(dosage.get("route"))
        if words:
            return words
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
