"""The decision core: facts and draft orders in, a Decision out. PURE: no Flask, no I/O, no clock, no FHIR.

Recommendation (ACR Appropriateness Criteria, Low Back Pain, 2021 update; Hutchins TA et al., JACR
2021;18(11S):S361-S379): uncomplicated low back pain, with or without radiculopathy, warrants no imaging;
imaging is considered after 6 weeks of optimal medical management in a surgery or intervention candidate
(variant 3), or at once for red flags: cauda equina (variant 4), cancer, infection or immunosuppression
(variant 7), fracture risk (variant 6) and prior lumbar surgery (variant 5).

When / Then (docs/clinical-rules.md#how-an-order-is-decided):

* When a lumbar imaging order is selected, then every ACR variant still *possible* given what is known is
  found, in the precedence V4 -> V7 -> V6 -> V5 -> V3 -> V1/V2 (data that could not be obtained keeps a
  variant possible), and the order is rated only when all of them give the same rating.
* When a red flag is on record, then its card is always shown; the highest-precedence variant drives it.
* When the patient has failed conservative therapy, then MRI lumbar spine without contrast is the next step:
  convert another imaging order to it, or create it from an NSAID, steroid, injection or referral order.
* When there is no red flag and no failed therapy, then the imaging order should be removed.
* Safety concerns (implant and MRI; contrast MRI and low eGFR, dialysis, allergy, pregnancy) change the
  suggestions, never the rating. A lumbar MRI in the last 12 months makes a new one a duplicate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Literal

from cds_service.clinical.evidence import Evidence, MedicationCourse, interpret
from cds_service.clinical.facts import ClinicalFacts, DraftOrder, Finding, PriorImaging
from cds_service.clinical.rules import MEDICATION_TYPES, RED_FLAG_VARIANTS, ClinicalRules
from cds_service.knowledge import AcrCategory

RatingCode = Literal["appropriate", "not-appropriate", "no-criteria-apply"]
ActionKind = Literal["create", "update", "delete"]
Priority = Literal["routine", "urgent", "stat"]
# One card kind per situation (docs/clinical-rules.md, "Cards"); the names are the keys of the card texts
# (knowledge cards.json), which also hold each card's indicator.
ConcernKind = Literal[
    "cauda_equina",
    "cancer_infection",
    "cancer_infection_contrast_concern",
    "fracture_risk",
    "prior_surgery",
    "failed_therapy_convert",
    "failed_therapy_create",
    "confirm_candidacy",
    "conservative_care_first",
    "no_documented_therapy",
    "duplicate_mri",
    "mr_implant",
    "contrast_safety",
    "pregnancy",
    "data_missing",
    "inadequate_therapy",
    "trial_length_unknown",
    "motor_deficit",
    "duplicate_draft",
    "child_criteria",
    "child_red_flag",
    "child_cauda_equina",
    "duration_unknown",
]
# Cards of a red flag: the orders they suggest carry no therapy notes (the flag, not failed therapy, is the reason).
RED_FLAG_CONCERNS: frozenset[str] = frozenset(
    {
        "cauda_equina",
        "cancer_infection",
        "cancer_infection_contrast_concern",
        "fracture_risk",
        "child_red_flag",
        "child_cauda_equina",
    }
)

_RATING_OF_CATEGORY: Mapping[AcrCategory, RatingCode] = {
    "UA": "appropriate",
    "MBA": "appropriate",
    "UNA": "not-appropriate",
}

MRI_KEYS = frozenset({"MR_LSPINE_WO", "MR_LSPINE_W", "MR_LSPINE_WWO", "MR_LSPINE"})
CONTRAST_MRI_KEYS = frozenset({"MR_LSPINE_W", "MR_LSPINE_WWO"})
CONTRAST_KEYS = CONTRAST_MRI_KEYS | frozenset({"CT_LSPINE_W", "CT_LSPINE_WWO", "CT_MYELO_LSPINE"})
# Orders that pregnancy makes a concern for: gadolinium or ionising radiation (docs/clinical-rules.md, "Safety").
PREGNANCY_CONCERN_KEYS = CONTRAST_MRI_KEYS | frozenset(
    {"XR_LSPINE", "CT_LSPINE_WO", "CT_LSPINE_W", "CT_LSPINE_WWO", "CT_MYELO_LSPINE"}
)
MRI_WITHOUT_CONTRAST = "MR_LSPINE_WO"
_IMAGING_TYPES = ("ServiceRequest", "DiagnosticReport", "ImagingStudy")
# Procedures each red-flag variant suggests, best first (docs/clinical-rules.md, "Cards").
_VARIANT_ALTERNATIVES: Mapping[int, tuple[str, ...]] = {
    4: (MRI_WITHOUT_CONTRAST,),
    7: ("MR_LSPINE_WWO", MRI_WITHOUT_CONTRAST),
    6: ("XR_LSPINE", MRI_WITHOUT_CONTRAST, "CT_LSPINE_WO"),
    5: ("MR_LSPINE_WWO", MRI_WITHOUT_CONTRAST, "XR_LSPINE"),
}
_VARIANT_CONCERN: Mapping[int, ConcernKind] = {
    4: "cauda_equina",
    7: "cancer_infection",
    6: "fracture_risk",
    5: "prior_surgery",
}
# The suggestion names of the card texts for each alternative procedure.
SUGGESTION_OF_PROCEDURE: Mapping[str, str] = {
    "MR_LSPINE_WWO": "mri_wwo",
    MRI_WITHOUT_CONTRAST: "mri_wo",
    "XR_LSPINE": "radiographs",
    "CT_LSPINE_WO": "ct_wo",
}
_DAYS_PER_MONTH = 30.44


@dataclass(frozen=True)
class Rating:
    code: RatingCode
    category: AcrCategory | None  # the ACR category for the translation coding; None for no-criteria-apply
    variants: tuple[int, ...]  # the variants that were possible when the order was rated


@dataclass(frozen=True)
class Proposal:
    """One suggestion the cards should offer (what to do, not how to say it)."""

    purpose: str  # the suggestion name in the card texts: "convert", "create", "remove", "keep_urgent", "mri_wo" ...
    action: ActionKind
    procedure_key: str | None = None
    priority: Priority = "routine"
    recommended: bool = False
    # The rating the suggested procedure gets from the same facts, carried by the order it creates or converts to.
    rating: Rating | None = None


@dataclass(frozen=True)
class Concern:
    """One card's worth of decision: one order, one concern."""

    kind: ConcernKind
    order: str  # the draft order reference the card is about
    proposals: tuple[Proposal, ...] = ()
    findings: tuple[Finding, ...] = ()  # evidence to cite (red flags, implants, prior imaging ...)
    missing_types: tuple[str, ...] = ()  # for "data_missing": resource types that could not be obtained
    safety: tuple[Finding, ...] = ()  # contrast or pregnancy concerns that shaped the suggestions


