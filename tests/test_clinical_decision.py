"""The pure decision core, table-driven over docs/clinical-rules.md#red-flags (variants) and #cards.

Facts are built directly (no FHIR): the core must decide from facts alone.
"""

from __future__ import annotations

import dataclasses
from datetime import date, timedelta
from typing import Any

import pytest

from cds_service.clinical.decision import Decision, OrderDecision, decide_from_evidence
from cds_service.clinical.evidence import Evidence, LabResult, MedicationCourse, SymptomEpisode
from cds_service.clinical.facts import DraftOrder, Finding, PriorImaging
from cds_service.clinical.rules import ClinicalRules
from cds_service.knowledge import Thresholds, load_knowledge

TODAY = date(2026, 11, 20)
THRESHOLDS = Thresholds()
ALL_TYPES = (
    "Patient", "Condition", "MedicationStatement", "MedicationRequest", "Procedure", "Observation",
    "AllergyIntolerance", "Device", "ServiceRequest", "DiagnosticReport", "ImagingStudy",
)  # fmt: skip


@pytest.fixture(scope="module")
def acr() -> ClinicalRules:
    """The rule data the decision reads (thresholds, ACR table, concept roles), built from the shipped knowledge."""
    return ClinicalRules.from_knowledge(load_knowledge(), THRESHOLDS)


def indicator(kind: str) -> str:
    """The indicator of a card kind: the knowledge base's card texts are its one source."""
    return str(load_knowledge().card_texts["cards"][kind]["indicator"])


# --------------------------------------------------------------------------------------------------- builders
def ago(weeks: float) -> date:
    return TODAY - timedelta(days=round(weeks * 7))


def finding(concept: str, weeks_ago: float | None = 4, reference: str | None = None) -> Finding:
    return Finding(
        concept,
        reference or f"Condition/{concept}",
        ago(weeks_ago) if weeks_ago is not None else None,
        concept.replace("_", " "),
    )


def nsaid(
    weeks: float = 4, start_weeks_ago: float = 8, reference: str = "MedicationStatement/nsaid"
) -> MedicationCourse:
    start = ago(start_weeks_ago)
    return MedicationCourse(
        reference,
        "nsaid",
        "naproxen",
        "500 mg twice daily",
        start,
        start + timedelta(days=round(weeks * 7)),
        weeks,
        "trial",
    )


def steroid(kind: str = "burst", weeks: float = 1) -> MedicationCourse:
    start = ago(6)
    return MedicationCourse(
        "MedicationStatement/steroid",
        "systemic_corticosteroid",
        "prednisone",
        "40 mg daily",
        start,
        start + timedelta(days=round(weeks * 7)),
        weeks,
        kind,
    )  # type: ignore[arg-type]


def facts(
    *,
    symptoms: tuple[str, ...] = ("sciatica",),
    weeks: float | None = 9,
    active: bool = True,
    courses: tuple[MedicationCourse, ...] = (),
    flags: tuple[Finding, ...] = (),
    age: int | None = 45,
    unknown: tuple[str, ...] = (),
    **changes: Any,
) -> Evidence:
    episode_findings = tuple(
        Finding(s, f"Condition/{s}", ago(weeks) if weeks is not None else None, s) for s in symptoms
    )
    base = Evidence(
        age=age,
        episode=SymptomEpisode(
            onset=ago(weeks) if weeks is not None and symptoms else None,
            weeks=weeks if symptoms else None,
            findings=episode_findings,
            radicular=any(s != "low_back_pain" for s in symptoms),
            active=active,
        ),
        courses=courses,
        physical_therapy=(),
        intervention_referrals=(),
        red_flags=flags,
        motor_deficits=(),
        prior_imaging=(),
        implants=(),
        contrast_concerns=(),
        egfr=LabResult("Observation/egfr", 80, ago(2)),
        max_temperature=None,
        pregnancy=(),
        unknown_types=frozenset(unknown),
    )
    return dataclasses.replace(base, **changes)


