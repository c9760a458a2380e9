"""Card and suggested-order quality (docs/clinical-rules.md#cards): reasons listed once, evidence that reads well
and says what did not count, one wording per action, codes and words from the knowledge base only."""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from cds_service.clinical import ClinicalEngine
from cds_service.clinical import cards as cards_module
from cds_service.knowledge import load_knowledge, loader
from cds_service.knowledge.loader import KNOWLEDGE_DIR, knowledge_problems, load_knowledge_from
from cds_service.protocol.response import response_to_json
from tests.clinical_builders import (
    CPT,
    ICD,
    LOINC,
    NOW,
    RXNORM,
    SNOMED,
    condition,
    draft_medication,
    draft_service_request,
    lbp,
    med_statement,
    naproxen_trial,
    record,
    request,
    sciatica,
)

ACR_CATEGORY_SYSTEM = "http://lumbar-imaging-cds.example.org/fhir/CodeSystem/acr-appropriateness-category"
NSAID_ORDER = ("MedicationRequest/mr-draft",)


@pytest.fixture(scope="module")
def engine() -> ClinicalEngine:
    return ClinicalEngine.from_config({"thresholds": {}})


def respond(engine: ClinicalEngine, hook_request: Any, patient_record: Any) -> dict[str, Any]:
    return response_to_json(engine.evaluate(hook_request, patient_record, now=NOW).response)


def sciatica_with_icd(onset: str = "2026-09-01", icd: str = "M54.41", **kwargs: Any) -> dict[str, Any]:
    """Sciatica coded in SNOMED CT and ICD-10-CM, as EHRs send it."""
    resource = sciatica(onset=onset, **kwargs)
    resource["code"]["coding"].append({"system": ICD, "code": icd, "display": "Sciatica, right side"})
    return resource


def suggestions(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for card in body["cards"] for s in card.get("suggestions", [])]


def only_card(body: dict[str, Any]) -> dict[str, Any]:
    cards: list[dict[str, Any]] = body["cards"]
    (card,) = cards
    return card


def reason_concepts(resource: dict[str, Any]) -> list[frozenset[tuple[str, str]]]:
    return [frozenset((c["system"], c["code"].replace(".", "")) for c in r["coding"]) for r in resource["reasonCode"]]


# ------------------------------------------------------------------------------------- 1. reasonCode once per concept
def test_converted_order_lists_a_reason_once_when_the_draft_and_a_condition_share_its_codes(
    engine: ClinicalEngine,
) -> None:
    # The draft's own reason and the Condition carry the same two codes, in the other order.
    draft_reason = {
        "coding": [
            {"system": ICD, "code": "M54.41", "display": "Sciatica, right side"},
            {"system": SNOMED, "code": "23056005", "display": "Sciatica"},
        ],
        "text": "Sciatica",
    }
    draft = draft_service_request("72131", reason=draft_reason)
    body = respond(engine, request(draft), record(sciatica_with_icd(), naproxen_trial()))
    (suggestion,) = suggestions(body)
    resource = suggestion["actions"][0]["resource"]
    assert suggestion["actions"][0]["type"] == "update"
    concepts = reason_concepts(resource)
    assert len(concepts) == len(set(concepts)) == 1
    assert resource["reasonCode"][0] == draft_reason  # the first entry (the draft's own) is kept as it was


def test_reason_codes_compare_by_normalised_code(engine: ClinicalEngine) -> None:
    # ICD-10-CM without the dot and a system URI in another spelling are the same concept.
    draft_reason = {
        "coding": [
            {"system": "urn:oid:2.16.840.1.113883.6.90", "code": "M5441"},
            {"system": SNOMED, "code": "23056005"},
        ]
    }
    draft = draft_service_request("72131", reason=draft_reason)
    body = respond(engine, request(draft), record(sciatica_with_icd(), naproxen_trial()))
    resource = suggestions(body)[0]["actions"][0]["resource"]
    assert resource["reasonCode"] == [draft_reason]