@dataclass(frozen=True)
class TherapyAssessment:
    """Conservative therapy on record (docs/clinical-rules.md, "Conservative therapy"); ``None`` is unknown."""

    symptom_weeks: float | None
    duration_met: bool | None
    nsaid_courses: tuple[MedicationCourse, ...]  # systemic NSAIDs within the episode
    steroid_courses: tuple[MedicationCourse, ...]  # bursts and prolonged courses (trials) within the episode
    long_term_steroids: tuple[MedicationCourse, ...]  # not a trial: a red flag
    physical_therapy: tuple[Finding, ...]
    nsaid_adequate: bool
    adequate: bool | None
    active: bool
    failed: bool | None
    radicular: bool
    candidate: bool | None  # documented surgery/intervention referral (on record or among the draft orders)
    # NSAID courses whose length the record does not give, when nothing else makes the trial adequate: adequacy is
    # unknown, not absent.
    unknown_length: tuple[MedicationCourse, ...] = ()
    maintenance: tuple[MedicationCourse, ...] = ()  # low-dose steroid courses: neither a trial nor a red flag


@dataclass(frozen=True)
class VariantAssessment:
    possible: tuple[int, ...]  # variants possible given what is known, in precedence order
    driving: int | None  # the variant that drives the card (highest-precedence one on record), if determined
    flags: Mapping[int, tuple[Finding, ...]]  # red flags on record, per matched red-flag variant
    unknown_sources: tuple[str, ...]  # resource types whose absence keeps some variant possible


@dataclass(frozen=True)
class OrderDecision:
    order: DraftOrder
    rating: Rating | None
    variants: VariantAssessment | None
    concerns: tuple[Concern, ...]
    no_recent_egfr: bool = False  # a contrast order and no eGFR within the look-back: said in the card detail
    category: AcrCategory | None = None  # the ACR category of the order in its driving variant, when there is one


@dataclass(frozen=True)
class Decision:
    orders: tuple[OrderDecision, ...]
    therapy: TherapyAssessment
    evidence: Evidence

    @property
    def determined_anything(self) -> bool:
        """False when no selected order got a rating or a card other than the missing-data one."""
        return any(o.rating is not None or any(c.kind != "data_missing" for c in o.concerns) for o in self.orders)

    @property
    def needs_data(self) -> bool:
        """True when some selected order could not be answered for lack of data."""
        return any(c.kind == "data_missing" for o in self.orders for c in o.concerns)


def decide(facts: ClinicalFacts, orders: tuple[DraftOrder, ...], rules: ClinicalRules, today: date) -> Decision:
    """Decide ratings and concerns for every selected draft order. Pure: same input, same output."""
    return decide_from_evidence(interpret(facts, rules, today), orders, rules, today)