def imaging(
    key: str,
    *,
    reference: str = "ServiceRequest/sr-1",
    reasons: frozenset[str] = frozenset(),
    priority: str | None = None,
    selected: bool = True,
) -> DraftOrder:
    return DraftOrder(
        reference,
        "ServiceRequest",
        "imaging",
        selected,
        procedure_key=key,
        reasons=tuple(Finding(c, reference, TODAY, c) for c in sorted(reasons)),
        priority=priority,
    )


def therapy_order(kind: str = "medication", reference: str = "MedicationRequest/mr-1") -> DraftOrder:
    return DraftOrder(
        reference,
        "MedicationRequest" if kind == "medication" else "ServiceRequest",
        kind,  # type: ignore[arg-type]
        True,
        drug_class="nsaid" if kind == "medication" else None,
    )


def run(rules: ClinicalRules, patient: Evidence, *orders: DraftOrder) -> Decision:
    return decide_from_evidence(patient, orders, rules, TODAY)


def only(decision: Decision) -> OrderDecision:
    assert len(decision.orders) == 1
    return decision.orders[0]


def kinds(order: OrderDecision) -> list[str]:
    return [c.kind for c in order.concerns]


def proposals(order: OrderDecision, kind: str) -> list[tuple[str, str, str | None, str, bool]]:
    concern = next(c for c in order.concerns if c.kind == kind)
    return [(p.purpose, p.action, p.procedure_key, p.priority, p.recommended) for p in concern.proposals]


FAILED = {"courses": (nsaid(),)}  # 9 weeks of sciatica and a 4-week naproxen trial: variant 3


# ------------------------------------------------------------------------------------- §3.3 variants (table)
VARIANT_ROWS: list[tuple[str, dict[str, Any], int | None, tuple[int, ...]]] = [
    ("cauda equina syndrome", {"flags": (finding("cauda_equina_syndrome", 0),)}, 4, (4,)),
    ("urinary retention with sciatica", {"flags": (finding("urinary_retention", 0),)}, 4, (4,)),
    (
        "faecal incontinence with back pain",
        {"symptoms": ("low_back_pain",), "flags": (finding("fecal_incontinence", 0),)},
        4,
        (4,),
    ),
    ("saddle anaesthesia with sciatica", {"flags": (finding("saddle_anesthesia", 0),)}, 4, (4,)),
    ("active malignancy", {"flags": (finding("malignancy", 50),)}, 7, (7,)),
    ("spinal infection", {"flags": (finding("spinal_infection", 1),)}, 7, (7,)),
    ("IV drug use", {"flags": (finding("iv_drug_use", 100),)}, 7, (7,)),
    (
        "fever condition with recent infection",
        {"flags": (finding("fever", 0), finding("recent_infection", 1))},
        7,
        (7,),
    ),
    (
        "temperature 38.6 with recent infection",
        {"flags": (finding("recent_infection", 1),), "max_temperature": LabResult("Observation/t", 38.6, ago(0))},
        7,
        (7,),
    ),
    ("HIV", {"flags": (finding("hiv", 300),)}, 7, (7,)),
    ("transplant", {"flags": (finding("transplant", 300),)}, 7, (7,)),
    ("immunosuppressive drugs", {"flags": (finding("immunosuppression", 20, "MedicationStatement/tac"),)}, 7, (7,)),
    ("long-term steroid course", {"courses": (steroid("long_term", 80),)}, 7, (7,)),
    ("long-term steroid coding", {"flags": (finding("long_term_steroids", 40),)}, 7, (7,)),
    ("unexplained weight loss", {"flags": (finding("weight_loss", 2),)}, 7, (7,)),
    ("osteoporosis", {"flags": (finding("osteoporosis", 200),)}, 6, (6,)),
    ("vertebral fracture", {"flags": (finding("vertebral_fracture", 1),)}, 6, (6,)),
    ("age 70 or over", {"age": 70}, 6, (6,)),
    ("low-velocity trauma", {"flags": (finding("low_velocity_trauma", 1),)}, 6, (6,)),
    ("prior lumbar surgery", {"flags": (finding("prior_lumbar_surgery", 300),)}, 5, (5,)),
    ("failed therapy with sciatica", FAILED, 3, (3,)),
    ("failed therapy with stenosis", {**FAILED, "symptoms": ("lumbar_stenosis",)}, 3, (3,)),
    (
        "failed therapy, axial pain, surgery referral",
        {
            **FAILED,
            "symptoms": ("low_back_pain",),
            "intervention_referrals": (finding("spine_intervention_referral", 1),),
        },
        3,
        (3,),
    ),
    ("steroid burst is a trial", {"courses": (steroid("burst", 1),)}, 3, (3,)),
    ("prolonged steroid course is a trial", {"courses": (steroid("prolonged", 5),)}, 3, (3,)),
    (
        "two NSAID orders are a trial",
        {"courses": (nsaid(1, 8, "MedicationRequest/a"), nsaid(1, 5, "MedicationRequest/b"))},
        3,
        (3,),
    ),
    ("physical therapy is a trial", {"physical_therapy": (finding("physical_therapy", 4, "Procedure/pt"),)}, 3, (3,)),
    ("failed therapy, axial pain only, no referral", {**FAILED, "symptoms": ("low_back_pain",)}, None, (2, 3)),
    ("under 6 weeks", {**FAILED, "weeks": 3}, 1, (1,)),
    ("6+ weeks, no therapy", {}, 2, (2,)),
    ("one short NSAID course is not a trial", {"courses": (nsaid(1),)}, 2, (2,)),
    ("NSAID before the episode does not count", {"courses": (nsaid(4, 40),)}, 2, (2,)),
    ("resolved episode", {**FAILED, "active": False}, 2, (2,)),
    ("recent infection alone is not a red flag", {**FAILED, "flags": (finding("recent_infection", 1),)}, 3, (3,)),
    (
        "retention without back pain anywhere is not cauda equina",
        {**FAILED, "symptoms": (), "weeks": None, "flags": (finding("urinary_retention", 0),)},
        None,
        (),
    ),
]