def test_created_order_lists_two_conditions_with_the_same_codes_once(engine: ClinicalEngine) -> None:
    first, second = sciatica_with_icd(onset="2026-09-01"), sciatica_with_icd(onset="2026-09-03")
    hook_request = request(draft_medication("198014"), selections=NSAID_ORDER)
    body = respond(engine, hook_request, record(first, second, naproxen_trial()))
    resource = only_card(body)["suggestions"][0]["actions"][0]["resource"]
    assert len(resource["reasonCode"]) == 1
    # Both conditions are still referenced: only the duplicated coding is dropped, nothing is merged.
    assert resource["reasonReference"] == [
        {"reference": f"Condition/{first['id']}"},
        {"reference": f"Condition/{second['id']}"},
    ]


def test_reasons_with_different_codes_are_all_kept(engine: ClinicalEngine) -> None:
    other = {"coding": [{"system": ICD, "code": "M51.16"}], "text": "Disc disorder with radiculopathy"}
    body = respond(
        engine, request(draft_service_request("72131", reason=other)), record(sciatica_with_icd(), naproxen_trial())
    )
    resource = suggestions(body)[0]["actions"][0]["resource"]
    assert resource["reasonCode"][0] == other and len(resource["reasonCode"]) == 2


# --------------------------------------------------------------------------------------- 2. drug named once
def test_evidence_does_not_repeat_the_drug_name(engine: ClinicalEngine) -> None:
    course = med_statement("198014", start="2026-09-10", end="2026-10-10", dose="Naproxen 500 mg twice daily")
    body = respond(engine, request(draft_service_request("72131")), record(sciatica(), course))
    card = only_card(body)
    assert "- Naproxen 500 mg twice daily: 2026-09-10 to 2026-10-10" in card["detail"]
    assert "naproxen naproxen" not in card["detail"].lower()
    note = card["suggestions"][0]["actions"][0]["resource"]["note"][0]["text"]
    assert "naproxen naproxen" not in note.lower() and "Naproxen 500 mg twice daily" in note


def test_evidence_names_the_drug_when_the_dose_text_does_not(engine: ClinicalEngine) -> None:
    body = respond(engine, request(draft_service_request("72131")), record(sciatica(), naproxen_trial()))
    assert "- naproxen 500 mg twice daily: 2026-09-10 to 2026-10-10" in only_card(body)["detail"]


# ---------------------------------------------------------------------------- 3. medications that did not count
def test_topical_nsaid_is_named_as_not_counted(engine: ClinicalEngine) -> None:
    gel = med_statement(None, text="Diclofenac sodium 1% topical gel", start="2026-09-15", end=None)
    body = respond(engine, request(draft_service_request("72148")), record(sciatica(), gel))
    card = only_card(body)
    assert card["indicator"] == "warning"  # still no adequate trial
    assert "- Diclofenac sodium 1% topical gel (2026-09-15): not counted: topical" in card["detail"].splitlines()


def test_low_dose_aspirin_is_named_as_not_counted(engine: ClinicalEngine) -> None:
    aspirin = med_statement("1191", text="Aspirin 81 mg oral tablet", start="2019-03-22", end=None, status="active")
    body = respond(engine, request(draft_service_request("72131")), record(sciatica(), aspirin))
    detail = only_card(body)["detail"]
    assert "- Aspirin 81 mg oral tablet (2019-03-22): not counted: low-dose antiplatelet aspirin" in detail.splitlines()


@pytest.mark.parametrize(
    "medication",
    [
        {"text": "Fludrocortisone 0.1 mg oral tablet"},
        {
            "coding": [{"system": "http://www.whocc.no/atc", "code": "H02AA02", "display": "fludrocortisone"}],
            "text": "Fludrocortisone 0.1 mg oral tablet",
        },
    ],
)
def test_fludrocortisone_is_named_as_not_counted(engine: ClinicalEngine, medication: dict[str, Any]) -> None:
    statement = med_statement(None, start="2026-09-12", end=None, status="active")
    statement["medicationCodeableConcept"] = medication
    body = respond(engine, request(draft_service_request("72148")), record(sciatica(), statement))
    card = only_card(body)
    assert card["indicator"] == "warning"  # a mineralocorticoid is no steroid trial: still no documented therapy
    expected = "- Fludrocortisone 0.1 mg oral tablet (2026-09-12): not counted: a mineralocorticoid, not a systemic"
    assert any(line.startswith(expected) for line in card["detail"].splitlines()), card["detail"]