def decide_from_evidence(
    evidence: Evidence, orders: tuple[DraftOrder, ...], rules: ClinicalRules, today: date
) -> Decision:
    """The decision once the facts are judged (see :func:`cds_service.clinical.evidence.interpret`)."""
    therapy = assess_therapy(evidence, orders, rules, today)
    decisions = tuple(
        _decide_order(order, evidence, orders, therapy, rules, today) for order in orders if order.selected
    )
    return Decision(orders=decisions, therapy=therapy, evidence=evidence)


# ----------------------------------------------------------------------------------------------- therapy
def assess_therapy(
    evidence: Evidence, orders: tuple[DraftOrder, ...], rules: ClinicalRules, today: date
) -> TherapyAssessment:
    """Symptom duration, adequate trials and candidacy (docs/clinical-rules.md, "Conservative therapy")."""
    thresholds = rules.thresholds
    episode = evidence.episode
    conditions_known = evidence.is_known("Condition")
    if episode.weeks is not None:
        duration_met: bool | None = episode.weeks >= thresholds.symptom_weeks
    else:
        # Conditions obtained with no dated episode: the duration is not documented, so it is not met.
        duration_met = False if conditions_known else None
    onset = episode.onset

    def in_episode(course: MedicationCourse) -> bool:
        last_day = course.end or course.start or today
        return onset is None or last_day >= onset

    nsaids = tuple(c for c in evidence.courses if c.drug_class == "nsaid" and in_episode(c))
    steroids = tuple(
        c
        for c in evidence.courses
        if c.drug_class == "systemic_corticosteroid" and c.kind in ("burst", "prolonged", "trial") and in_episode(c)
    )
    long_term = tuple(c for c in evidence.courses if c.kind == "long_term")
    nsaid_adequate = len(nsaids) >= thresholds.nsaid_trial_min_orders or any(
        c.weeks is not None and c.weeks >= thresholds.nsaid_trial_weeks for c in nsaids
    )
    found_trial = nsaid_adequate or bool(steroids) or bool(evidence.physical_therapy)
    unknown_length = () if found_trial else tuple(c for c in nsaids if c.weeks is None)
    therapy_known = evidence.is_known(*MEDICATION_TYPES, "Procedure", "ServiceRequest")
    adequate: bool | None = True if found_trial else (False if therapy_known and not unknown_length else None)
    active = episode.active or not conditions_known
    failed = _and3(duration_met, adequate, active)
    draft_candidacy = any(o.kind in ("procedure", "referral") for o in orders)
    if evidence.intervention_referrals or draft_candidacy:
        candidate: bool | None = True
    else:
        candidate = False if evidence.is_known("ServiceRequest", "Procedure") else None
    return TherapyAssessment(
        symptom_weeks=episode.weeks,
        duration_met=duration_met,
        nsaid_courses=nsaids,
        steroid_courses=steroids,
        long_term_steroids=long_term,
        physical_therapy=evidence.physical_therapy,
        nsaid_adequate=nsaid_adequate,
        adequate=adequate,
        active=episode.active,
        failed=failed,
        radicular=episode.radicular,
        candidate=candidate,
        unknown_length=unknown_length,
        maintenance=tuple(c for c in evidence.courses if c.kind == "maintenance" and in_episode(c)),
    )


def _and3(*values: bool | None) -> bool | None:
    """Three-valued AND: False wins, then unknown."""
    if any(v is False for v in values):
        return False
    if any(v is None for v in values):
        return None
    return True


# ---------------------------------------------------------------------------------------------- variants
def assess_variants(
    evidence: Evidence, therapy: TherapyAssessment, order: DraftOrder, rules: ClinicalRules
) -> VariantAssessment:
    """The ACR variants possible for this order, in precedence order, and the one that drives the card."""
    flags = _red_flags(evidence, therapy, order, rules)
    possible: list[int] = []
    unknown_sources: list[str] = []
    driving: int | None = None
    for variant in RED_FLAG_VARIANTS:
        if flags.get(variant):
            possible.append(variant)
            driving = variant
            break
        missing = [t for t in rules.variant_sources[variant] if t in evidence.unknown_types]
        if variant == 6 and evidence.age is None and "Patient" not in missing:
            missing.append("Patient")  # no birth date: age is unknown, not young
        if not missing and _measurement_pending(evidence, order, rules, variant):
            missing.append("Observation")
        if missing:
            possible.append(variant)
            unknown_sources.extend(t for t in missing if t not in unknown_sources)
    if driving is None:
        baseline, baseline_unknown = _baseline_variants(evidence, therapy, order, rules)
        possible.extend(baseline)
        unknown_sources.extend(t for t in baseline_unknown if t not in unknown_sources)
        if len(baseline) == 1 and not unknown_sources:
            driving = baseline[0]
    matched = {variant: found for variant, found in flags.items() if found}
    return VariantAssessment(tuple(possible), driving, matched, tuple(unknown_sources))