@pytest.mark.parametrize(("row", "changes", "driving", "possible"), VARIANT_ROWS, ids=[r[0] for r in VARIANT_ROWS])
def test_variant_table(
    acr: ClinicalRules,
    row: str,
    changes: dict[str, Any],
    driving: int | None,
    possible: tuple[int, ...],
) -> None:
    order = only(run(acr, facts(**changes), imaging("CT_LSPINE_WO")))
    if not possible:  # no back pain on record: the LBP criteria do not apply
        assert order.rating is not None and order.rating.code == "no-criteria-apply"
        return
    assert order.variants is not None
    assert (order.variants.driving, order.variants.possible) == (driving, possible)


@pytest.mark.parametrize(
    ("higher", "lower", "expected"),
    [
        ("cauda_equina_syndrome", "malignancy", 4),
        ("malignancy", "osteoporosis", 7),
        ("osteoporosis", "prior_lumbar_surgery", 6),
        ("prior_lumbar_surgery", None, 5),
    ],
)
def test_precedence_and_every_matched_flag_is_listed(
    acr: ClinicalRules, higher: str, lower: str | None, expected: int
) -> None:
    flags = tuple(finding(c, 1) for c in (higher, lower) if c)
    order = only(run(acr, facts(flags=flags, **FAILED), imaging("CT_LSPINE_WO")))
    assert order.variants is not None and order.variants.driving == expected
    cited = {f.concept for c in order.concerns for f in c.findings}
    assert cited == {c for c in (higher, lower) if c}


def test_reason_code_of_the_order_is_evidence(acr: ClinicalRules) -> None:
    order = only(run(acr, facts(**FAILED), imaging("XR_LSPINE", reasons=frozenset({"cauda_equina_syndrome"}))))
    assert order.variants is not None and order.variants.driving == 4


