"""Clinical evidence: the neutral facts of the record judged at a date. PURE: no Flask, no I/O, no clock, no FHIR.

The first half of the decision (docs/clinical-rules.md, "Facts" and "Conservative therapy"): which
findings still count (history vs current findings, look-backs, statuses that mean "not a fact"), the
back-pain episode and its length, which medication exposures are conservative-therapy trials and of
what kind, which are red flags, which laboratory results are recent, and whether a test is positive.
:func:`interpret` turns :class:`ClinicalFacts` into :class:`Evidence`; :mod:`decision` decides from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import Literal

from cds_service.clinical.facts import ClinicalFacts, Finding, Measurement, MedicationExposure, PriorImaging
from cds_service.clinical.rules import ClinicalRules

DrugClass = Literal["nsaid", "systemic_corticosteroid"]
# How a medication exposure counts: an NSAID trial, a steroid burst or prolonged course (trials), or long-term
# steroid use (a red flag, never a trial).
CourseKind = Literal["trial", "burst", "prolonged", "maintenance", "long_term"]
# Why a recognised NSAID or corticosteroid is not a conservative-therapy trial: a key of the card terms'
# "not_counted" words. "non_systemic" and "antiplatelet_aspirin" come from the drug's form and dose; the
# knowledge base adds its own exclusions ("mineralocorticoid").
NotCountedReason = str

# Medication statuses that are not therapy: never given, withdrawn, or only planned. Active, on-hold, completed,
# stopped and unknown are.
_NOT_THERAPY_STATUS = frozenset({"cancelled", "draft", "entered-in-error", "not-taken", "intended"})
# Medication statuses of a drug still being taken (a stopped or completed one counts only while recent).
_CURRENT_MEDICATION_STATUS = frozenset({"active", "on-hold", "unknown"})
_MEDICATION_TYPES = frozenset({"MedicationStatement", "MedicationRequest"})
_EVENT_TYPES = frozenset({"Procedure", "ServiceRequest"})
# Verification statuses that make a condition not a fact about the patient.
_NOT_A_FACT_VERIFICATION = frozenset({"entered-in-error", "refuted"})
# Event statuses (Procedure, ServiceRequest, Observation, Device ...) that mean it did not happen or was withdrawn.
_NOT_DONE_STATUS = frozenset({"entered-in-error", "not-done", "cancelled", "revoked"})
_INACTIVE_DEVICE_STATUS = frozenset({"entered-in-error", "inactive"})
_ACTIVE_CLINICAL = frozenset({"active", "recurrence", "relapse"})
_RESOLVED_CLINICAL = frozenset({"resolved", "inactive", "remission"})
# Imaging orders and reports that count as a study done or on its way.
_PRIOR_ORDER_STATUS = frozenset({"active", "completed"})
_NOT_DONE_REPORT_STATUS = frozenset({"entered-in-error", "cancelled"})
# Test results: coded positive values and interpretations first (SNOMED 10828004 Positive, 260373001 Detected;
# HL7 v3 ObservationInterpretation POS, DET), then whole words of the text.
_POSITIVE_VALUE_CODES = frozenset({"10828004", "260373001", "pos", "positive", "detected", "det"})
_NEGATIVE_VALUE_CODES = frozenset({"260385009", "260415000", "neg", "negative", "not detected", "nd"})
_POSITIVE_INTERPRETATION = frozenset({"pos", "det"})
_NEGATIVE_INTERPRETATION = frozenset({"neg", "nd"})
_UNKNOWN_WORDS = re.compile(
    r"\b(indeterminate|inconclusive|equivocal|not possible|unable|haemolys\w*|hemolys\w*|cancel+ed|"
    r"insufficient|invalid|unknown|pending|postponed|not performed|not done|see comment)\b",
    re.IGNORECASE,
)
_NEGATIVE_WORDS = re.compile(r"\b(neg|negative|not detected|non[- ]?reactive|absent)\b", re.IGNORECASE)
_POSITIVE_WORDS = re.compile(r"\b(pos|positive|detected|reactive)\b", re.IGNORECASE)
_DAYS_PER_MONTH = 30.44


@dataclass(frozen=True)
class LabResult:
    reference: str
    value: float
    recorded: date | None
    unit: str | None = None


@dataclass(frozen=True)
class SymptomEpisode:
    """The back-pain episode: earliest onset of any back pain, sciatica, radiculopathy, disc or stenosis condition."""

    onset: date | None
    weeks: float | None  # at ``today``; None when no onset date is known
    findings: tuple[Finding, ...]
    radicular: bool  # sciatica, radiculopathy, disc disorder with radiculopathy or stenosis on record
    active: bool  # at least one of the conditions is still active (not only resolved)


@dataclass(frozen=True)
class MedicationCourse:
    """One NSAID or systemic corticosteroid exposure judged as therapy (a MedicationStatement or MedicationRequest)."""

    reference: str
    drug_class: DrugClass
    ingredient: str
    dose_text: str | None
    start: date | None
    end: date | None
    weeks: float | None  # None when neither the period nor the supply duration gives a length
    kind: CourseKind
    long_term_coded: bool = False  # the record itself calls it long-term use
    status: str | None = None  # as recorded: "ongoing" is said only of an active one
    daily_prednisone_mg: float | None = None  # corticosteroids: the daily dose in prednisone equivalents, if stated


@dataclass(frozen=True)
class UncountedMedication:
    """An NSAID or corticosteroid on record that is not a trial (topical form, low-dose aspirin): the card says why."""

    reference: str
    label: str
    start: date | None
    reason: NotCountedReason


@dataclass(frozen=True)
class Evidence:
    """The record judged at a date: what counts, for the decision and the cards."""

    age: int | None
    episode: SymptomEpisode
    courses: tuple[MedicationCourse, ...]
    physical_therapy: tuple[Finding, ...]  # PT procedures or referrals
    intervention_referrals: tuple[Finding, ...]  # ESI, spine-surgery or pain referrals on record
    red_flags: tuple[Finding, ...]  # every red-flag or context concept that counts (cauda equina ... weight loss)
    motor_deficits: tuple[Finding, ...]  # foot drop, leg weakness or paresis in the current episode
    prior_imaging: tuple[PriorImaging, ...]
    implants: tuple[Finding, ...]
    contrast_concerns: tuple[Finding, ...]  # kidney failure, dialysis, gadolinium allergy (not the eGFR value)
    egfr: LabResult | None  # the latest eGFR (any date; the decision applies the look-back)
    max_temperature: LabResult | None  # the highest temperature within the look-back
    pregnancy: tuple[Finding, ...]
    unknown_types: frozenset[str]
    unavailable_reasons: tuple[tuple[str, str], ...] = ()
    uncounted_medications: tuple[UncountedMedication, ...] = ()

    def is_known(self, *resource_types: str) -> bool:
        """True when every one of the given resource types was obtained (possibly empty)."""
        return not any(t in self.unknown_types for t in resource_types)

    def any_known(self, *resource_types: str) -> bool:
        """True when at least one of the given resource types was obtained."""
        return any(t not in self.unknown_types for t in resource_types)


def interpret(facts: ClinicalFacts, rules: ClinicalRules, today: date) -> Evidence:
    """Judge the facts at ``today``: same facts, rules and date, same evidence."""
    lookback = rules.thresholds.current_finding_lookback_days
    episode: list[tuple[Finding, bool]] = []
    red_flags: list[Finding] = []
    therapy: list[Finding] = []
    referrals: list[Finding] = []
    implants: list[Finding] = []
    contrast: list[Finding] = []
    pregnancy: list[Finding] = []
    motor: list[Finding] = []
    for finding in (*facts.findings, *_drug_class_findings(facts, rules)):
        role = rules.role(finding.concept)
        if role is None or not _is_fact(finding):
            continue
        active = _clinically_active(finding)
        if role.timing == "history":
            counts = True
        elif finding.resource_type in _MEDICATION_TYPES:
            counts = _medication_current(finding, today, lookback)
        elif role.timing == "present":
            counts = active  # a resolved pregnancy is over
        elif finding.resource_type in _EVENT_TYPES and role.role not in ("therapy", "candidacy"):
            # A procedure or order has no clinical status: it says the finding was there on its date, not that it
            # still is (dialysis in 2009, chemotherapy given years ago).
            counts = _within(finding.recorded, today, lookback)
        else:
            counts = active or _resolved_within(finding, today, lookback)
            if counts and role.timing == "current":
                counts = _within(finding.recorded, today, lookback)
        if counts and role.lookback is not None:
            counts = _within(finding.recorded, today, _days(rules, role.lookback))
        if not counts:
            continue
        if role.role == "episode":
            episode.append((finding, active))
        elif role.role in ("red_flag", "context"):
            red_flags.append(finding)
        elif role.role == "therapy":
            therapy.append(finding)
        elif role.role == "candidacy":
            referrals.append(finding)
        elif role.role == "motor_deficit":
            motor.append(finding)
        elif role.concern == "mr_implant":
            if finding.status not in _INACTIVE_DEVICE_STATUS:
                implants.append(finding)
        elif role.concern == "contrast_safety":
            contrast.append(finding)
        elif role.concern == "pregnancy":
            pregnancy.append(finding)
    long_term_coded = any(f.concept == "long_term_steroids" for f in red_flags)
    courses: list[MedicationCourse] = []
    uncounted: list[UncountedMedication] = []
    for exposure in facts.medications:
        if exposure.status in _NOT_THERAPY_STATUS:
            continue
        reason = _not_counted_reason(exposure)
        if reason is not None:
            # Found but not a trial: the card names it, so that the clinician sees why it did not count.
            uncounted.append(UncountedMedication(exposure.reference, exposure.label, exposure.start, reason))
            continue
        course = _course(exposure, rules, today, long_term_coded)
        if course is not None:
            courses.append(course)
    temperatures: list[LabResult] = []
    egfrs: list[LabResult] = []
    for measurement in facts.measurements:
        if measurement.status in _NOT_DONE_STATUS:
            continue
        role = rules.role(measurement.concept)
        measures = role.measures if role is not None else None
        recent = _within(measurement.recorded, today, lookback)
        if measures == "temperature" and measurement.value is not None and recent:
            temperatures.append(LabResult(measurement.reference, measurement.value, measurement.recorded, "Cel"))
        elif measures == "egfr" and measurement.value is not None:
            egfrs.append(LabResult(measurement.reference, measurement.value, measurement.recorded, measurement.unit))
        elif measures == "pregnancy_test" and recent and test_positive(measurement) is True:
            pregnancy.append(Finding("pregnancy", measurement.reference, measurement.recorded, measurement.label))
    prior = tuple(p for p in facts.prior_imaging if _prior_imaging_counts(p))
    return Evidence(
        age=facts.age,
        episode=_episode(episode, rules, today),
        courses=tuple(courses),
        physical_therapy=tuple(therapy),
        intervention_referrals=tuple(referrals),
        red_flags=tuple(red_flags),
        motor_deficits=tuple(motor),
        prior_imaging=prior,
        implants=tuple(implants),
        contrast_concerns=tuple(contrast),
        egfr=max(egfrs, key=lambda r: r.recorded or date.min) if egfrs else None,
        max_temperature=max(temperatures, key=lambda r: r.value) if temperatures else None,
        pregnancy=tuple(pregnancy),
        unknown_types=facts.unknown_types,
        unavailable_reasons=facts.unavailable_reasons,
        uncounted_medications=tuple(uncounted),
    )


def test_positive(measurement: Measurement) -> bool | None:
    """True, False, or None when the result does not say (indeterminate, haemolysed, cancelled, pending ...).

    Coded value first, coded interpretation second, whole words of the text last; a text that says the
    test could not be interpreted is unknown whatever else it contains.
    """
    codes = {code.lower() for code in measurement.value_codes}
    if codes & _POSITIVE_VALUE_CODES:
        return True
    if codes & _NEGATIVE_VALUE_CODES:
        return False
    interpretation = {code.lower() for code in measurement.interpretation}
    if interpretation & _POSITIVE_INTERPRETATION:
        return True
    if interpretation & _NEGATIVE_INTERPRETATION:
        return False
    text = measurement.value_text
    if not text or _UNKNOWN_WORDS.search(text):
        return None
    if _NEGATIVE_WORDS.search(text):
        return False
    if _POSITIVE_WORDS.search(text):
        return True
    return None


# ---------------------------------------------------------------------------------------------- helpers
def _is_fact(finding: Finding) -> bool:
    """False for what the record itself withdraws: entered in error, refuted, not done, cancelled, never taken."""
    if finding.verification in _NOT_A_FACT_VERIFICATION:
        return False
    if finding.resource_type in _MEDICATION_TYPES:
        return finding.status not in _NOT_THERAPY_STATUS
    if finding.resource_type == "ServiceRequest" and finding.status == "draft":
        return False  # a draft on record was never ordered
    return finding.status not in _NOT_DONE_STATUS


def _drug_class_findings(facts: ClinicalFacts, rules: ClinicalRules) -> list[Finding]:
    """A drug whose class is evidence of a concept (chemotherapy: cancer; immunosuppressant: immunosuppression)."""
    found: list[Finding] = []
    for exposure in facts.medications:
        concept = rules.drug_class_concepts.get(exposure.drug_class or "")
        # Topical fluorouracil (actinic keratosis) or tacrolimus ointment (eczema) are not cancer or immunosuppression.
        if concept is not None and exposure.systemic:
            found.append(
                Finding(
                    concept,
                    exposure.reference,
                    exposure.start,
                    exposure.label,
                    status=exposure.status,
                    ended=exposure.end,
                )
            )
    return found


def _medication_current(finding: Finding, today: date, lookback_days: int) -> bool:
    """A drug still taken, or stopped within the look-back (an immunosuppressant stopped years ago is not current)."""
    if finding.status in _CURRENT_MEDICATION_STATUS or finding.status is None:
        return finding.ended is None or (today - finding.ended).days <= lookback_days
    return finding.ended is not None and (today - finding.ended).days <= lookback_days


def _clinically_active(finding: Finding) -> bool:
    # A condition without a clinical status, and every procedure or device, is taken as current.
    return finding.clinical_status is None or finding.clinical_status in _ACTIVE_CLINICAL


def _resolved_within(finding: Finding, today: date, lookback_days: int) -> bool:
    return (
        finding.clinical_status in _RESOLVED_CLINICAL
        and finding.ended is not None
        and (today - finding.ended).days <= lookback_days
    )


def _days(rules: ClinicalRules, threshold: str) -> int:
    """A look-back threshold in days ("pregnancy_max_weeks": 43 -> 301)."""
    value = int(getattr(rules.thresholds, threshold))
    return value * 7 if threshold.endswith("_weeks") else value


def _within(when: date | None, today: date, lookback_days: int) -> bool:
    # An undated current finding still counts: dropping it would hide a possible red flag.
    return when is None or (today - when).days <= lookback_days


def _episode(items: list[tuple[Finding, bool]], rules: ClinicalRules, today: date) -> SymptomEpisode:
    findings = tuple(f for f, _active in items)
    onsets = [f.recorded for f in findings if f.recorded is not None]
    onset = min(onsets) if onsets else None
    return SymptomEpisode(
        onset=onset,
        weeks=(today - onset).days / 7.0 if onset is not None else None,
        findings=findings,
        radicular=any(f.concept in rules.radicular_concepts for f in findings),
        active=any(active for _f, active in items),
    )


def _not_counted_reason(exposure: MedicationExposure) -> NotCountedReason | None:
    """Why a recognised drug is not a systemic NSAID or steroid trial; None when it may count."""
    if exposure.excluded_reason is not None:
        return exposure.excluded_reason
    if exposure.antiplatelet_aspirin:
        return "antiplatelet_aspirin"
    if not exposure.systemic:
        return "non_systemic"
    return None


def _course(
    exposure: MedicationExposure, rules: ClinicalRules, today: date, long_term_coded: bool
) -> MedicationCourse | None:
    role = rules.drug_class_roles.get(exposure.drug_class or "")
    if role == "nsaid":
        drug_class: DrugClass = "nsaid"
    elif role == "corticosteroid":
        drug_class = "systemic_corticosteroid"
    else:
        return None
    end = exposure.end
    if end is None and exposure.open_period and exposure.status in ("active", "intended", None):
        end = today  # an open statement that is still active runs until today
    weeks = (end - exposure.start).days / 7.0 if exposure.start and end and end >= exposure.start else None
    kind: CourseKind = "trial"
    thresholds = rules.thresholds
    daily_prednisone = None
    if drug_class == "systemic_corticosteroid":
        factor = rules.steroid_factors.get(exposure.ingredient)
        if exposure.daily_dose_mg is not None and factor is not None:
            daily_prednisone = exposure.daily_dose_mg * factor
        long_term_days = thresholds.long_term_steroid_months * _DAYS_PER_MONTH
        if long_term_coded or (weeks is not None and weeks * 7 >= long_term_days):
            kind = "long_term"
        elif not _anti_inflammatory_course(exposure, daily_prednisone, rules):
            kind = "maintenance"
        elif weeks is not None and weeks > thresholds.steroid_burst_weeks:
            kind = "prolonged"
        else:
            kind = "burst"
    return MedicationCourse(
        exposure.reference,
        drug_class,
        exposure.ingredient,
        exposure.dose_text,
        exposure.start,
        end,
        weeks,
        kind,
        long_term_coded and drug_class == "systemic_corticosteroid",
        exposure.status,
        daily_prednisone,
    )


def _anti_inflammatory_course(
    exposure: MedicationExposure, daily_prednisone: float | None, rules: ClinicalRules
) -> bool:
    """A dose pack, taper or injection, or a daily dose of at least the trial threshold; unknown dose: yes.

    A stated low daily dose (under 20 mg prednisone-equivalent by default) is maintenance therapy, not a trial.
    """
    pattern = rules.steroid_trial_words
    if pattern is not None and any(
        pattern.search(words) for words in (exposure.label, exposure.dose_text, exposure.route) if words
    ):
        return True
    return daily_prednisone is None or daily_prednisone >= rules.thresholds.steroid_trial_min_daily_mg


def _prior_imaging_counts(prior: PriorImaging) -> bool:
    if prior.reference.startswith("ServiceRequest/"):
        return prior.status in _PRIOR_ORDER_STATUS
    return prior.status not in _NOT_DONE_REPORT_STATUS