def _red_flags(
    evidence: Evidence, therapy: TherapyAssessment, order: DraftOrder, rules: ClinicalRules
) -> dict[int, tuple[Finding, ...]]:
    """Red flags on record (and in the order's own reasons) per red-flag variant (docs/clinical-rules.md)."""
    thresholds = rules.thresholds
    findings = list(evidence.red_flags)
    on_record = {f.concept for f in findings}
    # The order's own reason codes are evidence too (e.g. an order placed "for suspected cauda equina").
    findings.extend(f for f in order.reasons if f.concept not in on_record)
    for course in therapy.long_term_steroids:
        label = " ".join(part for part in (course.ingredient, course.dose_text) if part)
        findings.append(Finding("long_term_steroids", course.reference, course.start, label))
    temperature = evidence.max_temperature
    if temperature is not None and temperature.value >= thresholds.fever_celsius:
        findings.append(Finding("fever", temperature.reference, temperature.recorded, f"{temperature.value:.1f}"))
    concepts = {f.concept for f in findings}
    has_back_pain = bool(evidence.episode.findings) or bool(order.reason_concepts & rules.indication_concepts)

    def counts(finding: Finding) -> bool:
        role = rules.role(finding.concept)
        if role is None:
            return False
        if role.requires_indication and not has_back_pain:
            return False
        return not role.requires_any or any(other in concepts for other in role.requires_any)

    by_variant: dict[int, tuple[Finding, ...]] = {}
    for variant in RED_FLAG_VARIANTS:
        triggers = rules.variant_concepts[variant]
        found = [f for f in findings if f.concept in triggers and counts(f)]
        if variant == 6 and evidence.age is not None and evidence.age >= thresholds.fracture_risk_age:
            found.append(Finding("advanced_age", "Patient", None, str(evidence.age)))
        by_variant[variant] = tuple(found)
    return by_variant


def _measurement_pending(evidence: Evidence, order: DraftOrder, rules: ClinicalRules, variant: int) -> bool:
    """A flag that a measurement could complete (recent infection, so fever) while the measurements are unknown."""
    if "Observation" not in evidence.unknown_types:
        return False
    concepts = {f.concept for f in evidence.red_flags} | order.reason_concepts
    return any(
        variant in role.variants and any(other in concepts for other in role.requires_any)
        for role in rules.roles.values()
        if role.requires_any
    )


def _baseline_variants(
    evidence: Evidence, therapy: TherapyAssessment, order: DraftOrder, rules: ClinicalRules
) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Variant 3 or 1/2 (no red flag): failed conservative therapy, radicular symptoms or candidacy."""
    early = therapy.symptom_weeks is None or therapy.duration_met is False
    uncomplicated = 1 if early else 2
    radicular = therapy.radicular or bool(order.reason_concepts & rules.radicular_concepts)
    if therapy.failed is False:
        # A motor deficit asks for prompt MRI (ACP/APS 2007): never rated on a variant 1-2 basis alone.
        return ((uncomplicated, 3) if motor_deficits(evidence, order, rules) else (uncomplicated,)), ()
    unknown: list[str] = []
    if therapy.failed is None:
        unknown = [
            t for t in ("Condition", *MEDICATION_TYPES, "Procedure", "ServiceRequest") if t in evidence.unknown_types
        ]
        return (uncomplicated, 3), tuple(unknown)
    if radicular or therapy.candidate:
        return (3,), ()
    # Failed therapy with axial pain only and no documented referral: candidacy decides (ACR variant 2 or 3).
    if therapy.candidate is None:
        unknown = [t for t in ("ServiceRequest", "Procedure") if t in evidence.unknown_types]
    return (2, 3), tuple(unknown)


def motor_deficits(evidence: Evidence, order: DraftOrder, rules: ClinicalRules) -> tuple[Finding, ...]:
    """Motor deficits of the current episode on record, or named in the order's own reason."""
    reasons = tuple(f for f in order.reasons if (role := rules.role(f.concept)) and role.role == "motor_deficit")
    return evidence.motor_deficits + reasons


def is_child(evidence: Evidence, rules: ClinicalRules) -> bool:
    """The ACR Low Back Pain criteria are for adults (ACR has a separate Back Pain, Child topic)."""
    return evidence.age is not None and evidence.age < rules.thresholds.adult_age


# ------------------------------------------------------------------------------------------------ orders
def _decide_order(
    order: DraftOrder,
    evidence: Evidence,
    orders: tuple[DraftOrder, ...],
    therapy: TherapyAssessment,
    rules: ClinicalRules,
    today: date,
) -> OrderDecision:
    if order.kind == "imaging" and order.procedure_key is not None:
        return _decide_imaging(order, order.procedure_key, evidence, orders, therapy, rules, today)
    if _shows_back_pain_question(order, rules):
        return _decide_therapy_order(order, evidence, orders, therapy, rules, today)
    # Non-lumbar imaging and unrelated orders: other criteria may apply; this service says nothing.
    return OrderDecision(order=order, rating=None, variants=None, concerns=())


