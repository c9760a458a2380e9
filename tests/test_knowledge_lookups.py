"""Lookups of the knowledge base: concepts, text keywords, medications, procedures, ACR ratings, cards, thresholds."""

from __future__ import annotations

import string
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cds_service.knowledge import (
    ACR_VARIANTS,
    KNOWLEDGE_VERSION,
    PROCEDURE_KEYS,
    Knowledge,
    MedicationInfo,
    Thresholds,
    check_knowledge,
    load_knowledge,
)
from cds_service.knowledge.systems import ATC, CPT, ICD10CM, LOINC, RADLEX, RXNORM, SNOMED


def test_loaded_once_per_process() -> None:
    assert load_knowledge() is load_knowledge()


def test_shipped_knowledge_has_no_problems() -> None:
    assert check_knowledge() == []


# -- concepts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["M54.50", "M5450", "m54.50", " M54.50 "])
def test_icd_codes_match_with_or_without_the_dot(knowledge: Knowledge, code: str) -> None:
    assert knowledge.concepts_of(ICD10CM, code) == {"low_back_pain"}


@pytest.mark.parametrize(
    "system",
    [
        ICD10CM,
        "urn:oid:2.16.840.1.113883.6.90",
        "https://hl7.org/fhir/sid/icd-10-cm/",
        "HTTP://HL7.ORG/FHIR/SID/ICD-10-CM",
    ],
)
def test_system_uri_variants_are_accepted(knowledge: Knowledge, system: str) -> None:
    assert knowledge.concepts_of(system, "G83.4") == {"cauda_equina_syndrome"}


@pytest.mark.parametrize(
    ("system", "code", "concept"),
    [
        ("urn:oid:2.16.840.1.113883.6.96", "279039007", "low_back_pain"),
        ("http://snomed.info/sct", "23056005", "sciatica"),
        ("urn:oid:2.16.840.1.113883.6.1", "8310-5", "body_temperature"),
        ("urn:oid:2.16.840.1.113883.6.12", "63047", "prior_lumbar_surgery"),
    ],
)
def test_other_system_aliases(knowledge: Knowledge, system: str, code: str, concept: str) -> None:
    assert concept in knowledge.concepts_of(system, code)


def test_unknown_system_code_or_empty_input_gives_nothing(knowledge: Knowledge) -> None:
    assert knowledge.concepts_of("http://example.org/local", "M54.50") == frozenset()
    assert knowledge.concepts_of(None, "M54.50") == frozenset()
    assert knowledge.concepts_of(ICD10CM, None) == frozenset()
    assert knowledge.concepts_of(ICD10CM, "") == frozenset()
    assert knowledge.concepts_of(ICD10CM, "Z00.00") == frozenset()  # a routine check-up is nothing here