def test_the_knowledge_base_says_why_fludrocortisone_is_excluded() -> None:
    knowledge = load_knowledge()
    assert knowledge.medication_not_counted([("http://www.whocc.no/atc", "H02AA02")], None) == "mineralocorticoid"
    assert knowledge.medication_not_counted([], "Florinef 0.1 mg") == "mineralocorticoid"
    assert knowledge.medication_not_counted([(RXNORM, "198014")], "Naproxen 500 mg") is None
    assert knowledge.medication_not_counted([], "Gabapentin 300 mg") is None
    assert knowledge.medication("http://www.whocc.no/atc", "H02AA02") is None  # still not a therapy drug


def test_not_counted_items_sit_with_the_therapy_but_stay_out_of_the_order_note(engine: ClinicalEngine) -> None:
    gel = med_statement(None, text="Diclofenac 1% gel", start="2026-09-15", end=None)
    body = respond(engine, request(draft_service_request("72131")), record(sciatica(), naproxen_trial(), gel))
    card = only_card(body)
    section = card["detail"].split("**Conservative therapy on record**", 1)[1]
    assert "Diclofenac 1% gel (2026-09-15): not counted: topical" in section
    notes = " ".join(n["text"] for n in card["suggestions"][0]["actions"][0]["resource"]["note"])
    assert "not counted" not in notes and "naproxen" in notes


def test_a_counted_nsaid_is_not_listed_as_not_counted(engine: ClinicalEngine) -> None:
    body = respond(engine, request(draft_service_request("72131")), record(sciatica(), naproxen_trial()))
    assert "not counted" not in only_card(body)["detail"]


# --------------------------------------------------------------------------- 4. every contributing condition
def test_every_back_pain_condition_is_listed_with_its_onset(engine: ClinicalEngine) -> None:
    radiculopathy = condition(ICD, "M5416", onset="2026-09-21", display="Radiculopathy, lumbar region")
    body = respond(
        engine,
        request(draft_service_request("72100")),
        record(lbp(onset="2026-09-18"), radiculopathy, naproxen_trial(start="2026-09-26", end="2026-10-24")),
    )
    lines = only_card(body)["detail"].splitlines()
    assert "- Low back pain since 2026-09-18 (9 weeks)" in lines
    assert "- Radiculopathy, lumbar region since 2026-09-21" in lines


def test_a_condition_matching_several_episode_concepts_is_listed_once(engine: ClinicalEngine) -> None:
    # M51.16 is both a disc disorder and a radiculopathy; the same condition twice on record reads as one line.
    disc = condition(ICD, "M51.16", onset="2026-09-05", display="Disc disorder with radiculopathy, lumbar")
    duplicate = condition(ICD, "M51.16", onset="2026-09-05", display="Disc disorder with radiculopathy, lumbar")
    body = respond(
        engine,
        request(draft_service_request("72131")),
        record(lbp(onset="2026-09-01"), disc, duplicate, naproxen_trial()),
    )
    lines = only_card(body)["detail"].splitlines()
    assert lines.count("- Disc disorder with radiculopathy, lumbar since 2026-09-05") == 1
    evidence = [line for line in lines if line.startswith("- ")]
    assert len(evidence) == len(set(evidence))