# ----------------------------------------------------------------------------------- ratings (§2.4, §3.4)
RATING_ROWS: list[tuple[str, dict[str, Any], str, str | None, str | None]] = [
    ("V3 MRI without contrast", FAILED, "MR_LSPINE_WO", "appropriate", "UA"),
    ("V3 CT may be appropriate", FAILED, "CT_LSPINE_WO", "appropriate", "MBA"),
    ("V3 MRI with contrast", FAILED, "MR_LSPINE_W", "not-appropriate", "UNA"),
    ("V1 MRI", {"weeks": 2}, "MR_LSPINE_WO", "not-appropriate", "UNA"),
    ("V7 MRI wwo", {"flags": (finding("malignancy", 10),)}, "MR_LSPINE_WWO", "appropriate", "UA"),
    ("V6 radiographs", {"flags": (finding("osteoporosis", 10),)}, "XR_LSPINE", "appropriate", "UA"),
    ("V2/V3 ambiguity leaves MRI unrated", {**FAILED, "symptoms": ("low_back_pain",)}, "MR_LSPINE_WO", None, None),
    (
        "V2/V3 ambiguity still rates CT wwo",
        {**FAILED, "symptoms": ("low_back_pain",)},
        "CT_LSPINE_WWO",
        "not-appropriate",
        "UNA",
    ),
    (
        "nothing known: CT wwo is UNA in every variant",
        {"unknown": ALL_TYPES, "symptoms": (), "weeks": None, "age": None},
        "CT_LSPINE_WWO",
        "not-appropriate",
        "UNA",
    ),
    (
        "nothing known: MRI is not rated",
        {"unknown": ALL_TYPES, "symptoms": (), "weeks": None, "age": None},
        "MR_LSPINE_WO",
        None,
        None,
    ),
    (
        "medications unknown: MRI is not rated",
        {"unknown": ("MedicationStatement", "MedicationRequest")},
        "MR_LSPINE_WO",
        None,
        None,
    ),
    ("age unknown keeps variant 6 possible", {**FAILED, "age": None}, "BONE_SCAN", None, None),
    (
        "UA in one possible variant, MBA in another: may be appropriate",
        {**FAILED, "age": None},
        "XR_LSPINE",
        "appropriate",
        "MBA",
    ),
    (
        "recent infection, temperatures unknown: variant 7 possible",
        {**FAILED, "flags": (finding("recent_infection", 1),), "unknown": ("Observation",)},
        "CT_LSPINE_W",
        None,
        None,
    ),
    (
        "no back pain on record: no criteria apply",
        {"symptoms": (), "weeks": None},
        "MR_LSPINE_WO",
        "no-criteria-apply",
        None,
    ),
    ("MRI contrast unspecified is not an ACR procedure", FAILED, "MR_LSPINE", None, None),
    (
        "safety never changes the rating",
        {
            **FAILED,
            "egfr": LabResult("Observation/e", 22, ago(1)),
            "contrast_concerns": (finding("gadolinium_allergy", 100),),
        },
        "MR_LSPINE_WWO",
        "appropriate",
        "MBA",
    ),
]


@pytest.mark.parametrize(("row", "changes", "key", "code", "category"), RATING_ROWS, ids=[r[0] for r in RATING_ROWS])
def test_rating_table(
    acr: ClinicalRules,
    row: str,
    changes: dict[str, Any],
    key: str,
    code: str | None,
    category: str | None,
) -> None:
    order = only(run(acr, facts(**changes), imaging(key)))
    if code is None:
        assert order.rating is None
    else:
        assert order.rating is not None and (order.rating.code, order.rating.category) == (code, category)


def test_a_lumbar_reason_keeps_criteria_applicable_without_conditions(
    acr: ClinicalRules,
) -> None:
    order = only(
        run(acr, facts(symptoms=(), weeks=None), imaging("CT_LSPINE_WWO", reasons=frozenset({"low_back_pain"})))
    )
    assert order.rating is not None and order.rating.code == "not-appropriate"