def test_remembered_answers_equal_fresh_ones_and_the_memo_stays_bounded(
    knowledge: Knowledge, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cds_service.knowledge import base

    fresh = Knowledge(knowledge._tables)  # its own, empty memos
    monkeypatch.setattr(base, "_MEMO_ENTRIES", 3)
    codings = [(ICD10CM, "M54.41"), (SNOMED, "236435004"), ("urn:x", "1"), (ICD10CM, "M5441"), (ICD10CM, "M54.41")]
    first = [fresh.concepts_of(system, code) for system, code in codings]
    again = [fresh.concepts_of(system, code) for system, code in codings]
    assert first == again == [knowledge.concepts_of(system, code) for system, code in codings]
    assert first[0] == first[3] == {"low_back_pain", "sciatica"}
    assert len(fresh._concepts_by_coding) <= 3
    for text in ("physical therapy referral", "Lumbar MRI", "pacemaker", "physical therapy referral"):
        assert fresh.concepts_of_text(text) == knowledge.concepts_of_text(text)
    assert len(fresh._concepts_by_text) <= 3
    drugs = [(RXNORM, "5640"), (ATC, "M01AE01"), (ATC, "H02AB07"), (RXNORM, "999999999"), (RXNORM, "5640")]
    for _ in range(2):
        assert [fresh.medication(system, code) for system, code in drugs] == [
            knowledge.medication(system, code) for system, code in drugs
        ]
    assert fresh.medication(RXNORM, "5640") is not None and fresh.medication(RXNORM, "999999999") is None
    assert len(fresh._medication_by_coding) <= 3
    for text in ("Ibuprofen 800 mg tablet", "aspirin 81 mg", "lisinopril", "Ibuprofen 800 mg tablet"):
        assert fresh.medication_from_text(text) == knowledge.medication_from_text(text)
    assert len(fresh._medication_by_text) <= 3


def test_long_client_strings_are_answered_but_never_kept(knowledge: Knowledge) -> None:
    fresh = Knowledge(knowledge._tables)
    junk = "X" * 10_000
    assert fresh.concepts_of(ICD10CM, junk) == frozenset()
    assert fresh.concepts_of(junk, "M54.41") == frozenset()
    assert fresh.medication(RXNORM, junk) is None
    assert fresh.medication_from_text("ibuprofen " + junk) is not None  # still read, just not remembered
    assert fresh.concepts_of_text("physical therapy " + junk) == knowledge.concepts_of_text("physical therapy")
    assert not fresh._concepts_by_coding and not fresh._medication_by_coding
    assert not fresh._medication_by_text and not fresh._concepts_by_text
    assert fresh.concepts_of(ICD10CM, "M54.41") == {"low_back_pain", "sciatica"}
    assert len(fresh._concepts_by_coding) == 1  # a label-sized key is kept


def test_unhashable_client_data_gives_nothing_rather_than_an_error(knowledge: Knowledge) -> None:
    assert knowledge.concepts_of(ICD10CM, ["M54.41"]) == frozenset()  # type: ignore[arg-type]
    assert knowledge.concepts_of({"system": ICD10CM}, "M54.41") == frozenset()  # type: ignore[arg-type]
    assert knowledge.medication(RXNORM, ["5640"]) is None  # type: ignore[arg-type]


def test_one_code_can_belong_to_several_concepts(knowledge: Knowledge) -> None:
    assert knowledge.concepts_of(ICD10CM, "M54.41") == {"low_back_pain", "sciatica"}
    assert knowledge.concepts_of(ICD10CM, "M51.16") == {"lumbar_disc_disorder", "lumbar_radiculopathy"}
    assert knowledge.concepts_of(SNOMED, "236435004") == {"kidney_failure", "dialysis"}


def test_concepts_of_codings_is_the_union(knowledge: Knowledge) -> None:
    found = knowledge.concepts_of_codings([(ICD10CM, "M54.50"), (SNOMED, "23056005"), ("urn:x", "1"), (None, None)])
    assert found == {"low_back_pain", "sciatica"}


@pytest.mark.parametrize(
    ("code", "concept"),
    [
        ("C00", "malignancy"), ("C50.911", "malignancy"), ("C79.51", "malignancy"), ("C7A.00", "malignancy"),
        ("C7B.01", "malignancy"), ("C96.9", "malignancy"), ("D05.10", "malignancy"), ("D48.9", "malignancy"),
        ("D49.9", "malignancy"), ("Z85.3", "malignancy"), ("Z8546", "malignancy"),
        ("O00.00", "pregnancy"), ("O26.891", "pregnancy"), ("O9A.53", "pregnancy"), ("Z3A.20", "pregnancy"),
        ("Z94.0", "transplant"),
        ("M80.08XA", "osteoporosis"), ("M80.08XA", "vertebral_fracture"), ("M81.0", "osteoporosis"),
        ("M48.56XA", "vertebral_fracture"), ("S32.010A", "vertebral_fracture"), ("M46.26", "spinal_infection"),
        ("M46.46", "spinal_infection"), ("R50.9", "fever"), ("A41.9", "recent_infection"),
        ("W19.XXXA", "low_velocity_trauma"), ("Z79.61", "immunosuppression"), ("Z49.31", "dialysis"),
    ],
)  # fmt: skip
def test_icd_ranges_are_expanded_at_load(knowledge: Knowledge, code: str, concept: str) -> None:
    assert concept in knowledge.concepts_of(ICD10CM, code)


@pytest.mark.parametrize(
    ("system", "code"), [(ICD10CM, "F11.20"), (ICD10CM, "F11.10"), (SNOMED, "75544000"), (SNOMED, "5602001")]
)
def test_opioid_use_disorder_alone_is_not_iv_drug_use(knowledge: Knowledge, system: str, code: str) -> None:
    # Not evidence of injection; it would send chronic-pain patients in treatment down the V7 pathway.
    assert "iv_drug_use" not in knowledge.concepts_of(system, code)


@pytest.mark.parametrize(
    "code",
    ["D3A.00", "D10.0", "D36.9", "D50.9", "B99.9", "P00.0", "Z86.010", "Z95.5"],
)
def test_range_borders_hold(knowledge: Knowledge, code: str) -> None:
    # D3A (benign carcinoid) sorts after D37 but sits before it in the tabular list: not a malignancy.
    assert not knowledge.concepts_of(ICD10CM, code) & {"malignancy", "pregnancy"}


def test_every_concept_key_has_a_value_set(knowledge: Knowledge) -> None:
    for key in knowledge.concept_keys:
        info = knowledge.valueset(key)
        assert info.url == f"http://lumbar-imaging-cds.example.org/fhir/ValueSet/{key}"
        assert info.version == KNOWLEDGE_VERSION
        assert info.title
    with pytest.raises(KeyError):
        knowledge.valueset("not_a_concept")


def test_text_only_concepts_are_the_ones_without_a_verified_code(knowledge: Knowledge) -> None:
    text_only = {key for key in knowledge.concept_keys if knowledge.valueset(key).text_only}
    assert text_only == {
        "physical_therapy", "epidural_steroid_injection", "spine_intervention_referral", "gadolinium_allergy",
    }  # fmt: skip
    assert knowledge.valueset("malignancy").code_count > 1500


# -- text keywords ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Referral to Neurosurgery", {"spine_intervention_referral"}),
        ("Ambulatory referral to pain management", {"spine_intervention_referral"}),
        ("Lumbar epidural steroid injection L4-5", {"epidural_steroid_injection", "spine_intervention_referral"}),
        ("Physical-therapy evaluation", {"physical_therapy"}),
        ("L4-5 microdiscectomy (2019)", {"prior_lumbar_surgery"}),
        ("Posterior lumbar fusion", {"prior_lumbar_surgery"}),
        ("TLIF L4-L5", {"prior_lumbar_surgery"}),
        # No level, or a cervical one: not evidence of lumbar surgery.
        ("Anterior cervical discectomy and fusion C5-6", set()),
        ("Laminectomy", set()),
        ("Foot drop, left", {"motor_deficit"}),
        ("Progressive weakness of leg", {"motor_deficit"}),
        ("Carcinoma in situ of prostate (disorder)", {"malignancy"}),
        ("Cancer screening", set()),
        ("Spinal cord stimulator", {"mr_implant"}),
        ("Dual chamber PACEMAKER", {"mr_implant"}),
        ("Gadobutrol", {"gadolinium_allergy"}),
        ("Allergy to gadolinium contrast", {"gadolinium_allergy"}),
        ("saddle anaesthesia", {"saddle_anesthesia"}),
        ("Possible cauda equina", {"cauda_equina_syndrome"}),
        ("Chronic lower back pain", {"low_back_pain"}),
        ("", set()),
        (None, set()),
        ("Pacemakers clinic", set()),  # whole words only
        ("Ultrasound of the abdomen", set()),
    ],
)
def test_concepts_of_text(knowledge: Knowledge, text: str | None, expected: set[str]) -> None:
    assert knowledge.concepts_of_text(text) == expected


