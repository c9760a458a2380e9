"""Neutral, FHIR-free facts: what the record says, before any clinical judgement.

The record reader (:mod:`cds_service.clinical.record_reader`) builds these from FHIR JSON: recognised
concepts with their codes, dates and statuses, medication exposures with their doses, routes and dates,
measurements with their values and interpretations. It judges nothing: look-backs, what a status means,
whether a course is a trial, whether a test is positive are decided by :mod:`cds_service.clinical.evidence`
and :mod:`cds_service.clinical.decision`, which never see FHIR.

"Unknown is not false": :attr:`ClinicalFacts.unknown_types` lists the resource types that could not be
obtained, so that the decision can keep a variant *possible* instead of treating missing data as absence.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal

OrderKind = Literal["imaging", "medication", "procedure", "referral", "other"]
# Every resource type the record reader reads (the record's parts that can be obtained or not).
RECORD_TYPES: tuple[str, ...] = (
    "Patient", "Condition", "MedicationStatement", "MedicationRequest", "Procedure", "Observation",
    "AllergyIntolerance", "Device", "ServiceRequest", "DiagnosticReport", "ImagingStudy",
)  # fmt: skip


@dataclass(frozen=True)
class CodeRef:
    """One ICD-10-CM or SNOMED coding of a condition on record (for the reasonCode of a suggested order)."""

    system: str
    code: str
    display: str | None = None


@dataclass(frozen=True)
class Finding:
    """One recognised concept on the record (or in a draft order's reason), with where it came from and when."""

    concept: str  # a concept key of the knowledge base, e.g. "malignancy"
    reference: str  # "Condition/123"
    recorded: date | None  # onset (any of its forms), performed, effective or recorded date; None when none is given
    label: str  # the record's own words (coding display or text), for the card detail
    codes: tuple[CodeRef, ...] = ()
    clinical_status: str | None = None  # Condition / AllergyIntolerance clinicalStatus code, as recorded
    verification: str | None = None  # Condition / AllergyIntolerance verificationStatus code, as recorded
    status: str | None = None  # the resource's own status (Procedure, ServiceRequest, Device, medication), as recorded
    ended: date | None = None  # abatement date of a condition
    by_text: bool = False  # recognised from words only (lower confidence)

    @property
    def resource_type(self) -> str:
        return self.reference.split("/", 1)[0]


@dataclass(frozen=True)
class MedicationExposure:
    """One medication statement or request of a drug class the knowledge base knows, as recorded."""

    reference: str
    status: str | None
    drug_class: str | None  # a drug class of the knowledge base; None for a drug excluded on purpose
    ingredient: str
    label: str  # the record's own words for the drug (coding display or text), else the ingredient
    systemic: bool  # route, dose form and text name no topical, ophthalmic, inhaled ... form
    antiplatelet_aspirin: bool  # low-dose aspirin (by strength, product or words)
    excluded_reason: str | None  # why the knowledge base excludes it from therapy ("mineralocorticoid"), if it does
    dose_text: str | None
    start: date | None
    end: date | None  # explicit, or start plus a stated duration or supply
    open_period: bool = False  # a statement whose effective period has a start and no end
    daily_dose_mg: float | None = None  # mg a day of the ingredient, when the dosage states it
    route: str | None = None  # the dosage route's words (display or text), as recorded


@dataclass(frozen=True)
class Measurement:
    """One observation of a measured concept (temperature, eGFR, pregnancy test), as recorded."""

    concept: str
    reference: str
    recorded: date | None
    status: str | None
    value: float | None  # temperatures in degrees Celsius (converted from Fahrenheit by the reader)
    unit: str | None
    value_codes: tuple[str, ...] = ()  # codes of valueCodeableConcept, as recorded
    value_text: str | None = None  # valueString, or the text of valueCodeableConcept
    interpretation: tuple[str, ...] = ()  # interpretation codes, as recorded
    label: str = ""


@dataclass(frozen=True)
class PriorImaging:
    """A lumbar imaging study done or ordered before (ServiceRequest, DiagnosticReport, ImagingStudy)."""

    reference: str
    procedure_key: str
    performed: date | None
    status: str | None = None


@dataclass(frozen=True)
class DraftOrder:
    """One order from ``draftOrders``, recognised for what it is, whatever its FHIR version."""

    reference: str  # "ServiceRequest/abc" (as the client named it; used for update/delete actions)
    resource_type: str  # ServiceRequest, ProcedureRequest, MedicationRequest, MedicationOrder, ...
    kind: OrderKind
    selected: bool  # order-select: in ``selections``; order-sign: every draft is selected
    procedure_key: str | None = None  # lumbar imaging key (MR_LSPINE_WO ...) for imaging orders
    drug_class: str | None = None  # medication orders: the drug class recognised
    systemic: bool = True  # medication orders: no topical form named
    antiplatelet_aspirin: bool = False
    concepts: frozenset[str] = frozenset()  # concepts of the order's own code (ESI, referral ...)
    reasons: tuple[Finding, ...] = ()  # the concepts of its reasonCode, one Finding each with the reason's own label
    priority: str | None = None  # routine | urgent | asap | stat, as ordered
    # The raw JSON resource: opaque to the core; cards copy it into update actions (CDS Hooks updates carry the whole
    # resource).
    raw: Mapping[str, Any] | None = field(default=None, compare=False)

    @property
    def reason_concepts(self) -> frozenset[str]:
        return frozenset(reason.concept for reason in self.reasons)


@dataclass(frozen=True)
class ClinicalFacts:
    """What the record says, FHIR-free and judgement-free."""

    age: int | None
    findings: tuple[Finding, ...]
    medications: tuple[MedicationExposure, ...]
    measurements: tuple[Measurement, ...]
    prior_imaging: tuple[PriorImaging, ...]
    unknown_types: frozenset[str]  # resource types that could not be obtained (unknown, not absent)
    unavailable_reasons: tuple[tuple[str, str], ...] = ()  # (resourceType, why) for the missing-data card

    def is_known(self, *resource_types: str) -> bool:
        """True when every one of the given resource types was obtained (possibly empty)."""
        return not any(t in self.unknown_types for t in resource_types)

    def any_known(self) -> bool:
        """True when some part of the record was obtained (possibly empty)."""
        return len(self.unknown_types) < len(RECORD_TYPES)


@dataclass(frozen=True)
class Extraction:
    """What the record reader hands to the engine: facts, draft orders and data-quality notes."""

    facts: ClinicalFacts
    orders: tuple[DraftOrder, ...]
    # "<type>/<id> skipped: <reason>" for every resource that failed validation (no patient identifiers).
    skipped: tuple[str, ...] = ()