def _shows_back_pain_question(order: DraftOrder, rules: ClinicalRules) -> bool:
    """An NSAID or systemic steroid course (not topical, not antiplatelet aspirin), an injection or a referral."""
    if order.kind in ("procedure", "referral"):
        return True
    if order.kind != "medication" or not order.systemic or order.antiplatelet_aspirin:
        return False
    return rules.drug_class_roles.get(order.drug_class or "") in ("nsaid", "corticosteroid")


def _decide_imaging(
    order: DraftOrder,
    key: str,
    evidence: Evidence,
    orders: tuple[DraftOrder, ...],
    therapy: TherapyAssessment,
    rules: ClinicalRules,
    today: date,
) -> OrderDecision:
    has_indication = bool(evidence.episode.findings) or bool(order.reason_concepts & rules.indication_concepts)
    if not has_indication and evidence.is_known("Condition"):
        # Known record, no back pain, sciatica or radiculopathy anywhere: the LBP criteria do not apply.
        return OrderDecision(order, Rating("no-criteria-apply", None, ()), None, ())
    variants = assess_variants(evidence, therapy, order, rules)
    contrast_concerns = _contrast_concerns(evidence, rules, today)
    concerns: list[Concern] = []
    contrast_card = key in CONTRAST_MRI_KEYS and bool(contrast_concerns)
    pregnancy_card = key in PREGNANCY_CONCERN_KEYS and bool(evidence.pregnancy)
    if is_child(evidence, rules):
        rating: Rating | None = Rating("no-criteria-apply", None, ())
        selected_category = None
        concerns.extend(_child_concerns(order, key, orders, variants, rules))
    else:
        rating = rate(key, variants.possible, rules)
        selected_category = rules.acr_category(key, variants.driving) if variants.driving is not None else None
        if selected_category is None and rating is not None:
            selected_category = rating.category  # the category that holds in every variant still possible
        # Contrast and pregnancy concerns with a card of their own are not repeated on the red-flag card.
        unsafe = (*contrast_concerns, *evidence.pregnancy)
        uncarded = (*(() if contrast_card else contrast_concerns), *(() if pregnancy_card else evidence.pregnancy))
        variant_concern = _variant_concern(
            order, key, variants, therapy, selected_category, unsafe, uncarded, evidence, rules
        )
        if variant_concern is not None:
            concerns.append(variant_concern)
        motor = _motor_concern(order, key, variants, evidence, rules, selected_category)
        if motor is not None:
            concerns.append(motor)
        duplicate = _duplicate_mri(order, key, evidence, variants, rules, today)
        if duplicate is not None:
            concerns.append(duplicate)
    if key in MRI_KEYS and evidence.implants:
        # MRI stays appropriate (it is only a safety question), so CT myelography is an option, not a recommendation.
        ct_myelography = _proposal("ct_myelography", "update", variants, rules, "CT_MYELO_LSPINE")
        concerns.append(Concern("mr_implant", order.reference, (ct_myelography,), evidence.implants))
    to_mri_without_contrast = (_proposal("convert", "update", variants, rules, MRI_WITHOUT_CONTRAST, recommended=True),)
    if contrast_card:
        concerns.append(Concern("contrast_safety", order.reference, to_mri_without_contrast, contrast_concerns))
    if pregnancy_card:
        concerns.append(Concern("pregnancy", order.reference, to_mri_without_contrast, evidence.pregnancy))
    if key == MRI_WITHOUT_CONTRAST and _drafted_before(order, orders):
        remove = Proposal("remove", "delete", recommended=True)
        concerns.append(Concern("duplicate_draft", order.reference, (remove,)))
    missing = list(variants.unknown_sources) if rating is None or rating.code != "no-criteria-apply" else []
    if key in MRI_KEYS and "Device" in evidence.unknown_types:
        missing.append("Device")
    if key in CONTRAST_KEYS:
        missing.extend(t for t in ("Observation", "AllergyIntolerance") if t in evidence.unknown_types)
    if missing:
        concerns.append(Concern("data_missing", order.reference, missing_types=tuple(dict.fromkeys(missing))))
    # "No recent eGFR found" only when the labs were obtained; otherwise the missing-data card says so.
    no_recent_egfr = (
        key in CONTRAST_KEYS and evidence.is_known("Observation") and _recent_egfr(evidence, rules, today) is None
    )
    concerns = [_without_drafted_mri(concern, order, orders) for concern in concerns]
    return OrderDecision(order, rating, variants, tuple(concerns), no_recent_egfr, selected_category)