# -- medications ------------------------------------------------------------------------------


def test_ingredient_and_product_codes(knowledge: Knowledge) -> None:
    assert knowledge.medication(RXNORM, "7258") == MedicationInfo("naproxen", "nsaid", systemic=True)
    assert knowledge.medication(RXNORM, "849431") == MedicationInfo(
        "naproxen", "nsaid", True, strength="550 MG", dose_form="Oral Tablet"
    )
    assert knowledge.medication(RXNORM, "6902") == MedicationInfo("methylprednisolone", "systemic_corticosteroid", True)
    assert knowledge.medication("urn:oid:2.16.840.1.113883.6.88", "197807") == MedicationInfo(
        "ibuprofen", "nsaid", True, strength="800 MG", dose_form="Oral Tablet"
    )
    assert knowledge.medication(RXNORM, "161") is None  # acetaminophen is not an NSAID trial
    assert knowledge.medication(SNOMED, "7258") is None


@pytest.mark.parametrize(
    ("code", "ingredient", "drug_class", "strength", "dose_form"),
    [
        # Products of the public Synthea sample set (cancer and immunosuppression patients).
        ("1736854", "cisplatin", "antineoplastic", "50 MG", "Injection"),
        ("1860480", "docetaxel", "antineoplastic", "20 MG/ML", "Injection"),
        ("583214", "paclitaxel", "antineoplastic", "100 MG", "Injection"),
        ("1736776", "oxaliplatin", "antineoplastic", "5 MG/ML", "Injection"),
        ("1734340", "etoposide", "antineoplastic", "100 MG", "Injection"),
        ("752899", "leuprolide", "hormonal_cancer_therapy", "30 MG/ML", "Prefilled Syringe"),
        ("105586", "methotrexate", "immunosuppressant", "10 MG", "Oral Tablet"),
        ("835900", "cyclosporine", "immunosuppressant", None, None),  # the sources disagree on its strength
        ("312617", "prednisone", "systemic_corticosteroid", "5 MG", "Oral Tablet"),
        ("200064", "letrozole", "hormonal_cancer_therapy", "2.5 MG", "Oral Tablet"),
        ("198377", "tacrolimus", "immunosuppressant", "1 MG", "Oral Capsule"),
        ("200060", "mycophenolate", "immunosuppressant", "500 MG", "Oral Tablet"),
        # Ingredient codes.
        ("32592", "oxaliplatin", "antineoplastic", None, None),
        ("6851", "methotrexate", "immunosuppressant", None, None),
        ("42316", "tacrolimus", "immunosuppressant", None, None),
        ("10324", "tamoxifen", "hormonal_cancer_therapy", None, None),
        ("1514", "betamethasone", "systemic_corticosteroid", None, None),
    ],
)  # fmt: skip
def test_cancer_therapy_and_immunosuppressant_codes(
    knowledge: Knowledge, code: str, ingredient: str, drug_class: str, strength: str | None, dose_form: str | None
) -> None:
    info = knowledge.medication(RXNORM, code)
    assert info is not None
    assert (info.ingredient, info.drug_class, info.systemic) == (ingredient, drug_class, True)
    assert (info.strength, info.dose_form) == (strength, dose_form)