# ---------------------------------------------------------------------------------------- §3.5 cards (table)
CARD_ROWS: list[
    tuple[str, dict[str, Any], DraftOrder, list[tuple[str, str]], list[tuple[str, str, str | None, str, bool]]]
] = [
    (
        "V4 CT converts to urgent MRI",
        {"flags": (finding("cauda_equina_syndrome", 0),)},
        imaging("CT_LSPINE_WO"),
        [("cauda_equina", "critical")],
        [("convert_urgent", "update", "MR_LSPINE_WO", "stat", True)],
    ),
    (
        "V4 MRI is kept and made urgent",
        {"flags": (finding("cauda_equina_syndrome", 0),)},
        imaging("MR_LSPINE_WO"),
        [("cauda_equina", "critical")],
        [("keep_urgent", "update", "MR_LSPINE_WO", "stat", True)],
    ),
    (
        "V7 CT: MRI wwo first, wo optional",
        {"flags": (finding("malignancy", 10),)},
        imaging("CT_LSPINE_WO"),
        [("cancer_infection", "warning")],
        [
            ("mri_wwo", "update", "MR_LSPINE_WWO", "routine", True),
            ("mri_wo", "update", "MR_LSPINE_WO", "routine", False),
        ],
    ),
    (
        "V7 with eGFR below 30: MRI without contrast only",
        {"flags": (finding("malignancy", 10),), "egfr": LabResult("Observation/e", 24, ago(1))},
        imaging("XR_LSPINE"),
        [("cancer_infection_contrast_concern", "warning")],
        [("mri_wo", "update", "MR_LSPINE_WO", "routine", True)],
    ),
    (
        "V7 appropriate order is never asked to change",
        {"flags": (finding("malignancy", 10),)},
        imaging("MR_LSPINE_WWO"),
        [("cancer_infection", "warning")],
        [],
    ),
    (
        "V6 CT wwo: radiographs first",
        {"age": 76},
        imaging("CT_LSPINE_WWO"),
        [("fracture_risk", "warning")],
        [
            ("radiographs", "update", "XR_LSPINE", "routine", True),
            ("mri_wo", "update", "MR_LSPINE_WO", "routine", False),
            ("ct_wo", "update", "CT_LSPINE_WO", "routine", False),
        ],
    ),
    (
        "V6 radiographs: warning, no change",
        {"flags": (finding("osteoporosis", 100),)},
        imaging("XR_LSPINE"),
        [("fracture_risk", "warning")],
        [],
    ),
    (
        "V5 with radicular symptoms: MRI main, radiographs alternative",
        {"flags": (finding("prior_lumbar_surgery", 200),)},
        imaging("CT_LSPINE_WO"),
        [("prior_surgery", "info")],
        [
            ("mri_wwo", "update", "MR_LSPINE_WWO", "routine", True),
            ("radiographs", "update", "XR_LSPINE", "routine", False),
            ("mri_wo", "update", "MR_LSPINE_WO", "routine", False),
        ],
    ),
    (
        "V3 CT converts to MRI without contrast",
        FAILED,
        imaging("CT_LSPINE_WO"),
        [("failed_therapy_convert", "info")],
        [("convert", "update", "MR_LSPINE_WO", "routine", True)],
    ),
    (
        "V3 radiographs convert",
        FAILED,
        imaging("XR_LSPINE"),
        [("failed_therapy_convert", "info")],
        [("convert", "update", "MR_LSPINE_WO", "routine", True)],
    ),
    (
        "V3 contrast MRI converts",
        FAILED,
        imaging("MR_LSPINE_WWO"),
        [("failed_therapy_convert", "info")],
        [("convert", "update", "MR_LSPINE_WO", "routine", True)],
    ),
    ("V3 MRI without contrast: rating only, no card", FAILED, imaging("MR_LSPINE_WO"), [], []),
    (
        "V3 NSAID order creates MRI",
        FAILED,
        therapy_order(),
        [("failed_therapy_create", "info")],
        [("create", "create", "MR_LSPINE_WO", "routine", True)],
    ),
    (
        "V3 surgery referral creates MRI",
        {**FAILED, "symptoms": ("low_back_pain",)},
        therapy_order("referral", "ServiceRequest/ref"),
        [("failed_therapy_create", "info")],
        [("create", "create", "MR_LSPINE_WO", "routine", True)],
    ),
    (
        "V4 NSAID order creates urgent MRI",
        {"flags": (finding("cauda_equina_syndrome", 0),)},
        therapy_order(),
        [("cauda_equina", "critical")],
        [("create_urgent", "create", "MR_LSPINE_WO", "stat", True)],
    ),
    ("V2/V3 NSAID order: nothing", {**FAILED, "symptoms": ("low_back_pain",)}, therapy_order(), [], []),
    ("V1 NSAID order: nothing", {"weeks": 2}, therapy_order(), [], []),
    ("V7 NSAID order: nothing", {"flags": (finding("malignancy", 10),)}, therapy_order(), [], []),
    (
        "V2/V3: confirm candidacy",
        {**FAILED, "symptoms": ("low_back_pain",)},
        imaging("MR_LSPINE_WO"),
        [("confirm_candidacy", "info")],
        [],
    ),
    (
        "V1: remove, conservative care",
        {"weeks": 3},
        imaging("CT_LSPINE_WWO"),
        [("conservative_care_first", "warning")],
        [("remove", "delete", None, "routine", True)],
    ),
    (
        "V2: remove, no documented therapy",
        {},
        imaging("XR_LSPINE"),
        [("no_documented_therapy", "warning")],
        [("remove", "delete", None, "routine", True)],
    ),
    (
        "implant and MRI",
        {**FAILED, "implants": (finding("mr_implant", 100),)},
        imaging("MR_LSPINE_WO"),
        [("mr_implant", "warning")],
        [("ct_myelography", "update", "CT_MYELO_LSPINE", "routine", False)],
    ),
    (
        "implant and CT: no implant card",
        {**FAILED, "implants": (finding("mr_implant", 100),)},
        imaging("CT_LSPINE_WO"),
        [("failed_therapy_convert", "info")],
        [("convert", "update", "MR_LSPINE_WO", "routine", True)],
    ),
    (
        "contrast MRI and eGFR below 30",
        {**FAILED, "egfr": LabResult("Observation/e", 22, ago(1))},
        imaging("MR_LSPINE_WWO"),
        [("failed_therapy_convert", "info"), ("contrast_safety", "warning")],
        [("convert", "update", "MR_LSPINE_WO", "routine", True)],
    ),
    (
        "contrast MRI and dialysis",
        {**FAILED, "contrast_concerns": (finding("dialysis", 50),)},
        imaging("MR_LSPINE_W"),
        [("failed_therapy_convert", "info"), ("contrast_safety", "warning")],
        [("convert", "update", "MR_LSPINE_WO", "routine", True)],
    ),
    (
        "contrast MRI and gadolinium allergy in variant 5",
        {"flags": (finding("prior_lumbar_surgery", 200),), "contrast_concerns": (finding("gadolinium_allergy", 100),)},
        imaging("MR_LSPINE_WWO"),
        [("prior_surgery", "info"), ("contrast_safety", "warning")],
        [],
    ),
    (
        "pregnancy and radiographs",
        {**FAILED, "pregnancy": (finding("pregnancy", 10),)},
        imaging("XR_LSPINE"),
        [("failed_therapy_convert", "info"), ("pregnancy", "warning")],
        [("convert", "update", "MR_LSPINE_WO", "routine", True)],
    ),
    (
        "old low eGFR is not a concern",
        {**FAILED, "egfr": LabResult("Observation/e", 22, ago(30))},
        imaging("MR_LSPINE_WWO"),
        [("failed_therapy_convert", "info")],
        [("convert", "update", "MR_LSPINE_WO", "routine", True)],
    ),
    (
        "duplicate MRI within 12 months",
        {**FAILED, "prior_imaging": (PriorImaging("DiagnosticReport/d", "MR_LSPINE_WO", ago(20)),)},
        imaging("MR_LSPINE_WO"),
        [("duplicate_mri", "warning")],
        [("remove", "delete", None, "routine", True)],
    ),
    (
        "MRI 13 months ago is not a duplicate",
        {**FAILED, "prior_imaging": (PriorImaging("DiagnosticReport/d", "MR_LSPINE_WO", ago(57)),)},
        imaging("MR_LSPINE_WO"),
        [],
        [],
    ),
    (
        "new red flag since the MRI: not a duplicate",
        {
            "flags": (finding("malignancy", 2),),
            "prior_imaging": (PriorImaging("DiagnosticReport/d", "MR_LSPINE_WO", ago(20)),),
        },
        imaging("MR_LSPINE_WO"),
        [("cancer_infection", "warning")],
        [],
    ),
    (
        "medications unknown: a card says what is missing",
        {"unknown": ("MedicationStatement", "MedicationRequest")},
        imaging("MR_LSPINE_WO"),
        [("data_missing", "info")],
        [],
    ),
    (
        "non-lumbar imaging: nothing",
        FAILED,
        DraftOrder("ServiceRequest/chest", "ServiceRequest", "other", True),
        [],
        [],
    ),
]