def _drafted_before(order: DraftOrder, orders: tuple[DraftOrder, ...]) -> bool:
    """An MRI lumbar without contrast already among the drafts, before this one (order-sign: one of them is enough)."""
    for other in orders:
        if other.reference == order.reference:
            return False
        if other.procedure_key == MRI_WITHOUT_CONTRAST:
            return True
    return False


def _without_drafted_mri(concern: Concern, order: DraftOrder, orders: tuple[DraftOrder, ...]) -> Concern:
    """No suggestion creates or converts to an MRI lumbar without contrast already drafted: remove this one instead."""
    drafted = any(o.procedure_key == MRI_WITHOUT_CONTRAST and o.reference != order.reference for o in orders)
    if not drafted or order.procedure_key == MRI_WITHOUT_CONTRAST:
        return concern
    kept = [p for p in concern.proposals if p.procedure_key != MRI_WITHOUT_CONTRAST or p.action == "delete"]
    if len(kept) == len(concern.proposals):
        return concern
    if order.kind == "imaging" and not any(p.action == "delete" for p in kept):
        kept.append(Proposal("remove_duplicate", "delete", recommended=not any(p.recommended for p in kept)))
    return dataclasses.replace(concern, proposals=tuple(kept))


def rate(key: str, possible: tuple[int, ...], rules: ClinicalRules) -> Rating | None:
    """A rating only when every possible variant gives the same one (docs/clinical-rules.md, "Ratings")."""
    if not possible:
        return None
    found = [rules.acr_category(key, variant) for variant in possible]
    categories = [category for category in found if category is not None]
    if len(categories) != len(found):
        return None  # a procedure the ACR table does not rate (e.g. MRI with contrast unspecified)
    codes = {_RATING_OF_CATEGORY[category] for category in categories}
    if len(codes) != 1:
        return None
    # UA in one possible variant and MBA in another: "may be appropriate" is what holds in all of them.
    category: AcrCategory = categories[0] if len(set(categories)) == 1 else "MBA"
    return Rating(codes.pop(), category, possible)


def _holds_everywhere(key: str, possible: tuple[int, ...], rules: ClinicalRules) -> bool:
    """True when ``key`` is usually appropriate in every variant still possible: suggesting it then stands."""
    return bool(possible) and all(rules.acr_category(key, variant) == "UA" for variant in possible)


def _proposal(
    purpose: str,
    action: ActionKind,
    variants: VariantAssessment | None,
    rules: ClinicalRules,
    procedure_key: str | None = None,
    priority: Priority = "routine",
    recommended: bool = False,
) -> Proposal:
    """A suggestion, with the rating its procedure gets from the same facts (for the order it writes)."""
    rating = None
    if procedure_key is not None and action != "delete" and variants is not None:
        rating = rate(procedure_key, variants.possible, rules)
    return Proposal(purpose, action, procedure_key, priority, recommended, rating)


