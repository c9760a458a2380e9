"""FHIR-free facts: what the decision core knows about the patient and the draft orders.

Everything here is a frozen dataclass built by :mod:`cds_service.clinical.record_reader` (the only module
that reads FHIR) and consumed by :mod:`cds_service.clinical.decision` (which never sees FHIR).

"Unknown is not false" (PRODUCT.md §3.1): every fact family carries the resource types it was
extracted from in :attr:`ClinicalFacts.unknown_types` when those types could not be obtained, so that the
decision core can keep a variant *possible* instead of treating missing data as absence.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal

DrugClass = Literal["nsaid", "systemic_corticosteroid"]
# How a medication exposure counts (PRODUCT.md §3.2): a trial (NSAID, or steroid burst/prolonged course)
# is conservative therapy; long-term steroid use is a red flag and never a trial.
CourseKind = Literal["trial", "burst", "prolonged", "long_term"]
OrderKind = Literal["imaging", "medication", "procedure", "referral", "other"]


@dataclass(frozen=True)
class CodeRef:
    """One ICD-10-CM or SNOMED coding of a condition on record (for the reasonCode of a suggested order)."""

    system: str
    code: str
    display: str | None = None


@dataclass(frozen=True)
class Finding:
    """One recognised concept on the record, with where it came from and when."""

    concept: str  # a Knowledge concept key, e.g. "malignancy"
    reference: str  # "Condition/123"
    recorded: date | None  # onset, effective or recorded date (None when the record gives none)
    label: str  # human-readable name from the resource (coding display or text), for the card detail
    codes: tuple[CodeRef, ...] = ()


@dataclass(frozen=True)
class SymptomEpisode:
    """The back-pain episode: earliest onset of any back pain, sciatica, radiculopathy, disc or stenosis condition."""

    onset: date | None
    weeks: float | None  # at ``now``; None when no onset date is known
    findings: tuple[Finding, ...]
    radicular: bool  # sciatica, radiculopathy, disc disorder with radiculopathy or stenosis on record
    active: bool  # at least one of the conditions is still active (not only resolved)


@dataclass(frozen=True)
class MedicationCourse:
    """One NSAID or systemic corticosteroid exposure (a MedicationStatement or MedicationRequest)."""

    reference: str
    drug_class: DrugClass
    ingredient: str
    dose_text: str | None
    start: date | None
    end: date | None
    weeks: float | None  # None when neither the period nor the supply duration gives a length
    kind: CourseKind
    long_term_coded: bool = False  # the record itself calls it long-term use


# Why a recognised NSAID or corticosteroid is not a conservative-therapy trial (PRODUCT.md §3.2): a key of the card
# terms' "not_counted" words. "non_systemic" and "antiplatelet_aspirin" come from the drug's form and dose; the
# knowledge base adds its own exclusions ("mineralocorticoid").
NotCountedReason = str


@dataclass(frozen=True)
class UncountedMedication:
    """An NSAID or corticosteroid on record that is not a trial (topical form, low-dose aspirin): the card says why."""

    reference: str
    label: str  # the record's own words for the drug (coding display or text), else the ingredient
    start: date | None
    reason: NotCountedReason


@dataclass(frozen=True)
class PriorImaging:
    """A lumbar imaging study already done or ordered (ServiceRequest, DiagnosticReport, ImagingStudy)."""

    reference: str
    procedure_key: str
    performed: date | None


@dataclass(frozen=True)
class LabResult:
    reference: str
    value: float
    recorded: date | None
    unit: str | None = None


@dataclass(frozen=True)
class DraftOrder:
    """One order from ``draftOrders``, recognised for what it is, whatever its FHIR version."""

    reference: str  # "ServiceRequest/abc" (as the client named it; used for update/delete actions)
    resource_type: str  # ServiceRequest, ProcedureRequest, MedicationRequest, MedicationOrder, ...
    kind: OrderKind
    selected: bool  # order-select: in ``selections``; order-sign: every draft is selected
    procedure_key: str | None = None  # lumbar imaging key (MR_LSPINE_WO ...) for imaging orders
    non_lumbar_imaging: bool = False  # an imaging order outside the lumbar spine: no rating, no card
    drug_class: DrugClass | None = None
    concepts: frozenset[str] = frozenset()  # concepts of the order's own code (ESI, referral ...)
    reason_concepts: frozenset[str] = frozenset()  # concepts of its reasonCode
    reasons: tuple[Finding, ...] = ()  # the same, one Finding per concept with the reason's own label
    authored: date | None = None
    priority: str | None = None  # routine | urgent | asap | stat, as ordered
    # The raw JSON resource: opaque to the core; cards copy it into update actions (CDS Hooks updates carry the whole
    # resource).
    raw: Mapping[str, Any] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class ClinicalFacts:
    """Everything the decision core needs about the patient, FHIR-free."""

    age: int | None
    sex: str | None
    episode: SymptomEpisode
    courses: tuple[MedicationCourse, ...]
    physical_therapy: tuple[Finding, ...]  # PT procedures or referrals
    intervention_referrals: tuple[Finding, ...]  # ESI, spine-surgery or pain referrals on record
    red_flags: tuple[Finding, ...]  # every red-flag concept found (cauda equina ... weight loss)
    prior_imaging: tuple[PriorImaging, ...]
    implants: tuple[Finding, ...]
    kidney: tuple[Finding, ...]  # kidney failure or dialysis conditions
    egfr: LabResult | None  # the latest eGFR (any date; the core applies the look-back)
    max_temperature: LabResult | None  # the highest temperature within the look-back
    pregnancy: tuple[Finding, ...]
    gadolinium_allergy: tuple[Finding, ...]
    unknown_types: frozenset[str]  # resource types that could not be obtained (unknown, not absent)
    unavailable_reasons: tuple[tuple[str, str], ...] = ()  # (resourceType, why) for the missing-data card
    # Medications found but not counted as conservative therapy (topical, low-dose aspirin), for the card detail.
    uncounted_medications: tuple[UncountedMedication, ...] = ()

    def is_known(self, *resource_types: str) -> bool:
        """True when every one of the given resource types was obtained (possibly empty)."""
        return not any(t in self.unknown_types for t in resource_types)

    def any_known(self, *resource_types: str) -> bool:
        """True when at least one of the given resource types was obtained."""
        return any(t not in self.unknown_types for t in resource_types)


@dataclass(frozen=True)
class Extraction:
    """What the FHIR boundary hands to the engine: facts, draft orders and data-quality notes."""

    facts: ClinicalFacts
    orders: tuple[DraftOrder, ...]
    # "<type>/<id> skipped: <reason>" for every resource that failed validation (no patient identifiers).
    skipped: tuple[str, ...] = ()