def test_dose_form_of_a_product_code_decides_systemic(knowledge: Knowledge) -> None:
    cream = knowledge.medication(RXNORM, "106258")  # hydrocortisone 10 MG/ML topical cream (Synthea sample set)
    assert cream is not None and cream.drug_class == "systemic_corticosteroid" and not cream.systemic
    assert cream.dose_form == "Topical Cream"
    paste = knowledge.medication(RXNORM, "1085728")  # triamcinolone dental paste
    assert paste is not None and not paste.systemic
    # Text still refines an ingredient-only code: ophthalmic cyclosporine is not systemic immunosuppression.
    eye = knowledge.medication_of_concept([(RXNORM, "3008")], "cyclosporine 0.05 % ophthalmic emulsion")
    assert eye is not None and eye.drug_class == "immunosuppressant" and not eye.systemic


@pytest.mark.parametrize(
    ("code", "why"),
    [
        ("1000126", "medroxyprogesterone 150 MG/ML injection: a contraceptive, not hormonal cancer therapy"),
        ("1803932", "leucovorin: rescue after methotrexate/fluorouracil, not an antineoplastic"),
        ("895994", "fluticasone metered-dose inhaler: not a systemic corticosteroid"),
        ("1244214", "budesonide delayed-release capsule: gut-acting, not in the oral glucocorticoid set"),
        ("313979", "fludrocortisone: a mineralocorticoid"),
    ],
)
def test_drugs_near_the_classes_are_not_in_them(knowledge: Knowledge, code: str, why: str) -> None:
    assert knowledge.medication(RXNORM, code) is None, why