def _variant_concern(
    order: DraftOrder,
    key: str,
    variants: VariantAssessment,
    therapy: TherapyAssessment,
    selected_category: AcrCategory | None,
    unsafe: tuple[Finding, ...],
    uncarded: tuple[Finding, ...],
    evidence: Evidence,
    rules: ClinicalRules,
) -> Concern | None:
    """The card of the driving variant (red flag, failed therapy, candidacy or conservative care).

    ``unsafe``: contrast and pregnancy concerns, which take contrast studies out of the suggestions;
    ``uncarded``: those of them without a card of their own, which the red-flag card then names.
    """
    driving = variants.driving
    all_flags = _cited_flags(variants, order)
    if driving == 4:
        if selected_category == "UA":
            # Keep the usually appropriate order, made urgent; a card never asks to replace it.
            keep = _proposal("keep_urgent", "update", variants, rules, key, "stat", True)
            urgent: tuple[Proposal, ...] = () if order.priority == "stat" else (keep,)
        else:
            urgent = (_proposal("convert_urgent", "update", variants, rules, MRI_WITHOUT_CONTRAST, "stat", True),)
        return Concern("cauda_equina", order.reference, urgent, all_flags)
    if driving is not None and driving in _VARIANT_CONCERN:
        kind: ConcernKind = _VARIANT_CONCERN[driving]
        if driving == 7 and uncarded:
            kind = "cancer_infection_contrast_concern"
        proposals: tuple[Proposal, ...] = ()
        if selected_category != "UA":
            alternatives = list(_VARIANT_ALTERNATIVES[driving])
            if driving == 5 and therapy.radicular:
                # Prior surgery with radicular symptoms: MRI is the main suggestion, radiographs the alternative.
                alternatives = ["MR_LSPINE_WWO", "XR_LSPINE", MRI_WITHOUT_CONTRAST]
            if unsafe:
                alternatives = [a for a in alternatives if a not in CONTRAST_KEYS]
            alternatives = [a for a in alternatives if a != key]
            proposals = tuple(
                _proposal(SUGGESTION_OF_PROCEDURE[alt], "update", variants, rules, alt, recommended=index == 0)
                for index, alt in enumerate(alternatives)
            )
        return Concern(kind, order.reference, proposals, all_flags, safety=uncarded)
    possible = variants.possible
    if motor_deficits(evidence, order, rules):
        return None  # the motor deficit card speaks for this order (urgent MRI without contrast)
    if 3 in possible and set(possible) <= _FAILED_THERAPY_OR_RED_FLAG and therapy.failed:
        # Failed therapy; red flags unknown at most. MRI without contrast is usually appropriate in every variant
        # still possible, so suggesting it stands even with data missing.
        if key == MRI_WITHOUT_CONTRAST or selected_category == "UA":
            return None  # already the usually appropriate order: rating only, no card
        if not _holds_everywhere(MRI_WITHOUT_CONTRAST, possible, rules):
            return None
        convert = _proposal("convert", "update", variants, rules, MRI_WITHOUT_CONTRAST, recommended=True)
        return Concern("failed_therapy_convert", order.reference, (convert,))
    if therapy.unknown_length and therapy.failed is None and not variants.unknown_sources:
        return Concern("trial_length_unknown", order.reference, findings=_course_findings(therapy.unknown_length))
    if possible == (2, 3):
        return Concern("confirm_candidacy", order.reference)
    if possible in ((1,), (2,)):
        remove = Proposal("remove", "delete", recommended=True)
        if therapy.symptom_weeks is None:
            # No onset date on record: how long the symptoms have lasted is not documented (whatever therapy was given).
            return Concern("duration_unknown", order.reference, (remove,))
        if therapy.duration_met is False:
            return Concern("conservative_care_first", order.reference, (remove,))
        tried = (therapy.nsaid_courses, therapy.steroid_courses, therapy.maintenance, evidence.uncounted_medications)
        return Concern("inadequate_therapy" if any(tried) else "no_documented_therapy", order.reference, (remove,))
    return None


_FAILED_THERAPY_OR_RED_FLAG = frozenset({3, 4, 5, 6, 7})


def _cited_flags(variants: VariantAssessment, order: DraftOrder) -> tuple[Finding, ...]:
    # A finding can support several variants (long-term steroids: 7 and 6); cite each resource once.
    cited: dict[str, Finding] = {}
    for variant in RED_FLAG_VARIANTS:
        for finding in variants.flags.get(variant, ()):
            cited.setdefault(finding.reference if finding.reference != order.reference else finding.concept, finding)
    return tuple(cited.values())


def _course_findings(courses: tuple[MedicationCourse, ...]) -> tuple[Finding, ...]:
    return tuple(Finding("nsaid_course", c.reference, c.start, c.ingredient) for c in courses)


def _motor_concern(
    order: DraftOrder,
    key: str,
    variants: VariantAssessment,
    evidence: Evidence,
    rules: ClinicalRules,
    selected_category: AcrCategory | None,
) -> Concern | None:
    """A motor deficit and no red flag driving: prompt MRI lumbar without contrast, priority urgent."""
    deficits = motor_deficits(evidence, order, rules)
    if not deficits or variants.driving in RED_FLAG_VARIANTS:
        return None
    if key == MRI_WITHOUT_CONTRAST:
        keep = _proposal("keep_urgent", "update", variants, rules, key, "urgent", True)
        proposals: tuple[Proposal, ...] = () if order.priority in ("urgent", "asap", "stat") else (keep,)
    else:
        proposals = (_proposal("convert_urgent", "update", variants, rules, MRI_WITHOUT_CONTRAST, "urgent", True),)
    return Concern("motor_deficit", order.reference, proposals, deficits)


def _child_concerns(
    order: DraftOrder,
    key: str,
    orders: tuple[DraftOrder, ...],
    variants: VariantAssessment,
    rules: ClinicalRules,
) -> list[Concern]:
    """Under 18 the adult criteria do not apply (one card per request); red flags keep a card, without ACR words."""
    concerns: list[Concern] = []
    first_imaging = next((o for o in orders if o.selected and o.kind == "imaging"), order)
    if first_imaging.reference == order.reference:
        concerns.append(Concern("child_criteria", order.reference))
    flags = _cited_flags(variants, order)
    if variants.flags.get(4):
        if key == MRI_WITHOUT_CONTRAST:
            keep = _proposal("keep_urgent", "update", None, rules, key, "stat", True)
            urgent: tuple[Proposal, ...] = () if order.priority == "stat" else (keep,)
        else:
            urgent = (_proposal("convert_urgent", "update", None, rules, MRI_WITHOUT_CONTRAST, "stat", True),)
        concerns.append(Concern("child_cauda_equina", order.reference, urgent, flags))
    elif flags and any(f.concept != "advanced_age" for f in flags):
        concerns.append(Concern("child_red_flag", order.reference, (), flags))
    return concerns


