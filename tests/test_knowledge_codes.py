"""Every code the knowledge base ships is verified (docs/clinical-rules.md#value-sets).

* ICD-10-CM: each code and its display are checked against the ``simple-icd-10-cm`` package,
  both the codes listed in the value sets and every code the load-time range expansion adds.
* Other systems (SNOMED CT, RxNorm, ATC, LOINC, CPT, RadLex) have no terminology package here:
  each shipped code must appear in :data:`VERIFIED_CODES` below, which records its mark (V or C,
  never UNVERIFIED), its source, and what it must mean, or in
  ``tests/verified_codes.tsv``: the codes taken from public value-set expansions (VSAC sets shipped in
  cqframework repositories) and code lists, each with the display its source gives, its mark, the file
  it was read in (repository:path@commit) and its meaning. The value sets must carry that display.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest

from cds_service.knowledge import load_knowledge
from cds_service.knowledge.systems import ATC, CPT, ICD10CM, LOINC, RADLEX, RXNORM, SNOMED

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # the package's own importlib.resources call
    import simple_icd_10_cm as icd

KNOWLEDGE_DIR = Path(__file__).resolve().parents[1] / "cds_service" / "knowledge"

CDS4CPM = "cqframework/cds4cpm VSAC 1021.95"
KIDNEY = "cds4cpm Kidney Failure VSAC set"
SUBSTANCE = "cds4cpm Substance Abuse Conditions"
VSAC73 = "VSAC 2.16.840.1.113762.1.4.1021.73 expansion, cds4cpm"
RXCLASS = "RxClass H02AB classMembers log plus one independent list"
ATC_NSAID = "several independent formulary and research files"
AZURE = "Azure Health Insights Radiology Insights LOINC list"
CPT_DESC = "AMA descriptor quoted on codingahead.com"
JP_CORE = "jami-fhir-jp-wg/jp-core-v1x RadLex code system"
SURG = "AMA descriptor quoted by legalclarity/codingahead/medcoder.ai"
C_LISTS = "two independent public code lists (team terminology review, 2026-11)"
EGFR = C_LISTS

# (system, code) -> (mark, source, meaning). Meaning: "concept:<key>", "procedure:<key>" or "drug:<ingredient>".
VERIFIED_CODES: dict[tuple[str, str], tuple[str, str, str]] = {
    # SNOMED CT
    (SNOMED, "279039007"): ("V", "argonaut cds-hooks-for-pama cases; sandbox pama-imaging.js", "concept:low_back_pain"),
    (SNOMED, "161891005"): ("C", C_LISTS, "concept:low_back_pain"),
    (SNOMED, "23056005"): ("V", CDS4CPM, "concept:sciatica"),
    (SNOMED, "128196005"): ("V", CDS4CPM, "concept:lumbar_radiculopathy"),
    (SNOMED, "2415007"): ("V", CDS4CPM, "concept:lumbar_radiculopathy"),
    (SNOMED, "69071001"): ("V", CDS4CPM, "concept:lumbar_radiculopathy"),
    (SNOMED, "20021007"): ("V", CDS4CPM, "concept:lumbar_disc_disorder"),
    (SNOMED, "311211000119105"): ("V", CDS4CPM, "concept:lumbar_disc_disorder"),
    (SNOMED, "18347007"): ("V", CDS4CPM, "concept:lumbar_stenosis"),
    (SNOMED, "192970008"): ("C", "several independent public code lists", "concept:cauda_equina_syndrome"),
    (SNOMED, "267064002"): ("C", "eCQM value-set class pairing R33.9", "concept:urinary_retention"),
    (SNOMED, "236648008"): ("C", "eCQM value-set class pairing R33.9", "concept:urinary_retention"),
    (SNOMED, "363346000"): ("C", C_LISTS, "concept:malignancy"),
    (SNOMED, "2304001"): ("V", CDS4CPM, "concept:spinal_infection"),
    (SNOMED, "302935008"): ("V", CDS4CPM, "concept:spinal_infection"),
    (SNOMED, "202752002"): ("V", CDS4CPM, "concept:spinal_infection"),
    (SNOMED, "64859006"): ("C", C_LISTS, "concept:osteoporosis"),
    (SNOMED, "86406008"): ("C", C_LISTS, "concept:hiv"),
    (SNOMED, "228388006"): ("V", SUBSTANCE, "concept:iv_drug_use"),
    (SNOMED, "77386006"): ("V", "cds4cpm Pregnancy 2.16.840.1.113883.3.526.3.378", "concept:pregnancy"),
    (SNOMED, "431857002"): ("V", KIDNEY, "concept:kidney_failure"),
    (SNOMED, "433146000"): ("V", KIDNEY, "concept:kidney_failure"),
    (SNOMED, "236435004"): ("V", KIDNEY, "concept:dialysis"),
    (SNOMED, "202725007"): ("V", CDS4CPM, "concept:prior_lumbar_surgery"),
    (SNOMED, "441509002"): ("C", "Danish and German FHIR IG examples", "concept:mr_implant"),
    # LOINC observations
    (LOINC, "8310-5"): ("C", "FHIR vital-signs profile code", "concept:body_temperature"),
    (LOINC, "98979-8"): ("C", EGFR, "concept:egfr"),
    (LOINC, "62238-1"): ("C", EGFR, "concept:egfr"),
    (LOINC, "33914-3"): ("C", EGFR, "concept:egfr"),
    (LOINC, "48642-3"): ("C", EGFR, "concept:egfr"),
    (LOINC, "48643-1"): ("C", EGFR, "concept:egfr"),
    (LOINC, "2106-3"): ("C", EGFR, "concept:pregnancy_test"),
    # CPT prior lumbar surgery
    (CPT, "63030"): ("V", SURG, "concept:prior_lumbar_surgery"),
    (CPT, "63047"): ("V", SURG, "concept:prior_lumbar_surgery"),
    # Imaging
    (CPT, "72148"): ("V", CPT_DESC, "procedure:MR_LSPINE_WO"),
    (CPT, "72149"): ("V", CPT_DESC, "procedure:MR_LSPINE_W"),
    (CPT, "72158"): ("V", CPT_DESC, "procedure:MR_LSPINE_WWO"),
    (CPT, "72131"): ("V", CPT_DESC, "procedure:CT_LSPINE_WO"),
    (CPT, "72132"): ("V", CPT_DESC, "procedure:CT_LSPINE_W"),
    (CPT, "72133"): ("V", CPT_DESC + "; Argonaut PAMA scenario", "procedure:CT_LSPINE_WWO"),
    (CPT, "72100"): ("V", CPT_DESC, "procedure:XR_LSPINE"),
    (CPT, "72110"): ("V", CPT_DESC, "procedure:XR_LSPINE"),
    (CPT, "72114"): ("V", CPT_DESC, "procedure:XR_LSPINE"),
    (CPT, "72120"): ("V", CPT_DESC + "; AAPC note on the descriptor change", "procedure:XR_LSPINE"),
    (LOINC, "30679-5"): ("V", AZURE, "procedure:MR_LSPINE_WO"),
    (LOINC, "30678-7"): ("V", AZURE, "procedure:MR_LSPINE_W"),
    (LOINC, "24967-2"): ("V", AZURE, "procedure:MR_LSPINE_WWO"),
    (LOINC, "24968-0"): ("V", AZURE, "procedure:MR_LSPINE"),
    (LOINC, "30620-9"): ("C", "Azure list plus a LOINC-derived hospital seed table", "procedure:CT_LSPINE_WO"),
    (LOINC, "24964-9"): ("C", C_LISTS, "procedure:CT_LSPINE_W"),
    (LOINC, "24965-6"): ("C", C_LISTS, "procedure:CT_MYELO_LSPINE"),
    (LOINC, "24578-7"): ("V", AZURE, "procedure:BONE_SCAN"),
    (RADLEX, "RPID541"): ("V", JP_CORE, "procedure:MR_LSPINE_WO"),
    (RADLEX, "RPID501"): ("V", JP_CORE, "procedure:MR_LSPINE_W"),
    (RADLEX, "RPID500"): ("V", JP_CORE, "procedure:MR_LSPINE_WWO"),
    (RADLEX, "RPID33"): ("V", JP_CORE, "procedure:CT_LSPINE_W"),
    # RxNorm ingredients
    (RXNORM, "5640"): ("V", "synthea drug_allergy_incidence.json; OHDSI Eunomia CONCEPT.csv", "drug:ibuprofen"),
    (RXNORM, "7258"): ("C", "UMLS MRCONSO-format test fixtures", "drug:naproxen"),
    (RXNORM, "3355"): ("V", "OHDSI/Capr README.md OMOP concept export", "drug:diclofenac"),
    (RXNORM, "140587"): ("C", "two OHDSI concept-set exports", "drug:celecoxib"),
    (RXNORM, "1191"): ("V", "synthea drug_allergy_incidence.json; OHDSI Eunomia CONCEPT.csv", "drug:aspirin"),
    (RXNORM, "8640"): ("C", RXCLASS, "drug:prednisone"),
    (RXNORM, "8638"): ("C", RXCLASS, "drug:prednisolone"),
    (RXNORM, "6902"): ("C", RXCLASS, "drug:methylprednisolone"),
    (RXNORM, "3264"): ("C", RXCLASS, "drug:dexamethasone"),
    (RXNORM, "5492"): ("C", RXCLASS, "drug:hydrocortisone"),
    (RXNORM, "10759"): ("C", RXCLASS, "drug:triamcinolone"),
    # RxNorm oral products (all V)
    **{
        (RXNORM, code): ("V", VSAC73, f"drug:{ingredient}")
        for code, ingredient in [
            ("310965", "ibuprofen"),
            ("197805", "ibuprofen"),
            ("197806", "ibuprofen"),
            ("197807", "ibuprofen"),
            ("198013", "naproxen"),
            ("198012", "naproxen"),
            ("198014", "naproxen"),
            ("849574", "naproxen"),
            ("849431", "naproxen"),
            ("311486", "meloxicam"),
            ("152695", "meloxicam"),
            ("205322", "celecoxib"),
            ("205323", "celecoxib"),
            ("855926", "diclofenac"),
            ("855942", "diclofenac"),
            ("834022", "ketorolac"),
            ("197817", "indomethacin"),
            ("197818", "indomethacin"),
            ("197686", "etodolac"),
            ("199390", "etodolac"),
            ("311892", "nabumetone"),
            ("311893", "nabumetone"),
            ("198107", "piroxicam"),
            ("198108", "piroxicam"),
            ("197855", "ketoprofen"),
        ]
    },  # fmt: skip
    # ATC (the NSAID codes are C)
    (ATC, "M01AE01"): ("C", ATC_NSAID, "drug:ibuprofen"),
    (ATC, "M01AE02"): ("C", ATC_NSAID, "drug:naproxen"),
    (ATC, "M01AB05"): ("C", ATC_NSAID, "drug:diclofenac"),
    (ATC, "M01AH01"): ("C", ATC_NSAID, "drug:celecoxib"),
    (ATC, "M01AC06"): ("C", ATC_NSAID, "drug:meloxicam"),
    (ATC, "M01AB15"): ("C", ATC_NSAID, "drug:ketorolac"),
    (ATC, "M01AB01"): ("C", ATC_NSAID, "drug:indomethacin"),
    (ATC, "M01AE03"): ("C", ATC_NSAID, "drug:ketoprofen"),
    (ATC, "M01AC01"): ("C", ATC_NSAID, "drug:piroxicam"),
    # The two aspirin ATC codes were first unverified; both were
    # corroborated on 2026-11-27 in independent public drug files (two sources, same meaning = C).
    (ATC, "B01AC06"): ("C", "Swedish NPL Trombyl 75 mg; Taiwan aspirin 100 mg; Aspirin Cardio", "drug:aspirin"),
    (ATC, "N02BA01"): ("C", "independent public drug reference files (analgesic acetylsalicylic acid)", "drug:aspirin"),
}

# Codes the team's terminology review found unverified or wrong: none of them may be shipped.
NOT_SHIPPED: list[tuple[str, str]] = [
    (RXNORM, "41493"), (RXNORM, "35827"), (RXNORM, "5781"), (RXNORM, "24605"), (RXNORM, "31448"),
    # 1514 betamethasone and 2878 cortisone left this list: now V (US Core common substances VSAC expansion).
    (RXNORM, "6142"), (RXNORM, "8356"), (RXNORM, "1347"), (RXNORM, "22396"),
    (RXNORM, "6835"), (RXNORM, "202472"), (RXNORM, "54552"),
    # 14106009 (cardiac pacemaker device) left this list: now V (VSAC Cardiac Pacer 2.16.840.1.113883.3.526.3.1193).
    (SNOMED, "386661006"), (SNOMED, "89362005"), (SNOMED, "72042002"), (SNOMED, "6077001"),
    (LOINC, "24531-6"), (LOINC, "36402-6"), (LOINC, "24974-8"), (LOINC, "24970-6"), (LOINC, "24972-2"),
    (LOINC, "24971-4"), (LOINC, "88293-6"), (LOINC, "88294-4"), (LOINC, "50044-7"), (LOINC, "2118-8"),
    (LOINC, "19080-1"), (LOINC, "82810-3"), (LOINC, "24963-1"),
    # 22612, 22630, 22633, 22558, 63042, 63005 and 62380 left this list: their lumbar descriptors are now verified (V).
    (CPT, "62321"), (CPT, "62323"), (CPT, "64483"), (CPT, "64484"), (CPT, "62304"),
    (CPT, "72265"), (CPT, "78306"), (CPT, "78830"),
    (ATC, "M01AB08"), (ATC, "M01AX01"), (ATC, "H02AB07"), (ATC, "H02AB04"),
    (RADLEX, "RPID31"), (RADLEX, "RPID32"),
]  # fmt: skip


def _read_table() -> list[tuple[tuple[str, str], str, str, str, str]]:
    """Rows of tests/verified_codes.tsv: ((system, code), display, mark, source, meaning)."""
    rows = []
    lines = (Path(__file__).parent / "verified_codes.tsv").read_text(encoding="utf-8").splitlines()
    header = [line for line in lines if not line.startswith("#")][0]
    assert header.split("\t") == ["system", "code", "display", "mark", "source", "meaning"]
    for line in lines:
        if line.startswith("#") or line == header:
            continue
        system, code, display, mark, source, meaning = line.split("\t")
        rows.append(((system, code), display, mark, source, meaning))
    return rows


TABLE_ROWS = _read_table()
# Every verified code, however recorded: (system, code) -> [(mark, source, meaning)].
VERIFIED: dict[tuple[str, str], list[tuple[str, str, str]]] = {}
for _coding, _row in VERIFIED_CODES.items():
    VERIFIED.setdefault(_coding, []).append(_row)
for _coding, _display, _mark, _source, _meaning in TABLE_ROWS:
    VERIFIED.setdefault(_coding, []).append((_mark, _source, _meaning))


def _valueset(key: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((KNOWLEDGE_DIR / "valuesets" / f"{key}.json").read_text(encoding="utf-8"))
    return data


def _icd_concepts() -> list[tuple[str, str, str]]:
    found = []
    for key in load_knowledge().concept_keys:
        for include in (_valueset(key).get("compose") or {}).get("include", []):
            if include.get("system") == ICD10CM:
                found += [(key, concept["code"], concept["display"]) for concept in include.get("concept", [])]
    return found


def _shipped_non_icd_codes() -> set[tuple[str, str]]:
    """Every non-ICD code in the data files, read straight from the JSON (not through the loader)."""
    shipped: set[tuple[str, str]] = set()
    for key in load_knowledge().concept_keys:
        for include in (_valueset(key).get("compose") or {}).get("include", []):
            if include.get("system") != ICD10CM:
                shipped |= {(include["system"], concept["code"]) for concept in include.get("concept", [])}
    procedures = json.loads((KNOWLEDGE_DIR / "procedures.json").read_text(encoding="utf-8"))
    for entry in procedures["procedures"].values():
        shipped |= {(coding["system"], coding["code"]) for coding in entry["codes"]}
    medications = json.loads((KNOWLEDGE_DIR / "medications.json").read_text(encoding="utf-8"))
    for ingredient in medications["ingredients"]:
        shipped |= {(RXNORM, item["code"]) for item in ingredient["rxnorm"]}
        shipped |= {(ATC, item["code"]) for item in ingredient["atc"]}
    shipped |= {(RXNORM, product["rxnorm"]) for product in medications["products"]}
    shipped |= {(ATC, item["code"]) for item in medications["antiplatelet_aspirin"]["atc"]}
    return shipped


@pytest.mark.parametrize(("key", "code", "display"), _icd_concepts())
def test_icd_code_and_display_match_the_icd10cm_package(key: str, code: str, display: str) -> None:
    assert icd.is_valid_item(code), f"{key}: {code} is not in ICD-10-CM"
    assert display == icd.get_description(code), f"{key}: {code}"


def test_expanded_icd_codes_all_exist_with_the_package_display() -> None:
    knowledge = load_knowledge()
    keys_found: set[str] = set()
    checked = 0
    for code in icd.get_all_codes(True):
        concepts = knowledge.concepts_of(ICD10CM, code)
        if concepts:
            assert knowledge.display(ICD10CM, code) == icd.get_description(code), code
            keys_found |= concepts
            checked += 1
    filtered_keys = {
        key
        for key in load_knowledge().concept_keys
        for include in (_valueset(key).get("compose") or {}).get("include", [])
        if include.get("filter")
    }
    assert filtered_keys <= keys_found, "a filter expanded to nothing"
    assert checked > 4000  # the malignancy and pregnancy ranges alone hold thousands of codes


def test_every_shipped_non_icd_code_is_in_the_verified_table_with_mark_v_or_c() -> None:
    shipped = _shipped_non_icd_codes()
    unverified = sorted(shipped - set(VERIFIED))
    assert not unverified, f"shipped codes missing from VERIFIED_CODES and verified_codes.tsv: {unverified[:20]}"
    for coding, rows in VERIFIED.items():
        for mark, source, _meaning in rows:
            assert mark in ("V", "C"), coding
            assert source, coding


def test_the_verified_table_lists_only_codes_that_are_shipped() -> None:
    # A stale table row would make a removed code look verified.
    assert set(VERIFIED) <= _shipped_non_icd_codes()


def test_a_code_is_recorded_once_per_meaning() -> None:
    seen: set[tuple[tuple[str, str], str]] = set()
    for coding, rows in VERIFIED.items():
        for _mark, _source, meaning in rows:
            assert (coding, meaning) not in seen, (coding, meaning)
            seen.add((coding, meaning))


def test_value_sets_carry_the_display_the_source_gives() -> None:
    wrong = []
    for (system, code), display, _mark, _source, meaning in TABLE_ROWS:
        kind, key = meaning.split(":", 1)
        if kind != "concept":
            continue
        shipped = {
            concept["display"]
            for include in (_valueset(key).get("compose") or {}).get("include", [])
            if include.get("system") == system
            for concept in include.get("concept", [])
            if concept["code"] == code
        }
        if shipped != {display}:
            wrong.append((key, code, display, sorted(shipped)))
    assert not wrong, wrong[:10]


def test_products_carry_the_display_the_source_gives() -> None:
    medications = json.loads((KNOWLEDGE_DIR / "medications.json").read_text(encoding="utf-8"))
    products = {product["rxnorm"]: product for product in medications["products"]}
    wrong = [
        (code, display)
        for (system, code), display, _mark, _source, meaning in TABLE_ROWS
        if system == RXNORM and code in products
        and (products[code]["display"] != display or meaning != f"drug:{products[code]['ingredient']}")
    ]  # fmt: skip
    assert not wrong, wrong[:10]


def test_table_marks_say_where_the_code_was_seen() -> None:
    for (_system, code), _display, mark, source, _meaning in TABLE_ROWS:
        # V: a standards artefact (a file in a repository at a commit, or a page); C: two independent sources.
        for part in source.split("; "):
            assert part.startswith("https://") or ("@" in part and ":" in part), (code, part)
        if mark == "C":
            assert ";" in source, f"{code}: a C mark needs two sources"


# Cervical and thoracic surgery, and add-on codes of any region: never evidence of prior lumbar surgery.
NOT_LUMBAR_SURGERY = [
    (CPT, "22551"), (CPT, "22600"), (CPT, "22610"), (CPT, "63001"), (CPT, "63015"), (CPT, "63020"), (CPT, "63045"),
    (CPT, "63046"), (CPT, "22614"), (CPT, "22632"), (CPT, "22585"), (CPT, "63035"), (CPT, "63048"),
    (ICD10CM, "Z98.1"), (ICD10CM, "Z981"),  # arthrodesis status: any joint, any spinal region
    (SNOMED, "202723000"), (SNOMED, "202724006"),  # cervical and thoracic post-laminectomy syndrome
    (SNOMED, "260648008"), (SNOMED, "283165009"),  # hemilaminectomy, decompression laminectomy: no region
]  # fmt: skip


@pytest.mark.parametrize("coding", NOT_LUMBAR_SURGERY)
def test_cervical_thoracic_and_unlocated_surgery_is_not_lumbar(coding: tuple[str, str]) -> None:
    assert "prior_lumbar_surgery" not in load_knowledge().concepts_of(*coding)


@pytest.mark.parametrize("code", ["22558", "22612", "22630", "22633", "63005", "63012", "63017", "63030", "63042",
                                  "63044", "63047", "62380", "22533"])  # fmt: skip
def test_lumbar_fusion_laminectomy_and_discectomy_codes_are_prior_lumbar_surgery(code: str) -> None:
    assert "prior_lumbar_surgery" in load_knowledge().concepts_of(CPT, code)


def _means(coding: tuple[str, str], meaning: str) -> bool:
    knowledge = load_knowledge()
    kind, value = meaning.split(":", 1)
    system, code = coding
    if kind == "concept":
        return value in knowledge.concepts_of(system, code)
    if kind == "procedure":
        return knowledge.procedure_key(system, code) == value
    info = knowledge.medication(system, code)
    return info is not None and info.ingredient == value


@pytest.mark.parametrize(("coding", "meaning"), [(coding, row[2]) for coding, row in VERIFIED_CODES.items()])
def test_each_verified_code_means_what_its_source_says(coding: tuple[str, str], meaning: str) -> None:
    assert _means(coding, meaning)


def test_each_code_of_the_table_means_what_its_source_says() -> None:
    # One test for the thousands of table rows (a parametrised test each would triple the suite's time).
    wrong = [(coding, meaning) for coding, _shown, _mark, _source, meaning in TABLE_ROWS if not _means(coding, meaning)]
    assert not wrong, wrong[:10]


@pytest.mark.parametrize("coding", NOT_SHIPPED)
def test_unverified_or_known_wrong_codes_are_not_shipped(coding: tuple[str, str]) -> None:
    knowledge = load_knowledge()
    system, code = coding
    assert coding not in _shipped_non_icd_codes()
    assert not knowledge.concepts_of(system, code)
    assert knowledge.procedure_key(system, code) is None
    if system != ATC:  # unverified ATC ingredient codes still classify through their class prefix
        assert knowledge.medication(system, code) is None


MRI_72148 = "Magnetic resonance (eg, proton) imaging, spinal canal and contents, lumbar; without contrast material"


def test_suggested_mri_codings_carry_the_official_displays() -> None:
    assert load_knowledge().mri_without_contrast_codings() == (
        (CPT, "72148", MRI_72148),
        (LOINC, "30679-5", "MR Lumbar spine WO contrast"),
    )


@pytest.mark.parametrize(
    ("code", "display"),
    [("30678-7", "MR Lumbar spine W contrast IV"), ("24967-2", "MR Lumbar spine WO and W contrast IV"),
     ("24968-0", "MR Lumbar spine"), ("30620-9", "CT Lumbar spine WO contrast"),
     ("24964-9", "CT Lumbar spine W contrast IV"), ("24965-6", "CT Lumbar spine W contrast IT"),
     ("24578-7", "SPECT Bones")],
)  # fmt: skip
def test_loinc_imaging_displays_match_the_loinc_names_in_clinical_md(code: str, display: str) -> None:
    assert load_knowledge().display(LOINC, code) == display