@pytest.mark.parametrize(
    ("text", "ingredient", "drug_class"),
    [
        ("Lupron Depot 22.5 mg IM every 3 months", "leuprolide", "hormonal_cancer_therapy"),
        ("Taxotere 75 mg/m2 IV", "docetaxel", "antineoplastic"),
        ("Humira pen 40 mg every other week", "adalimumab", "immunosuppressant"),
        ("mycophenolic acid 360 mg", "mycophenolate", "immunosuppressant"),
        ("Arimidex 1 mg daily", "anastrozole", "hormonal_cancer_therapy"),
    ],
)
def test_ingredient_and_brand_names_in_text(knowledge: Knowledge, text: str, ingredient: str, drug_class: str) -> None:
    info = knowledge.medication_from_text(text)
    assert info is not None and (info.ingredient, info.drug_class, info.confidence) == (ingredient, drug_class, "text")


def test_atc_codes_and_class_prefixes(knowledge: Knowledge) -> None:
    assert knowledge.medication(ATC, "M01AE02") == MedicationInfo("naproxen", "nsaid", True)
    assert knowledge.medication(ATC, "m01ax01") == MedicationInfo("nsaid", "nsaid", True)  # class prefix M01A
    assert knowledge.medication(ATC, "H02AB07") == MedicationInfo("glucocorticoid", "systemic_corticosteroid", True)
    assert knowledge.medication(ATC, "H02AA02") is None  # fludrocortisone: a mineralocorticoid, not a trial
    assert knowledge.medication(ATC, "M02AA15") is None  # topical NSAID class
    assert knowledge.medication(ATC, "N02BE01") is None  # paracetamol
    assert knowledge.medication(ATC, "L01CD02") == MedicationInfo("antineoplastic", "antineoplastic", True)  # docetaxel
    assert knowledge.medication(ATC, "L02AE02") == MedicationInfo(
        "endocrine cancer therapy", "hormonal_cancer_therapy", True
    )  # leuprorelin
    assert knowledge.medication(ATC, "L04AX03") == MedicationInfo("immunosuppressant", "immunosuppressant", True)
    assert knowledge.medication(ATC, "G03AC06") is None  # medroxyprogesterone as a contraceptive


def test_aspirin(knowledge: Knowledge) -> None:
    antiplatelet = knowledge.medication(ATC, "B01AC06")
    assert antiplatelet is not None and antiplatelet.antiplatelet_aspirin
    analgesic = knowledge.medication(ATC, "N02BA01")
    assert analgesic is not None and analgesic.drug_class == "nsaid" and not analgesic.antiplatelet_aspirin
    # An aspirin ingredient code says nothing of the dose; most listed aspirin is the daily antiplatelet dose.
    ingredient_only = knowledge.medication(RXNORM, "1191")
    assert ingredient_only is not None and ingredient_only.antiplatelet_aspirin
    # A product code carries its strength: aspirin 81 mg tablets (in the Synthea sample set) are antiplatelet.
    tablet = knowledge.medication(RXNORM, "243670")
    assert tablet is not None and tablet.antiplatelet_aspirin and tablet.strength == "81 MG"


STEROIDS = {"methylprednisolone", "hydrocortisone", "prednisone", "prednisolone"}


@pytest.mark.parametrize(
    ("text", "ingredient", "systemic", "antiplatelet", "strength"),
    [
        ("Naproxen 500 mg tablet", "naproxen", True, False, "500 MG"),
        ("ADVIL 200MG", "ibuprofen", True, False, "200 MG"),
        ("Medrol dose pack 4 mg", "methylprednisolone", True, False, "4 MG"),
        ("Diclofenac sodium 1% topical gel", "diclofenac", False, False, None),
        ("Voltaren Gel", "diclofenac", False, False, None),
        ("Ketoprofen patch", "ketoprofen", False, False, None),
        ("Hydrocortisone cream 1%", "hydrocortisone", False, False, None),
        ("Hydrocortisone rectal foam", "hydrocortisone", False, False, None),
        ("Indomethacin 50 mg suppository", "indomethacin", True, False, "50 MG"),  # rectal NSAIDs are systemic
        ("Prednisolone acetate 1% ophthalmic suspension", "prednisolone", False, False, None),
        ("Prednisone 20 mg oral tablet", "prednisone", True, False, "20 MG"),
        ("Aspirin 81 mg EC tablet", "aspirin", True, True, "81 MG"),
        ("Low-dose aspirin", "aspirin", True, True, None),
        ("Aspirin 325 MG Oral Tablet", "aspirin", True, False, "325 MG"),
        ("aspirin", "aspirin", True, True, None),
    ],
)
def test_medication_from_text(
    knowledge: Knowledge, text: str, ingredient: str, systemic: bool, antiplatelet: bool, strength: str | None
) -> None:
    info = knowledge.medication_from_text(text)
    assert info is not None
    assert (info.ingredient, info.systemic, info.antiplatelet_aspirin, info.strength) == (
        ingredient,
        systemic,
        antiplatelet,
        strength,
    )
    assert info.confidence == "text"
    assert info.drug_class == ("systemic_corticosteroid" if ingredient in STEROIDS else "nsaid")


