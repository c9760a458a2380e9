"""The FHIR boundary: raw FHIR JSON records and draft orders into neutral facts, and those facts judged at a date.

Most tests read a record and judge it (``read``), so that they state what a record means; the reader alone
(``reader.read``) is tested where the neutral facts themselves are the point.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import date
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds_service.clinical.evidence import Evidence, interpret
from cds_service.clinical.facts import DraftOrder
from cds_service.clinical.record_reader import RecordReader, parse_date
from cds_service.clinical.rules import ClinicalRules
from cds_service.knowledge import Knowledge
from cds_service.record import PatientRecord
from tests.clinical_builders import (
    CPT,
    ICD,
    LOINC,
    NOW,
    RECORD_TYPES,
    RXNORM,
    SNOMED,
    allergy,
    bundle,
    condition,
    device,
    draft_medication,
    draft_service_request,
    lbp,
    med_request,
    med_statement,
    observation,
    patient,
    prior_order,
    procedure,
    record,
    sciatica,
)


@pytest.fixture(scope="module")
def reader(knowledge: Knowledge) -> RecordReader:
    return RecordReader(knowledge, measurement_window_days=knowledge.thresholds.current_finding_lookback_days)


@dataclass(frozen=True)
class Judged:
    facts: Evidence  # the record judged at NOW
    orders: tuple[DraftOrder, ...]
    skipped: tuple[str, ...]


_RULES: dict[int, ClinicalRules] = {}


def read(reader: RecordReader, patient_record: PatientRecord, *drafts: dict[str, Any]) -> Judged:
    from cds_service.knowledge import load_knowledge

    knowledge = load_knowledge()
    rules = _RULES.setdefault(0, ClinicalRules.from_knowledge(knowledge, knowledge.thresholds))
    extraction = reader.read(patient_record, bundle(*drafts), None, NOW)
    return Judged(interpret(extraction.facts, rules, NOW.date()), extraction.orders, extraction.skipped)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-03-04", date(2026, 3, 4)),
        ("2026-03-04T10:00:00+02:00", date(2026, 3, 4)),
        ("2026-03", date(2026, 3, 1)),
        ("2026", date(2026, 1, 1)),
        ("2019-13-45", None),
        ("yesterday", None),
        (None, None),
        (20260304, None),
    ],
)
def test_parse_date_accepts_fhir_partial_dates_and_rejects_garbage(value: Any, expected: date | None) -> None:
    assert parse_date(value) == expected


def reference_parse_date(value: str) -> date | None:
    """The general path alone (the fast path for full dates must agree with it)."""
    match = re.match(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?", value)
    if not match:
        return None
    try:
        return date(int(match.group(1)), int(match.group(2) or "01"), int(match.group(3) or "01"))
    except ValueError:
        return None


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="0123456789-T:Z+a ", max_size=14) | st.dates().map(date.isoformat))
def test_parse_date_fast_path_agrees_with_the_general_path(value: str) -> None:
    assert parse_date(value) == reference_parse_date(value)
    assert parse_date(value + "T08:30:00Z") == reference_parse_date(value + "T08:30:00Z")


# ------------------------------------------------------------------------------------------------ conditions
def test_symptom_episode_starts_at_the_earliest_onset_and_counts_weeks(reader: RecordReader) -> None:
    facts = read(reader, record(lbp(onset="2026-10-02"), sciatica(onset="2026-09-25"))).facts
    assert facts.episode.onset == date(2026, 9, 25)
    assert facts.episode.weeks == pytest.approx(8.0)
    assert facts.episode.radicular is True
    assert facts.episode.active is True


def test_recorded_date_stands_in_for_a_missing_onset(reader: RecordReader) -> None:
    resource = lbp(onset=None)
    resource["recordedDate"] = "2026-10-30"
    assert read(reader, record(resource)).facts.episode.onset == date(2026, 10, 30)


def test_axial_pain_only_is_not_radicular(reader: RecordReader) -> None:
    assert read(reader, record(lbp())).facts.episode.radicular is False


@pytest.mark.parametrize("verification", ["entered-in-error", "refuted"])
def test_refuted_and_entered_in_error_conditions_never_count(reader: RecordReader, verification: str) -> None:
    cancer = condition(ICD, "C61", verification=verification)
    facts = read(reader, record(lbp(), cancer)).facts
    assert [f.concept for f in facts.red_flags] == []


def test_history_red_flags_count_whatever_their_status_and_age(reader: RecordReader) -> None:
    cancer = condition(ICD, "Z85.3", clinical="resolved", onset="2012-01-01", abatement="2013-01-01")
    facts = read(reader, record(lbp(), cancer)).facts
    assert [f.concept for f in facts.red_flags] == ["malignancy"]
    assert facts.red_flags[0].recorded == date(2012, 1, 1)


def test_resolved_current_findings_count_only_within_the_look_back(reader: RecordReader) -> None:
    recent = condition(ICD, "M81.0", clinical="resolved", abatement="2026-10-15")
    old = condition(ICD, "W19.XXXA", clinical="resolved", onset="2025-01-01", abatement="2025-02-01")
    facts = read(reader, record(lbp(), recent, old)).facts
    assert [f.concept for f in facts.red_flags] == ["osteoporosis"]


def test_trauma_older_than_the_look_back_is_not_a_current_finding(reader: RecordReader) -> None:
    trauma = condition(ICD, "W19.XXXA", onset="2026-01-01")
    assert read(reader, record(lbp(), trauma)).facts.red_flags == ()


def test_icd10_codes_match_without_the_dot(reader: RecordReader) -> None:
    facts = read(reader, record(condition(ICD, "M5416"))).facts
    assert [f.concept for f in facts.episode.findings] == ["lumbar_radiculopathy"]


def test_condition_text_is_used_only_when_no_coding_is_recognised(reader: RecordReader) -> None:
    facts = read(reader, record(condition(None, None, text="Cardiac pacemaker"))).facts
    assert [f.concept for f in facts.implants] == ["mr_implant"]


def test_safety_conditions_are_sorted_into_their_families(reader: RecordReader) -> None:
    facts = read(
        reader,
        record(condition(ICD, "Z95.0"), condition(ICD, "N18.4"), condition(ICD, "Z99.2"), condition(ICD, "Z33.1")),
    ).facts
    assert [f.concept for f in facts.implants] == ["mr_implant"]
    assert sorted(f.concept for f in facts.contrast_concerns) == ["dialysis", "kidney_failure"]
    assert [f.concept for f in facts.pregnancy] == ["pregnancy"]


# ----------------------------------------------------------------------------------------------- medications
def test_nsaid_course_from_a_statement_period(reader: RecordReader) -> None:
    course = read(reader, record(lbp(), med_statement("198014", dose="500 mg twice daily"))).facts.courses[0]
    assert (course.drug_class, course.ingredient, course.kind) == ("nsaid", "naproxen", "trial")
    assert course.dose_text == "500 mg twice daily"
    assert (course.start, course.end) == (date(2026, 9, 10), date(2026, 10, 10))
    assert course.weeks == pytest.approx(30 / 7)


def test_nsaid_course_from_a_request_supply_duration_and_strength(reader: RecordReader) -> None:
    course = read(reader, record(lbp(), med_request("197807", supply_days=21))).facts.courses[0]
    assert course.weeks == pytest.approx(3.0)
    assert course.dose_text == "800 MG"


def test_active_statement_without_end_runs_until_now(reader: RecordReader) -> None:
    course = read(reader, record(med_statement("198014", start="2026-11-06", end=None, status="active"))).facts
    assert course.courses[0].weeks == pytest.approx(2.0)


@pytest.mark.parametrize(
    "resource",
    [
        med_statement(None, text="diclofenac 1% topical gel"),
        med_statement(None, text="aspirin 81 mg daily"),
        med_statement("198014", status="entered-in-error"),
    ],
    ids=["topical", "low-dose-aspirin", "entered-in-error"],
)
def test_what_is_not_a_systemic_trial_is_not_a_course(reader: RecordReader, resource: dict[str, Any]) -> None:
    assert read(reader, record(lbp(), resource)).facts.courses == ()


def test_medication_text_without_code_is_recognised(reader: RecordReader) -> None:
    facts = read(reader, record(med_statement(None, text="Ibuprofen 600 mg tablet"))).facts
    assert [c.ingredient for c in facts.courses] == ["ibuprofen"]


@pytest.mark.parametrize(
    ("start", "end", "kind"),
    [
        ("2026-10-01", "2026-10-06", "burst"),
        ("2026-09-01", "2026-10-13", "prolonged"),
        ("2025-03-20", "2026-11-20", "long_term"),
    ],
)
def test_steroid_courses_are_classified_by_duration(reader: RecordReader, start: str, end: str, kind: str) -> None:
    steroid = med_statement(None, text="prednisone 10 mg oral tablet", start=start, end=end)
    courses = read(reader, record(steroid)).facts.courses
    assert [(c.drug_class, c.kind) for c in courses] == [("systemic_corticosteroid", kind)]


def test_long_term_steroid_coding_makes_every_steroid_course_long_term(reader: RecordReader) -> None:
    burst = med_statement(None, text="prednisone 10 mg oral tablet", start="2026-10-01", end="2026-10-06")
    facts = read(reader, record(burst, condition(ICD, "Z79.52"))).facts
    assert [c.kind for c in facts.courses] == ["long_term"]
    assert [f.concept for f in facts.red_flags] == ["long_term_steroids"]


# ---------------------------------------------------------------------------- procedures, labs and imaging
def test_procedures_sort_into_prior_surgery_and_physical_therapy(reader: RecordReader) -> None:
    facts = read(
        reader,
        record(procedure(CPT, "63030"), procedure(None, None, text="Physical therapy", performed="2026-10-01")),
    ).facts
    assert [f.concept for f in facts.red_flags] == ["prior_lumbar_surgery"]
    assert [f.concept for f in facts.physical_therapy] == ["physical_therapy"]


def test_not_done_procedures_are_ignored(reader: RecordReader) -> None:
    facts = read(reader, record(procedure(CPT, "63030", status="not-done"))).facts
    assert facts.red_flags == ()


def test_latest_egfr_wins_and_fahrenheit_temperatures_are_converted(reader: RecordReader) -> None:
    facts = read(
        reader,
        record(
            observation("98979-8", value=55, effective="2026-06-01"),
            observation("98979-8", value=24, effective="2026-11-10"),
            observation("8310-5", value=101.5, unit="[degF]", effective="2026-11-19"),
        ),
    ).facts
    assert facts.egfr is not None and facts.egfr.value == 24
    assert facts.max_temperature is not None and facts.max_temperature.value == pytest.approx(38.6)


def test_positive_pregnancy_test_is_pregnancy_and_negative_is_not(reader: RecordReader) -> None:
    positive = observation("2106-3", value_concept=concept_positive("10828004", "Positive"))
    negative = observation("2106-3", value_concept=concept_positive("260385009", "Negative"))
    assert [f.concept for f in read(reader, record(positive)).facts.pregnancy] == ["pregnancy"]
    assert read(reader, record(negative)).facts.pregnancy == ()


@pytest.mark.parametrize(
    ("value", "pregnant"),
    [
        ({"text": "Not possible to interpret (hemolysed specimen)"}, False),
        ({"text": "Postponed"}, False),
        ({"text": "Positive"}, True),
        ({"text": "POS"}, True),
        ({"text": "Negative"}, False),
        ({"text": "Indeterminate, positive control failed"}, False),
        ({"text": "Test cancelled: specimen not received"}, False),
        ({"text": "Possibly early, repeat in 48 h"}, False),
        ({"coding": [{"system": SNOMED, "code": "10828004"}], "text": "see comment"}, True),
    ],
)
def test_pregnancy_test_positivity_uses_codes_then_whole_words(
    reader: RecordReader, value: dict[str, Any], pregnant: bool
) -> None:
    """Coded value first; text only as whole words; "not possible / hemolysed / cancelled ..." is unknown."""
    test = observation("2106-3", value_concept=value)
    assert bool(read(reader, record(test)).facts.pregnancy) is pregnant


def test_pregnancy_test_interpretation_code_counts_when_the_value_is_not_coded(reader: RecordReader) -> None:
    test = observation("2106-3")
    test["interpretation"] = [
        {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": "POS"}]}
    ]
    assert [f.concept for f in read(reader, record(test)).facts.pregnancy] == ["pregnancy"]
    test["interpretation"] = [
        {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": "H"}]}
    ]
    assert read(reader, record(test)).facts.pregnancy == ()  # "high" says nothing about a qualitative test


def concept_positive(code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": SNOMED, "code": code, "display": display}], "text": display}


def test_devices_and_gadolinium_allergy_are_recognised_from_text(reader: RecordReader) -> None:
    facts = read(reader, record(device("Cardiac pacemaker"), allergy("Gadolinium contrast allergy"))).facts
    assert [f.concept for f in facts.implants] == ["mr_implant"]
    assert [f.concept for f in facts.contrast_concerns] == ["gadolinium_allergy"]


def test_prior_lumbar_imaging_comes_from_completed_orders_reports_and_studies(reader: RecordReader) -> None:
    report = {
        "resourceType": "DiagnosticReport",
        "id": "dr-1",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "30679-5"}]},
        "effectiveDateTime": "2026-06-23",
    }
    study = {
        "resourceType": "ImagingStudy",
        "id": "is-1",
        "status": "available",
        "subject": {"reference": "Patient/pat-1"},
        "started": "2026-06-23",
        "procedureCode": [{"coding": [{"system": CPT, "code": "72148"}]}],
    }
    ct = prior_order("72131")
    cancelled = prior_order("72148", status="revoked")
    facts = read(reader, record(ct, report, study, cancelled)).facts
    assert sorted((p.reference, p.procedure_key, p.performed) for p in facts.prior_imaging) == [
        ("DiagnosticReport/dr-1", "MR_LSPINE_WO", date(2026, 6, 23)),
        ("ImagingStudy/is-1", "MR_LSPINE_WO", date(2026, 6, 23)),
        (f"ServiceRequest/{ct['id']}", "CT_LSPINE_WO", date(2026, 6, 1)),
    ]


def test_a_record_service_request_that_is_a_draft_order_is_not_history(reader: RecordReader) -> None:
    draft = draft_service_request("72148")
    facts = reader.read(record(dict(draft, status="active")), bundle(draft), None, NOW).facts  # neutral facts
    assert facts.prior_imaging == ()


def test_referrals_on_record_show_candidacy(reader: RecordReader) -> None:
    referral = prior_order("", system=CPT, status="active", text="Referral to spine surgery")
    referral["code"] = {"text": "Referral to spine surgery"}
    facts = read(reader, record(referral)).facts
    assert [f.concept for f in facts.intervention_referrals] == ["spine_intervention_referral"]


def test_age_comes_from_the_birth_date(reader: RecordReader) -> None:
    assert read(reader, record(patient(birth_date="1950-11-21", gender="male"))).facts.age == 75  # birthday tomorrow
    assert read(reader, record(patient(birth_date="1950-11-20", gender="male"))).facts.age == 76


# ---------------------------------------------------------------------------------------- known vs unknown
def test_unobtainable_types_are_unknown_and_empty_ones_are_known(reader: RecordReader) -> None:
    facts = read(reader, record(lbp(), unavailable=("MedicationStatement", "MedicationRequest"))).facts
    assert facts.unknown_types == frozenset({"MedicationStatement", "MedicationRequest"})
    assert facts.is_known("Condition", "Procedure")
    assert not facts.is_known("Condition", "MedicationStatement")
    assert dict(facts.unavailable_reasons)["MedicationStatement"] == "OperationOutcome in prefetch"


# --------------------------------------------------------------------------------------- invalid resources
def test_an_invalid_resource_is_skipped_and_reported_not_fatal(reader: RecordReader) -> None:
    broken = condition(ICD, "C61", onset="2019-13-45", id="cond-invalid")
    extraction = read(reader, record(lbp(), broken))
    assert extraction.facts.red_flags == ()
    assert [f.concept for f in extraction.facts.episode.findings] == ["low_back_pain"]
    assert len(extraction.skipped) == 1
    assert extraction.skipped[0].startswith("Condition/cond-invalid skipped: onsetDateTime")


def test_only_the_elements_the_rules_read_are_validated(reader: RecordReader) -> None:
    # An element no rule reads (a malformed note) cannot make a relevant resource be skipped ...
    noted = condition(ICD, "C61", onset="2019-03-04", id="cond-noted")
    noted["note"] = "not a list of Annotations"
    extraction = read(reader, record(lbp(), noted))
    assert extraction.skipped == ()
    assert [flag.concept for flag in extraction.facts.red_flags] == ["malignancy"]
    # ... while a malformed element that the rules read still does (see the test above).
    broken = condition(ICD, "C61", onset="2019-03-04", id="cond-broken")
    broken["subject"] = "Patient/1"
    assert read(reader, record(lbp(), broken)).skipped[0].startswith("Condition/cond-broken skipped: subject")
    # A primitive's extension travels with its element: a malformed one is validated, and skips the resource.
    extended = condition(ICD, "C61", onset="2019-03-04", id="cond-extended")
    extended["_onsetDateTime"] = "not an Element"
    skipped = read(reader, record(lbp(), extended)).skipped
    assert skipped[0].startswith("Condition/cond-extended skipped: _onsetDateTime")


def test_an_invalid_patient_is_reported_without_its_id(reader: RecordReader) -> None:
    broken = patient()
    broken["birthDate"] = "not a date"
    extraction = read(reader, record(broken))
    assert extraction.facts.age is None
    assert extraction.skipped == (extraction.skipped[0],)
    assert "pat-1" not in extraction.skipped[0] and extraction.skipped[0].startswith("Patient skipped:")


def test_irrelevant_resources_are_not_validated(reader: RecordReader) -> None:
    # Invalid, but nothing in it matters: the pre-filter drops it before validation, so no warning.
    unrelated = condition(ICD, "J45.909", onset="2019-13-45")
    assert read(reader, record(lbp(), unrelated)).skipped == ()


# ------------------------------------------------------------------------------------------------ draft orders
def test_draft_orders_are_recognised_across_fhir_versions(reader: RecordReader) -> None:
    stu3 = {
        "resourceType": "ProcedureRequest",
        "id": "pr-1",
        "status": "draft",
        "intent": "plan",
        "code": {"coding": [{"system": CPT, "code": "72133"}]},
        "reasonCode": [{"coding": [{"system": SNOMED, "code": "279039007"}]}],
    }
    dstu2 = {
        "resourceType": "MedicationOrder",
        "id": "mo-1",
        "status": "draft",
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "198014"}]},
    }
    esi = draft_service_request(None, id="sr-esi", text="Epidural steroid injection")
    referral = draft_service_request(None, id="sr-ref", text="Referral to spine surgery")
    chest = draft_service_request("71275", id="sr-chest")
    orders, notes = reader.read_draft_orders(bundle(stu3, dstu2, esi, referral, chest, with_type=False), None)
    kinds = {o.reference: (o.kind, o.procedure_key, o.drug_class) for o in orders}
    assert kinds == {
        "ProcedureRequest/pr-1": ("imaging", "CT_LSPINE_WWO", None),
        "MedicationOrder/mo-1": ("medication", None, "nsaid"),
        "ServiceRequest/sr-esi": ("procedure", None, None),
        "ServiceRequest/sr-ref": ("referral", None, None),
        "ServiceRequest/sr-chest": ("other", None, None),  # imaging outside the lumbar spine: not this service's
    }
    assert orders[0].reason_concepts == frozenset({"low_back_pain"})
    assert notes == []


def test_selections_mark_only_the_selected_drafts(reader: RecordReader) -> None:
    orders, _ = reader.read_draft_orders(
        bundle(draft_service_request("72148", id="a"), draft_medication("198014")), ("ServiceRequest/a",)
    )
    assert [(o.reference, o.selected) for o in orders] == [
        ("ServiceRequest/a", True),
        ("MedicationRequest/mr-draft", False),
    ]


def test_an_invalid_r4_draft_is_still_read_with_a_note(reader: RecordReader) -> None:
    draft = draft_service_request("72148")
    del draft["intent"]
    orders, notes = reader.read_draft_orders(bundle(draft), None)
    assert orders[0].procedure_key == "MR_LSPINE_WO"
    assert notes and notes[0].startswith("ServiceRequest/sr-1 did not validate")


def test_topical_or_aspirin_drafts_are_read_as_what_they_are(reader: RecordReader) -> None:
    topical = draft_medication(None, text="diclofenac 1% topical gel")
    aspirin = draft_medication(None, text="aspirin 81 mg tablet")
    orders, _ = reader.read_draft_orders(bundle(topical, aspirin), None)
    facts = [(o.kind, o.drug_class, o.systemic, o.antiplatelet_aspirin) for o in orders]
    assert facts == [("medication", "nsaid", False, False), ("medication", "nsaid", True, True)]


# ------------------------------------------------------------------------------------------------- performance
def test_a_2000_resource_record_reads_in_well_under_the_budget(reader: RecordReader) -> None:
    """Budget (bench/README.md): a 2,000-resource record p50 under 150 ms for the whole request (mostly reading)."""
    noise = [condition(ICD, "J45.909") for _ in range(900)]
    noise += [observation("718-7", value=13.5) for _ in range(800)]
    relevant = [lbp(), sciatica()]
    relevant += [observation("98979-8", value=80) for _ in range(100)]
    relevant += [med_statement("198014") for _ in range(198)]
    big = record(*noise, *relevant)
    assert sum(len(v) for v in big.resources.values()) >= 2000
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        read(reader, big)
        timings.append(time.perf_counter() - started)
    assert sorted(timings)[2] < 0.150


# --------------------------------------------------------------------------------------------------- robustness
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.sampled_from(["active", "2026-01-01", "C61"]),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "coding",
                    "system",
                    "code",
                    "text",
                    "status",
                    "clinicalStatus",
                    "onsetDateTime",
                    "value",
                    "effectivePeriod",
                    "start",
                    "end",
                    "dosage",
                    "valueQuantity",
                    "reasonCode",
                    "type",
                ]
            ),
            children,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    resource_type=st.sampled_from([t for t in RECORD_TYPES if t != "Patient"]),
    body=st.dictionaries(
        st.sampled_from(
            [
                "code",
                "status",
                "clinicalStatus",
                "verificationStatus",
                "onsetDateTime",
                "effectivePeriod",
                "medicationCodeableConcept",
                "dosage",
                "valueQuantity",
                "type",
                "procedureCode",
                "dispenseRequest",
                "deviceName",
                "performedDateTime",
            ]
        ),
        JSON,
        max_size=5,
    ),
)
def test_no_resource_shape_breaks_the_reader(reader: RecordReader, resource_type: str, body: dict[str, Any]) -> None:
    resource = {**body, "resourceType": resource_type, "id": "x"}
    extraction = read(reader, record(lbp(), resource), draft_service_request("72148"))
    assert [f.concept for f in extraction.facts.episode.findings] == ["low_back_pain"]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.dictionaries(
        st.sampled_from(
            [
                "code",
                "status",
                "priority",
                "reasonCode",
                "reasonCodeableConcept",
                "specialty",
                "medicationCodeableConcept",
                "authoredOn",
            ]
        ),
        JSON,
        max_size=5,
    ),
    resource_type=st.sampled_from(["ServiceRequest", "ProcedureRequest", "MedicationRequest", "MedicationOrder"]),
)
def test_no_draft_order_shape_breaks_the_reader(reader: RecordReader, resource_type: str, body: dict[str, Any]) -> None:
    orders, _notes = reader.read_draft_orders(bundle({**body, "resourceType": resource_type, "id": "d"}), None)
    assert [o.reference for o in orders] == [f"{resource_type}/d"]


def test_validation_verdicts_are_remembered_by_content_and_never_reused_for_other_content() -> None:
    from fhir.resources.R4B.condition import Condition

    from cds_service.clinical.record_reader import ValidationMemo

    calls: list[str] = []

    class CountingCondition:
        @staticmethod
        def model_validate(resource: Any) -> Any:
            calls.append(resource["id"])
            return Condition.model_validate(resource)

    memo = ValidationMemo(capacity=2)
    valid = condition(ICD, "C61", onset="2019-03-04", id="c1")
    invalid = condition(ICD, "C61", onset="2019-13-45", id="c2")
    assert memo.verdict(CountingCondition, valid) is None
    assert memo.verdict(CountingCondition, dict(valid)) is None  # same content: not validated again
    assert calls == ["c1"]
    first = memo.verdict(CountingCondition, invalid)
    assert first is not None and first.startswith("onsetDateTime")
    assert memo.verdict(CountingCondition, invalid) == first  # an invalid verdict is remembered too
    changed = dict(valid, onsetDateTime="2019-13-45")
    assert memo.verdict(CountingCondition, changed) is not None  # other content, its own verdict
    assert calls == ["c1", "c2", "c1"]
    assert len(memo) == 2  # bounded: the oldest verdict made room


def test_a_remembered_invalid_resource_is_still_skipped_and_reported_every_time(reader: RecordReader) -> None:
    broken = condition(ICD, "C61", onset="2019-13-45", id="cond-invalid")
    for _ in range(2):
        extraction = read(reader, record(lbp(), broken))
        assert extraction.facts.red_flags == ()
        assert extraction.skipped[0].startswith("Condition/cond-invalid skipped: onsetDateTime")


def test_opioid_use_disorder_without_injection_is_not_a_red_flag(reader: RecordReader) -> None:
    facts = read(reader, record(lbp(), condition(ICD, "F11.20", onset="2024-05-01"))).facts
    assert facts.red_flags == ()


# ------------------------------------------------------------------ findings that say "then", and drugs by their form
def test_a_dialysis_procedure_counts_while_recent_and_an_old_one_does_not(reader: RecordReader) -> None:
    """A procedure has no clinical status: it says dialysis was done on its date, not that it still is."""
    recent = procedure(CPT, "90935", performed="2026-11-02")
    old = procedure(CPT, "90935", performed="2009-05-01")
    assert [f.concept for f in read(reader, record(lbp(), recent)).facts.contrast_concerns] == ["dialysis"]
    assert read(reader, record(lbp(), old)).facts.contrast_concerns == ()


def test_topical_fluorouracil_or_tacrolimus_is_not_cancer_or_immunosuppression(reader: RecordReader) -> None:
    topical = [
        med_request(None, text="fluorouracil 5 % topical cream, apply twice daily", status="active"),
        med_request(None, text="tacrolimus 0.1 % ointment", status="active"),
    ]
    assert read(reader, record(lbp(), *topical)).facts.red_flags == ()
    injected = med_request(None, text="fluorouracil 50 MG/ML Injectable Solution", status="active")
    assert [f.concept for f in read(reader, record(lbp(), injected)).facts.red_flags] == ["malignancy"]