def _duplicate_mri(
    order: DraftOrder,
    key: str,
    evidence: Evidence,
    variants: VariantAssessment,
    rules: ClinicalRules,
    today: date,
) -> Concern | None:
    """A lumbar MRI in the look-back and no red flag since: the new MRI is a duplicate."""
    if key not in MRI_KEYS:
        return None
    recent = _recent_mri(evidence, rules, today)
    if recent is None:
        return None
    since = recent.performed or today
    flags = [f for found in variants.flags.values() for f in found if f.concept != "advanced_age"]
    flags += [f for f in evidence.motor_deficits]
    # An undated red flag may be new: do not call the order a duplicate then.
    if any(f.recorded is None or f.recorded > since for f in flags):
        return None
    evidence_line = Finding("prior_lumbar_mri", recent.reference, recent.performed, recent.procedure_key)
    remove = Proposal("remove", "delete", recommended=True)
    return Concern("duplicate_mri", order.reference, (remove,), (evidence_line,))


def _recent_mri(evidence: Evidence, rules: ClinicalRules, today: date) -> PriorImaging | None:
    window = timedelta(days=rules.thresholds.prior_mri_lookback_months * _DAYS_PER_MONTH)
    recent = [
        p
        for p in evidence.prior_imaging
        if p.procedure_key in MRI_KEYS and p.performed is not None and today - p.performed <= window
    ]
    if not recent:
        return None
    return max(recent, key=lambda p: p.performed or date.min)


def _decide_therapy_order(
    order: DraftOrder,
    evidence: Evidence,
    orders: tuple[DraftOrder, ...],
    therapy: TherapyAssessment,
    rules: ClinicalRules,
    today: date,
) -> OrderDecision:
    """NSAID/steroid courses, injections and referrals: a card for cauda equina, a motor deficit and failed therapy."""
    if not evidence.episode.findings and not (order.reason_concepts & rules.indication_concepts):
        return OrderDecision(order, None, None, ())  # not the back-pain question
    variants = assess_variants(evidence, therapy, order, rules)
    mri_drafted = any(o.procedure_key in MRI_KEYS for o in orders)
    child = is_child(evidence, rules)
    if variants.driving == 4:
        create_urgent = _proposal("create_urgent", "create", variants, rules, MRI_WITHOUT_CONTRAST, "stat", True)
        proposals = () if mri_drafted else (create_urgent,)
        kind: ConcernKind = "child_cauda_equina" if child else "cauda_equina"
        concern = Concern(kind, order.reference, proposals, variants.flags.get(4, ()))
        return OrderDecision(order, None, variants, (concern,))
    if child:
        return OrderDecision(order, None, variants, ())
    deficits = motor_deficits(evidence, order, rules)
    if deficits and variants.driving not in RED_FLAG_VARIANTS:
        create = _proposal("create_urgent", "create", variants, rules, MRI_WITHOUT_CONTRAST, "urgent", True)
        proposals = () if mri_drafted else (create,)
        return OrderDecision(order, None, variants, (Concern("motor_deficit", order.reference, proposals, deficits),))
    possible = variants.possible
    if (
        3 in possible
        and set(possible) <= _FAILED_THERAPY_OR_RED_FLAG
        and therapy.failed
        and _holds_everywhere(MRI_WITHOUT_CONTRAST, possible, rules)
        and not mri_drafted
        and evidence.any_known(*_IMAGING_TYPES)
        and _recent_mri(evidence, rules, today) is None
    ):
        create = _proposal("create", "create", variants, rules, MRI_WITHOUT_CONTRAST, recommended=True)
        return OrderDecision(order, None, variants, (Concern("failed_therapy_create", order.reference, (create,)),))
    return OrderDecision(order, None, variants, ())


# ------------------------------------------------------------------------------------------------ safety
def _recent_egfr(evidence: Evidence, rules: ClinicalRules, today: date) -> float | None:
    egfr = evidence.egfr
    if egfr is None or egfr.recorded is None:
        return None
    if (today - egfr.recorded).days > rules.thresholds.current_finding_lookback_days:
        return None
    return egfr.value


def _contrast_concerns(evidence: Evidence, rules: ClinicalRules, today: date) -> tuple[Finding, ...]:
    """Gadolinium concerns on record: low recent eGFR, kidney failure or dialysis, gadolinium allergy."""
    concerns: list[Finding] = []
    egfr = _recent_egfr(evidence, rules, today)
    if egfr is not None and egfr < rules.thresholds.egfr_contrast_limit and evidence.egfr is not None:
        concerns.append(Finding("egfr", evidence.egfr.reference, evidence.egfr.recorded, f"{egfr:g}"))
    concerns.extend(evidence.contrast_concerns)
    return tuple(concerns)