# --------------------------------------------------------------------------------------- 5. suggestion labels
LABEL_CASES = {
    "V3 convert": (request(draft_service_request("72131")), record(sciatica(), naproxen_trial())),
    "V3 create": (request(draft_medication("198014"), selections=NSAID_ORDER), record(sciatica(), naproxen_trial())),
    "V4 convert urgent": (request(draft_service_request("72131")), record(lbp(), condition(ICD, "G83.4"))),
    "V4 keep urgent": (request(draft_service_request("72148")), record(lbp(), condition(ICD, "G83.4"))),
    "V4 create urgent": (
        request(draft_medication("198014"), selections=NSAID_ORDER),
        record(lbp(), condition(ICD, "G83.4")),
    ),
    "V7 convert": (request(draft_service_request("72100")), record(lbp(), condition(ICD, "C61"))),
    "V6 convert": (request(draft_service_request("72133")), record(lbp(), condition(ICD, "M81.0"))),
    "V1 remove": (request(draft_service_request("72133")), record(lbp(onset="2026-11-10"))),
}


@pytest.mark.parametrize("name", list(LABEL_CASES))
def test_a_suggestion_label_says_what_its_action_does(engine: ClinicalEngine, name: str) -> None:
    names = load_knowledge().card_texts["terms"]["procedures"]
    body = respond(engine, *LABEL_CASES[name])
    found = suggestions(body)
    assert found
    for suggestion in found:
        (action,) = suggestion["actions"]
        label = suggestion["label"]
        if action["type"] == "update":
            assert label.startswith("Change to "), label
            assert label.removeprefix("Change to ").removeprefix("urgent ") in names.values(), label
        elif action["type"] == "create":
            assert label.startswith("Order "), label
            assert label.removeprefix("Order ").removeprefix("urgent ") in names.values(), label
        else:
            assert label.startswith("Remove ") and label.endswith(" order"), label
            assert label.removeprefix("Remove ").removesuffix(" order") in names.values(), label


def test_labels_name_the_procedure_and_the_urgency(engine: ClinicalEngine) -> None:
    labels = {name: [s["label"] for s in suggestions(respond(engine, *case))] for name, case in LABEL_CASES.items()}
    assert labels["V3 convert"] == ["Change to MRI lumbar spine without contrast"]
    assert labels["V3 create"] == ["Order MRI lumbar spine without contrast"]
    assert labels["V4 convert urgent"] == ["Change to urgent MRI lumbar spine without contrast"]
    assert labels["V4 create urgent"] == ["Order urgent MRI lumbar spine without contrast"]
    assert labels["V7 convert"][0] == "Change to MRI lumbar spine without and with contrast"
    assert labels["V1 remove"] == ["Remove CT lumbar spine without and with contrast order"]


# ------------------------------------------------------------------------------- 6. the ACR category code system
def test_acr_category_has_its_own_code_system(engine: ClinicalEngine) -> None:
    body = respond(engine, request(draft_service_request("72131")), record(sciatica(), naproxen_trial()))
    for action in [*body["systemActions"], *(a for s in suggestions(body) for a in s["actions"])]:
        for extension in action["resource"]["extension"]:
            if extension["url"] != cards_module.PAMA_RATING_URL:
                continue
            translation = extension["valueCodeableConcept"]["coding"][1]
            assert translation["system"] == ACR_CATEGORY_SYSTEM
            assert (translation["code"], translation["display"]) in {
                ("usually-appropriate", "Usually appropriate"),
                ("may-be-appropriate", "May be appropriate"),
                ("usually-not-appropriate", "Usually not appropriate"),
            }
    rating = body["systemActions"][0]["resource"]["extension"][0]["valueCodeableConcept"]["coding"]
    assert rating[1]["code"] == "may-be-appropriate"  # CT after failed therapy (ACR variant 3)


def test_acr_category_coding_is_knowledge_data() -> None:
    coding = load_knowledge().card_texts["acr_category_coding"]
    assert coding["system"] == ACR_CATEGORY_SYSTEM
    assert set(coding["concepts"]) == {"UA", "MBA", "UNA"}
    assert ACR_CATEGORY_SYSTEM not in Path(cards_module.__file__).read_text(encoding="utf-8")