@pytest.mark.parametrize(("row", "changes", "order", "cards", "suggested"), CARD_ROWS, ids=[r[0] for r in CARD_ROWS])
def test_card_table(
    acr: ClinicalRules,
    row: str,
    changes: dict[str, Any],
    order: DraftOrder,
    cards: list[tuple[str, str]],
    suggested: list[tuple[str, str, str | None, str, bool]],
) -> None:
    decided = only(run(acr, facts(**changes), order))
    assert [(c.kind, indicator(c.kind)) for c in decided.concerns] == cards
    if cards:
        assert proposals(decided, cards[0][0]) == suggested
    if order.kind != "imaging":
        assert decided.rating is None  # non-imaging orders are never rated


def test_an_already_urgent_mri_in_cauda_equina_needs_no_suggestion(
    acr: ClinicalRules,
) -> None:
    decided = only(
        run(acr, facts(flags=(finding("cauda_equina_syndrome", 0),)), imaging("MR_LSPINE_WO", priority="stat"))
    )
    assert kinds(decided) == ["cauda_equina"] and decided.concerns[0].proposals == ()


def test_create_mri_is_not_offered_when_an_mri_is_already_drafted(
    acr: ClinicalRules,
) -> None:
    drafted = imaging("MR_LSPINE_WO", reference="ServiceRequest/mri", selected=False)
    decision = run(acr, facts(**FAILED), therapy_order(), drafted)
    assert [o.order.reference for o in decision.orders] == ["MedicationRequest/mr-1"]  # only selected orders
    assert decision.orders[0].concerns == ()