@pytest.mark.parametrize("text", ["Fludrocortisone 0.1 mg", "Acetaminophen 500 mg", "Gabapentin", "", None])
def test_medication_from_text_ignores_other_drugs(knowledge: Knowledge, text: str | None) -> None:
    assert knowledge.medication_from_text(text) is None


def test_medication_of_concept_refines_a_code_with_its_text(knowledge: Knowledge) -> None:
    coded = knowledge.medication_of_concept([(RXNORM, "1191")], "Aspirin 650 mg")
    assert coded is not None and not coded.antiplatelet_aspirin and coded.confidence == "code"
    topical = knowledge.medication_of_concept([(RXNORM, "3355")], "diclofenac 1% gel")
    assert topical is not None and not topical.systemic
    assert knowledge.medication_of_concept([("urn:local", "x")], "naproxen 250 mg") == MedicationInfo(
        "naproxen", "nsaid", True, strength="250 MG", confidence="text"
    )


# -- procedures and ACR ratings --------------------------------------------------------------


@pytest.mark.parametrize(
    ("system", "code", "key"),
    [
        (CPT, "72148", "MR_LSPINE_WO"), (LOINC, "30679-5", "MR_LSPINE_WO"), (RADLEX, "rpid541", "MR_LSPINE_WO"),
        ("urn:oid:2.16.840.1.113883.6.12", "72158", "MR_LSPINE_WWO"), (CPT, "72149", "MR_LSPINE_W"),
        (LOINC, "24968-0", "MR_LSPINE"), (CPT, "72131", "CT_LSPINE_WO"), (CPT, "72132", "CT_LSPINE_W"),
        (CPT, "72133", "CT_LSPINE_WWO"), (LOINC, "24965-6", "CT_MYELO_LSPINE"), (CPT, "72110", "XR_LSPINE"),
        (LOINC, "24578-7", "BONE_SCAN"),
    ],
)  # fmt: skip
def test_procedure_keys(knowledge: Knowledge, system: str, code: str, key: str) -> None:
    assert knowledge.procedure_key(system, code) == key


def test_non_lumbar_or_unknown_procedures_have_no_key(knowledge: Knowledge) -> None:
    assert knowledge.procedure_key(CPT, "70551") is None  # MRI brain
    assert knowledge.procedure_key(LOINC, "24531-6") is None  # US retroperitoneum, wrongly used for lumbar MRI
    assert knowledge.procedure_key(None, "72148") is None


def test_procedure_codings_map_back_to_their_key(knowledge: Knowledge) -> None:
    for key in PROCEDURE_KEYS:
        codings = knowledge.procedure_codings(key)
        assert codings, key
        for system, code, display in codings:
            assert knowledge.procedure_key(system, code) == key and display
    assert knowledge.procedure_codings("MR_LSPINE_WO")[:2] == knowledge.mri_without_contrast_codings()
    assert [code for _, code, _ in knowledge.procedure_codings("XR_LSPINE")] == ["72100", "72110", "72114", "72120"]
    assert knowledge.procedure_codings("NOT_A_KEY") == ()


def test_procedure_info(knowledge: Knowledge) -> None:
    assert {key for key in PROCEDURE_KEYS if knowledge.procedure_info(key).uses_gadolinium} == {
        "MR_LSPINE_W",
        "MR_LSPINE_WWO",
    }
    assert knowledge.procedure_info("CT_LSPINE_WO").modality == "CT"
    assert knowledge.procedure_info("MR_LSPINE").iv_contrast == "unspecified"