# ------------------------------------------------------------------------------- 7. no unverified category code
def test_created_order_category_is_text_only(engine: ClinicalEngine) -> None:
    hook_request = request(draft_medication("198014"), selections=NSAID_ORDER)
    body = respond(engine, hook_request, record(sciatica(), naproxen_trial()))
    resource = only_card(body)["suggestions"][0]["actions"][0]["resource"]
    assert resource["category"] == [{"text": "Imaging"}]
    assert "363679005" not in json.dumps(body)


# -------------------------------------------------------------------------- 8. procedure codes from knowledge
def test_suggested_orders_use_the_knowledge_base_codes() -> None:
    knowledge = load_knowledge()
    assert not hasattr(cards_module, "ORDERABLE_CODINGS")
    codings = cards_module.orderable_codings(knowledge)
    assert codings["MR_LSPINE_WO"] == knowledge.mri_without_contrast_codings()
    for key in cards_module.SUGGESTED_PROCEDURE_KEYS:
        for system, code, display in codings[key]:
            assert knowledge.procedure_key(system, code) == key
            assert display == knowledge.display(system, code)
        systems = [system for system, _code, _display in codings[key]]
        assert len(systems) == len(set(systems)) and set(systems) <= {CPT, LOINC}


def test_only_mri_orders_carry_the_mri_protocol(engine: ClinicalEngine) -> None:
    body = respond(engine, *LABEL_CASES["V6 convert"])  # radiographs, MRI and CT suggestions
    protocol = f"Protocol: {load_knowledge().mri_protocol}"
    for suggestion in suggestions(body):
        resource = suggestion["actions"][0]["resource"]
        notes = [note["text"] for note in resource.get("note", [])]
        is_mri = resource["code"]["coding"][0]["code"] in ("72148", "72158")
        assert (protocol in notes) is is_mri, suggestion["label"]


# ---------------------------------------------------------------------------------- 9. wording in the knowledge
def test_clinical_terms_live_in_the_knowledge_base() -> None:
    assert not resources.files("cds_service.clinical").joinpath("terms.json").is_file()
    terms = load_knowledge().card_texts["terms"]
    assert set(loader.TERM_SECTIONS) <= set(terms)


def _knowledge_copy(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    directory = tmp_path / "knowledge"
    shutil.copytree(KNOWLEDGE_DIR, directory, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return directory, json.loads((directory / "cards.json").read_text(encoding="utf-8"))


def test_the_loader_checks_the_terms(tmp_path: Path) -> None:
    directory, data = _knowledge_copy(tmp_path)
    del data["terms"]["suggestion_labels"]
    data["terms"]["evidence"]["course"] = "{drug}: {bogus}"
    data["terms"]["ratings"]["not-appropriate"] = "Inappropriate"
    data["acr_category_coding"]["concepts"]["MBA"] = {"code": "may-be-appropriate"}
    (directory / "cards.json").write_text(json.dumps(data), encoding="utf-8")
    problems = "\n".join(knowledge_problems(directory))
    assert "terms: 'suggestion_labels' is missing" in problems
    assert "terms 'evidence' 'course': undeclared placeholders ['bogus']" in problems
    assert "terms 'ratings' 'not-appropriate': uses 'inappropriate'" in problems
    assert "acr_category_coding: category 'MBA' needs a code and a display" in problems


def test_card_words_come_from_the_knowledge_files(tmp_path: Path) -> None:
    directory, data = _knowledge_copy(tmp_path)
    data["terms"]["suggestion_labels"]["delete"] = "Cancel the {procedure} order"
    data["terms"]["not_counted"]["non_systemic"] = "applied to the skin"
    (directory / "cards.json").write_text(json.dumps(data), encoding="utf-8")
    engine = ClinicalEngine.from_config({}, knowledge=load_knowledge_from(directory))
    gel = med_statement(None, text="Diclofenac 1% gel", start="2026-09-15", end=None)
    body = respond(engine, request(draft_service_request("72148")), record(sciatica(), gel))
    card = only_card(body)
    assert card["suggestions"][0]["label"] == "Cancel the MRI lumbar spine without contrast order"
    assert "not counted: applied to the skin" in card["detail"]