def test_create_mri_is_not_offered_after_a_recent_mri(acr: ClinicalRules) -> None:
    recent = (PriorImaging("ServiceRequest/old", "MR_LSPINE_WO", ago(21)),)
    assert only(run(acr, facts(prior_imaging=recent, **FAILED), therapy_order())).concerns == ()


def test_a_drafted_referral_makes_axial_pain_a_candidate(acr: ClinicalRules) -> None:
    referral = DraftOrder("ServiceRequest/ref", "ServiceRequest", "referral", False)
    decision = run(acr, facts(**{**FAILED, "symptoms": ("low_back_pain",)}), imaging("CT_LSPINE_WO"), referral)
    assert decision.orders[0].variants is not None and decision.orders[0].variants.possible == (3,)


def test_no_recent_egfr_is_noted_only_for_contrast_orders(acr: ClinicalRules) -> None:
    no_egfr = facts(egfr=None, **FAILED)
    assert only(run(acr, no_egfr, imaging("MR_LSPINE_W"))).no_recent_egfr is True
    assert only(run(acr, no_egfr, imaging("MR_LSPINE_WO"))).no_recent_egfr is False
    assert only(run(acr, facts(**FAILED), imaging("MR_LSPINE_W"))).no_recent_egfr is False
    assert only(run(acr, no_egfr, imaging("CT_LSPINE_WWO"))).no_recent_egfr is True