# docs/clinical-rules.md#acr-rating-table, row by row (UNA* cells are UNA).
ACR_TABLE = {
    "MR_LSPINE_WO": "UNA UNA UA UA UA UA UA",
    "MR_LSPINE_WWO": "UNA UNA MBA UA UA MBA UA",
    "MR_LSPINE_W": "UNA UNA UNA UNA UNA UNA UNA",
    "XR_LSPINE": "UNA UNA MBA UNA UA UA MBA",
    "CT_LSPINE_WO": "UNA UNA MBA MBA MBA UA MBA",
    "CT_LSPINE_W": "UNA UNA UNA UNA UNA UNA MBA",
    "CT_LSPINE_WWO": "UNA UNA UNA UNA UNA UNA UNA",
    "CT_MYELO_LSPINE": "UNA UNA MBA MBA MBA MBA MBA",
    "BONE_SCAN": "UNA UNA MBA UNA UNA UNA UNA",
}


@pytest.mark.parametrize(("key", "row"), ACR_TABLE.items())
def test_acr_ratings_follow_clinical_md(knowledge: Knowledge, key: str, row: str) -> None:
    assert [knowledge.acr_category(key, variant) for variant in ACR_VARIANTS] == row.split()


def test_inferred_cells_are_marked(knowledge: Knowledge) -> None:
    assert knowledge.acr_cell_inferred("MR_LSPINE_W", 4)
    assert knowledge.acr_cell_inferred("XR_LSPINE", 4)
    assert not knowledge.acr_cell_inferred("XR_LSPINE", 1)  # V1/V2 come from the ACR tables themselves
    assert not knowledge.acr_cell_inferred("MR_LSPINE_WO", 3)


def test_unrated_procedures_raise_key_error(knowledge: Knowledge) -> None:
    assert not knowledge.is_rated_procedure("MR_LSPINE")
    with pytest.raises(KeyError):
        knowledge.acr_category("MR_LSPINE", 3)
    with pytest.raises(KeyError):
        knowledge.acr_category("MR_LSPINE_WO", 8)
    with pytest.raises(KeyError):
        knowledge.acr_category("NOT_A_KEY", 1)


def test_mri_order_protocol(knowledge: Knowledge) -> None:
    assert "T1" in knowledge.mri_protocol and "T2" in knowledge.mri_protocol and "1.5 T" in knowledge.mri_protocol


# -- cards ------------------------------------------------------------------------------------


def test_override_reasons(knowledge: Knowledge) -> None:
    texts = knowledge.card_texts
    assert texts["override_reason_system"] == "http://lumbar-imaging-cds.example.org/fhir/CodeSystem/override-reason"
    assert dict(texts["override_reasons"]) == {
        "proceed-with-order": "Proceed with order",
        "guideline-not-applicable": "Guideline does not apply",
        "disagree-with-guideline": "Do not agree with guideline",
        "other-evidence": "Other evidence base",
        "radiologist-recommendation": "Radiologist recommendation",
        "deferring-decision": "Deferring decision",
        "candidate-confirmed": "Surgery or intervention candidate confirmed",
        "trial-confirmed": "Adequate conservative therapy trial confirmed",
    }
    assert "candidate-confirmed" in texts["cards"]["confirm_candidacy"]["override_reasons"]


def test_card_source_and_references(knowledge: Knowledge) -> None:
    texts = knowledge.card_texts
    assert texts["source"]["label"] == "ACR Appropriateness Criteria: Low Back Pain (2021)"
    assert texts["source"]["url"] == "https://acsearch.acr.org/docs/69483/Narrative/"
    assert texts["references"]["choosing_wisely"]["url"].startswith("https://www.aafp.org/")
    assert "choosing_wisely" in texts["cards"]["conservative_care_first"]["references"]


def test_every_summary_stays_under_140_characters_with_the_longest_values(knowledge: Knowledge) -> None:
    texts = knowledge.card_texts
    longest = {name: "W" * spec["max_length"] for name, spec in texts["placeholders"].items()}
    for name, card in texts["cards"].items():
        assert len(card["summary"].format(**longest)) < 140, name
        assert card["indicator"] in ("info", "warning", "critical"), name