def test_labs_not_obtained_are_named_missing_not_reported_absent(acr: ClinicalRules) -> None:
    order = only(run(acr, facts(egfr=None, unknown=("Observation",), **FAILED), imaging("CT_LSPINE_WWO")))
    assert order.no_recent_egfr is False
    assert [c.missing_types for c in order.concerns if c.kind == "data_missing"] == [("Observation",)]


def test_order_sign_rates_every_draft_with_its_own_card(acr: ClinicalRules) -> None:
    decision = run(
        acr,
        facts(weeks=1),
        imaging("CT_LSPINE_WWO", reference="ServiceRequest/a"),
        imaging("XR_LSPINE", reference="ServiceRequest/b"),
    )
    assert [(o.order.reference, o.rating.code if o.rating else None, kinds(o)) for o in decision.orders] == [
        ("ServiceRequest/a", "not-appropriate", ["conservative_care_first"]),
        ("ServiceRequest/b", "not-appropriate", ["conservative_care_first"]),
    ]


def test_thresholds_are_settings_not_literals(acr: ClinicalRules) -> None:
    five_weeks = facts(weeks=5, courses=(nsaid(4, 5),))
    assert only(run(acr, five_weeks, imaging("MR_LSPINE_WO"))).rating is not None
    default = only(run(acr, five_weeks, imaging("MR_LSPINE_WO")))
    shorter_rules = ClinicalRules.from_knowledge(load_knowledge(), Thresholds(symptom_weeks=4))
    shorter = only(run(shorter_rules, five_weeks, imaging("MR_LSPINE_WO")))
    assert default.rating is not None and default.rating.code == "not-appropriate"
    assert shorter.rating is not None and shorter.rating.code == "appropriate"


def test_decision_is_pure(acr: ClinicalRules) -> None:
    patient = facts(flags=(finding("malignancy", 10),))
    assert run(acr, patient, imaging("CT_LSPINE_WO")) == run(acr, patient, imaging("CT_LSPINE_WO"))


def test_determined_anything_and_needs_data(acr: ClinicalRules) -> None:
    unknown = facts(unknown=ALL_TYPES, symptoms=(), weeks=None, age=None)
    undetermined = run(acr, unknown, imaging("MR_LSPINE_WO"))
    assert undetermined.needs_data and not undetermined.determined_anything
    rated = run(acr, unknown, imaging("CT_LSPINE_WWO"))
    assert rated.needs_data and rated.determined_anything


@pytest.mark.parametrize(
    ("systemic", "aspirin", "cards"),
    [(True, False, ["failed_therapy_create"]), (False, False, []), (True, True, [])],
    ids=["systemic-nsaid", "topical-nsaid", "antiplatelet-aspirin"],
)
def test_only_a_systemic_therapy_order_shows_the_back_pain_question(
    acr: ClinicalRules, systemic: bool, aspirin: bool, cards: list[str]
) -> None:
    order = DraftOrder(
        "MedicationRequest/mr-1",
        "MedicationRequest",
        "medication",
        True,
        drug_class="nsaid",
        systemic=systemic,
        antiplatelet_aspirin=aspirin,
    )
    assert kinds(only(run(acr, facts(**FAILED), order))) == cards


def test_no_onset_date_is_said_as_such_not_as_inadequate_therapy(acr: ClinicalRules) -> None:
    """Symptoms with no onset date: the duration is not documented, whatever therapy is on record."""
    undated = facts(weeks=None, **FAILED)
    decided = only(run(acr, undated, imaging("MR_LSPINE_WO")))
    assert kinds(decided) == ["duration_unknown"]
    assert decided.rating is not None and decided.rating.code == "not-appropriate"


def test_a_motor_deficit_after_failed_therapy_gets_one_card_not_two(acr: ClinicalRules) -> None:
    deficit = finding("motor_deficit", 1, "Condition/foot-drop")
    decided = only(run(acr, facts(motor_deficits=(deficit,), **FAILED), imaging("CT_LSPINE_WO")))
    assert kinds(decided) == ["motor_deficit"]
    assert proposals(decided, "motor_deficit") == [("convert_urgent", "update", "MR_LSPINE_WO", "urgent", True)]