def test_card_wording_uses_acr_category_words(knowledge: Knowledge) -> None:
    texts = knowledge.card_texts
    words = " ".join(
        [card["summary"] + " " + card["detail"] for card in texts["cards"].values()] + list(texts["phrases"].values())
    ).lower()
    assert "inappropriate" not in words
    assert "usually appropriate" in words and "usually not appropriate" in words
    assert texts["cards"]["cauda_equina"]["indicator"] == "critical"


def test_card_texts_render_with_their_declared_placeholders(knowledge: Knowledge) -> None:
    texts = knowledge.card_texts
    names = set(texts["placeholders"]) | set(texts["detail_placeholders"])
    for card in texts["cards"].values():
        for template in (card["summary"], card["detail"]):
            used = {field for _, field, _, _ in string.Formatter().parse(template) if field}
            assert used <= names
            template.format(**{name: "x" for name in names})


def test_card_texts_are_read_only(knowledge: Knowledge) -> None:
    with pytest.raises(TypeError):
        knowledge.card_texts["cards"]["cauda_equina"]["summary"] = "changed"


# -- thresholds -------------------------------------------------------------------------------


def test_threshold_defaults_follow_product_md() -> None:
    thresholds = Thresholds()
    assert (thresholds.symptom_weeks, thresholds.nsaid_trial_weeks, thresholds.steroid_burst_weeks) == (6, 2, 3)
    assert (thresholds.long_term_steroid_months, thresholds.prior_mri_lookback_months) == (3, 12)
    assert thresholds.fever_celsius == 38.0 and thresholds.egfr_contrast_limit == 30.0
    assert load_knowledge().thresholds == thresholds


def test_lookups_are_constant_time(knowledge: Knowledge) -> None:
    # Generous bound (a dict lookup costs well under a microsecond): this catches a lookup that
    # scans a value set or rebuilds a table per call, not machine speed.
    codings = [(ICD10CM, "M54.50"), ("urn:oid:2.16.840.1.113883.6.90", "C50911"), (SNOMED, "23056005")] * 10_000
    started = time.perf_counter()
    for system, code in codings:
        knowledge.concepts_of(system, code)
    assert time.perf_counter() - started < 1.0


def test_service_load_does_not_import_the_icd10cm_package() -> None:
    # The service reads ICD-10-CM from the shipped snapshot: in a fresh process load_knowledge() never
    # imports simple_icd_10_cm (its ~180 MB tree), and the expanded codes are there.
    script = (
        "import sys\n"
        "from cds_service.knowledge import load_knowledge\n"
        "knowledge = load_knowledge()\n"
        "assert 'simple_icd_10_cm' not in sys.modules, 'package imported'\n"
        "assert knowledge.concepts_of('http://hl7.org/fhir/sid/icd-10-cm', 'C7A.00') == {'malignancy'}\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@given(
    system=st.one_of(st.none(), st.text(max_size=60), st.sampled_from(["http://hl7.org/fhir/sid/icd-10-cm", ATC, CPT])),
    code=st.one_of(st.none(), st.text(max_size=20), st.integers()),
    text=st.one_of(st.none(), st.text(max_size=200), st.integers()),
)
@settings(max_examples=300, deadline=None)
def test_lookups_never_raise_on_client_data(system: object, code: object, text: object) -> None:
    # Codes and texts come from untrusted FHIR data: odd values give empty answers, never an exception.
    knowledge = load_knowledge()
    assert isinstance(knowledge.concepts_of(system, code), frozenset)  # type: ignore[arg-type]
    key = knowledge.procedure_key(system, code)  # type: ignore[arg-type]
    assert key is None or key in PROCEDURE_KEYS
    knowledge.medication(system, code)  # type: ignore[arg-type]
    assert isinstance(knowledge.concepts_of_text(text), frozenset)  # type: ignore[arg-type]
    knowledge.medication_from_text(text)  # type: ignore[arg-type]
    knowledge.medication_of_concept([(system, code)], text)  # type: ignore[list-item, arg-type]
