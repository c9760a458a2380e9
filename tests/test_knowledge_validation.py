"""A bad or inconsistent knowledge file stops start-up with a message naming the file and the problem."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cds_service.errors import ConfigurationError
from cds_service.knowledge.loader import KNOWLEDGE_DIR, knowledge_problems, load_knowledge_from


@pytest.fixture
def knowledge_dir(tmp_path: Path) -> Path:
    """A private copy of the shipped knowledge files to break."""
    target = tmp_path / "knowledge"
    shutil.copytree(KNOWLEDGE_DIR, target, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return target


def _edit(directory: Path, relative: str, change: Callable[[Any], None]) -> None:
    path = directory / relative
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data), encoding="utf-8")


def _problems_after(directory: Path, relative: str, change: Callable[[Any], None]) -> list[str]:
    _edit(directory, relative, change)
    problems = knowledge_problems(directory)
    with pytest.raises(ConfigurationError) as raised:
        load_knowledge_from(directory)
    # The exception carries every problem that check_knowledge reports.
    for problem in problems:
        assert problem in str(raised.value)
    return problems


def test_the_copy_is_valid(knowledge_dir: Path) -> None:
    assert knowledge_problems(knowledge_dir) == []
    assert load_knowledge_from(knowledge_dir).procedure_key("http://www.ama-assn.org/go/cpt", "72148") == "MR_LSPINE_WO"


def test_unknown_procedure_key_in_the_rating_table(knowledge_dir: Path) -> None:
    def change(data: Any) -> None:
        data["ratings"]["PET_WHOLE_BODY"] = data["ratings"]["BONE_SCAN"]

    assert _problems_after(knowledge_dir, "acr_ratings.json", change) == [
        "acr_ratings.json: unknown procedure key 'PET_WHOLE_BODY'"
    ]


def test_unspecified_contrast_mri_must_not_be_rated(knowledge_dir: Path) -> None:
    def change(data: Any) -> None:
        data["ratings"]["MR_LSPINE"] = data["ratings"]["MR_LSPINE_WO"]

    problems = _problems_after(knowledge_dir, "acr_ratings.json", change)
    assert problems == [
        "acr_ratings.json: MR_LSPINE (contrast not specified) is not an ACR procedure and must not be rated"
    ]


def test_bad_acr_category_and_missing_variant(knowledge_dir: Path) -> None:
    def change(data: Any) -> None:
        data["ratings"]["XR_LSPINE"]["ratings"]["3"] = "maybe"
        del data["ratings"]["CT_LSPINE_W"]["ratings"]["7"]

    problems = _problems_after(knowledge_dir, "acr_ratings.json", change)
    assert "acr_ratings.json: XR_LSPINE: unknown ACR categories {'3': 'maybe'} (use UA, MBA, UNA)" in problems
    assert "acr_ratings.json: CT_LSPINE_W: ratings must cover variants 1 to 7 exactly" in problems


def test_summary_of_140_characters_or_more(knowledge_dir: Path) -> None:
    def change(data: Any) -> None:
        data["cards"]["pregnancy"]["summary"] = "x" * 130 + " {device}"

    problems = _problems_after(knowledge_dir, "cards.json", change)
    assert problems == ["cards.json: card 'pregnancy': summary can reach 171 characters (limit: under 140)"]


def test_inappropriate_as_a_verdict(knowledge_dir: Path) -> None:
    def change(data: Any) -> None:
        data["cards"]["duplicate_mri"]["detail"] = "A repeat MRI is inappropriate."

    problems = _problems_after(knowledge_dir, "cards.json", change)
    assert problems == [
        "cards.json: card 'duplicate_mri' detail: uses 'inappropriate' as a verdict; use the ACR category words"
    ]


def test_card_references_unknown_override_reason_and_placeholder(knowledge_dir: Path) -> None:
    def change(data: Any) -> None:
        data["cards"]["mr_implant"]["override_reasons"].append("patient-declined")
        data["cards"]["mr_implant"]["detail"] += " {patient_name}"

    problems = _problems_after(knowledge_dir, "cards.json", change)
    assert "cards.json: card 'mr_implant': unknown override reason 'patient-declined'" in problems
    assert "cards.json: card 'mr_implant' detail: undeclared placeholders ['patient_name']" in problems


def test_missing_card(knowledge_dir: Path) -> None:
    problems = _problems_after(knowledge_dir, "cards.json", lambda data: data["cards"].pop("data_missing"))
    assert problems == ["cards.json: card 'data_missing' is missing"]


def test_duplicate_code_mapped_to_two_procedure_keys(knowledge_dir: Path) -> None:
    def change(data: Any) -> None:
        data["procedures"]["CT_LSPINE_WO"]["codes"].append(
            {"system": "http://www.ama-assn.org/go/cpt", "code": "72148", "display": "x", "source": "test"}
        )

    assert _problems_after(knowledge_dir, "procedures.json", change) == [
        "procedures.json: 72148 is mapped to two procedure keys (MR_LSPINE_WO and CT_LSPINE_WO)"
    ]


def test_unknown_procedure_key_in_procedures(knowledge_dir: Path) -> None:
    def change(data: Any) -> None:
        data["procedures"]["MR_CSPINE_WO"] = data["procedures"].pop("BONE_SCAN")

    problems = _problems_after(knowledge_dir, "procedures.json", change)
    assert "procedures.json: unknown procedure key 'MR_CSPINE_WO'" in problems
    assert "procedures.json: procedure key 'BONE_SCAN' is missing" in problems


def test_wrong_icd_display(knowledge_dir: Path) -> None:
    def change(data: Any) -> None:
        data["compose"]["include"][1]["concept"][0]["display"] = "Cauda equina"
        # Found by code: the expansion lists the SNOMED CT descendants first.
        next(entry for entry in data["expansion"]["contains"] if entry["code"] == "G83.4")["display"] = "Cauda equina"

    problems = _problems_after(knowledge_dir, "valuesets/cauda_equina_syndrome.json", change)
    assert problems == [
        "valuesets/cauda_equina_syndrome.json: compose.include[1]: G83.4 display 'Cauda equina' differs "
        "from ICD-10-CM 'Cauda equina syndrome'"
    ]


def test_made_up_icd_code_and_bad_range(knowledge_dir: Path) -> None:
    def change(data: Any) -> None:
        data["compose"]["include"][1]["filter"][0]["value"] = "C96-C00"
        data["compose"]["include"].append(
            {
                "system": "http://hl7.org/fhir/sid/icd-10-cm",
                "concept": [{"code": "C99.9", "display": "Cancer", "extension": [{"url": "x", "valueString": "y"}]}],
            }
        )

    # The loader reads only the shipped snapshot: a filter or code it does not hold may be new or wrong,
    # and regenerating tells which (the generator rejects both: test_knowledge_icd10cm_snapshot.py).
    problems = _problems_after(knowledge_dir, "valuesets/malignancy.json", change)
    file = "valuesets/malignancy.json"
    regenerate = "regenerate it with `python -m cds_service.knowledge.icd10cm --write`"
    assert (
        f"{file}: compose.include[1]: ICD-10-CM filter 'C96-C00' is not in icd10cm_snapshot.json "
        f"(it may be neither an ICD-10-CM code nor a category range); {regenerate}"
    ) in problems
    assert (
        f"{file}: compose.include[6]: C99.9 is not in icd10cm_snapshot.json (it may not be an ICD-10-CM code); "
        f"{regenerate}"
    ) in problems


def test_icd_filter_missing_from_the_snapshot(knowledge_dir: Path) -> None:
    # A valid ICD-10-CM category added to a value set without regenerating the snapshot.
    def change(data: Any) -> None:
        data["compose"]["include"][1]["filter"].append({"property": "concept", "op": "is-a", "value": "C80"})

    problems = _problems_after(knowledge_dir, "valuesets/malignancy.json", change)
    assert problems == [
        "valuesets/malignancy.json: compose.include[1]: ICD-10-CM filter 'C80' is not in icd10cm_snapshot.json "
        "(it may be neither an ICD-10-CM code nor a category range); "
        "regenerate it with `python -m cds_service.knowledge.icd10cm --write`"
    ]


def test_expansion_must_match_compose(knowledge_dir: Path) -> None:
    def change(data: Any) -> None:
        data["expansion"]["contains"] = [entry for entry in data["expansion"]["contains"] if entry["code"] != "Z21"]

    problems = _problems_after(knowledge_dir, "valuesets/hiv.json", change)
    assert problems == [
        "valuesets/hiv.json: expansion.contains must list exactly the compose concepts with the same display; "
        "not in expansion: Z21"
    ]


def test_concept_without_source(knowledge_dir: Path) -> None:
    def change(data: Any) -> None:
        del data["compose"]["include"][0]["concept"][0]["extension"]

    problems = _problems_after(knowledge_dir, "valuesets/sciatica.json", change)
    assert problems == ["valuesets/sciatica.json: compose.include[0]: 23056005 does not cite its source"]


def test_not_a_fhir_valueset(knowledge_dir: Path) -> None:
    def change(data: Any) -> None:
        del data["expansion"]["timestamp"]

    problems = _problems_after(knowledge_dir, "valuesets/fever.json", change)
    assert len(problems) == 1
    assert problems[0].startswith("valuesets/fever.json: not a valid FHIR R4 ValueSet:")
    assert "expansion.timestamp" in problems[0]


def test_inactive_value_set(knowledge_dir: Path) -> None:
    problems = _problems_after(knowledge_dir, "valuesets/fever.json", lambda data: data.update(status="draft"))
    assert problems == ["valuesets/fever.json: status must be 'active'"]


def test_wrong_url_and_version(knowledge_dir: Path) -> None:
    def change(data: Any) -> None:
        data["url"] = "http://example.org/ValueSet/fever"
        data["version"] = "2025.1.0"

    problems = _problems_after(knowledge_dir, "valuesets/fever.json", change)
    assert problems == [
        "valuesets/fever.json: url is 'http://example.org/ValueSet/fever', expected "
        "'http://lumbar-imaging-cds.example.org/fhir/ValueSet/fever'",
        "valuesets/fever.json: version is '2025.1.0', expected '2026.11.0'",
    ]


def test_missing_and_unknown_value_set_files(knowledge_dir: Path) -> None:
    (knowledge_dir / "valuesets" / "hiv.json").rename(knowledge_dir / "valuesets" / "aids.json")
    problems = knowledge_problems(knowledge_dir)
    assert problems == [
        "valuesets/aids.json: concept 'aids' has no role (add it to concepts.json)",
        "concepts.json: concept 'hiv' has no value set (valuesets/hiv.json is missing)",
    ]


def test_invalid_json_names_the_line(knowledge_dir: Path) -> None:
    (knowledge_dir / "medications.json").write_text('{"version": "2026.11.0",\n  "ingredients": [}', encoding="utf-8")
    problems = knowledge_problems(knowledge_dir)
    assert len(problems) == 1
    assert problems[0].startswith("medications.json: invalid JSON at line 2")


def test_medication_code_mapped_to_two_ingredients(knowledge_dir: Path) -> None:
    def change(data: Any) -> None:
        data["products"].append(dict(data["products"][1], ingredient="celecoxib"))

    problems = _problems_after(knowledge_dir, "medications.json", change)
    assert "medications.json: product 197805: 197805 is mapped twice (ibuprofen and celecoxib)" in problems


def test_product_systemic_flag_must_agree_with_its_dose_form(knowledge_dir: Path) -> None:
    def change(data: Any) -> None:
        cream = next(product for product in data["products"] if product["rxnorm"] == "106258")
        cream["systemic"] = True

    problems = _problems_after(knowledge_dir, "medications.json", change)
    assert problems == ["medications.json: product 106258: systemic True contradicts its dose form 'Topical Cream'"]


def test_ingredient_atc_code_must_be_in_its_class_group(knowledge_dir: Path) -> None:
    def change(data: Any) -> None:
        tacrolimus = next(entry for entry in data["ingredients"] if entry["name"] == "tacrolimus")
        tacrolimus["atc"] = [{"code": "D11AH01", "source": "topical tacrolimus is a dermatological"}]

    problems = _problems_after(knowledge_dir, "medications.json", change)
    assert problems == [
        "medications.json: ingredient 'tacrolimus': ATC D11AH01 is outside the immunosuppressant ATC group (L04)"
    ]


def test_text_only_concept_needs_keywords(knowledge_dir: Path) -> None:
    def change(data: Any) -> None:
        del data["concepts"]["physical_therapy"]

    problems = _problems_after(knowledge_dir, "keywords.json", change)
    assert problems == [
        "keywords.json: physical_therapy: the value set has no code, so it needs keywords to be found at all"
    ]


def test_unknown_concept_key_in_keywords(knowledge_dir: Path) -> None:
    def change(data: Any) -> None:
        data["concepts"]["red_flag"] = {"keywords": ["red flag"], "source": "test"}

    assert _problems_after(knowledge_dir, "keywords.json", change) == [
        "keywords.json: unknown concept key 'red_flag' (not in concepts.json)"
    ]


def test_every_problem_is_reported_at_once(knowledge_dir: Path) -> None:
    _edit(knowledge_dir, "acr_ratings.json", lambda data: data.update(version="1"))
    _edit(knowledge_dir, "cards.json", lambda data: data.update(version="1"))
    problems = knowledge_problems(knowledge_dir)
    assert problems == [
        "acr_ratings.json: version is '1', expected '2026.11.0'",
        "cards.json: version is '1', expected '2026.11.0'",
    ]


# ---------------------------------------------------------------------------------------- the concept role table
def test_a_role_that_names_an_unknown_concept_or_breaks_the_schema_is_refused(knowledge_dir: Path) -> None:
    def change(data: Any) -> None:
        data["concepts"]["fever"]["requires_any"] = ["iv_drug_use", "sepsis"]
        data["concepts"]["hiv"]["role"] = "worry"
        data["drug_classes"]["nsaid"]["role"] = "red_flag"

    problems = _problems_after(knowledge_dir, "concepts.json", change)
    assert any(p.startswith("concepts.json: concepts/hiv/role: 'worry' is not one of") for p in problems)
    assert any(p.startswith("concepts.json: drug_classes/nsaid:") for p in problems)


def test_requires_any_and_drug_class_concepts_must_be_known(knowledge_dir: Path) -> None:
    def change(data: Any) -> None:
        data["concepts"]["fever"]["requires_any"] = ["iv_drug_use", "sepsis"]

    assert _problems_after(knowledge_dir, "concepts.json", change) == [
        "concepts.json: concept 'fever': requires_any names unknown concept 'sepsis'"
    ]


def test_a_concept_without_a_name_or_a_safety_concern_without_its_card_is_refused(knowledge_dir: Path) -> None:
    def change(data: Any) -> None:
        del data["terms"]["concepts"]["hiv"]
        del data["cards"]["pregnancy"]

    problems = _problems_after(knowledge_dir, "cards.json", change)
    assert "cards.json: card 'pregnancy' is missing (the safety concern of concept 'pregnancy')" in problems
    assert "cards.json: terms 'concepts': concept 'hiv' has no name" in problems


def test_adding_a_concept_with_an_existing_role_is_a_data_only_change(knowledge_dir: Path) -> None:
    """A new red flag takes effect from data alone: a value set, a role row and a name; no code."""
    from cds_service.clinical import ClinicalEngine
    from tests.clinical_builders import NOW, SNOMED, condition, draft_service_request, patient, record, request

    chart = record(
        patient(birth_date="1975-02-01"),
        condition(SNOMED, "23056005", display="Sciatica", onset="2026-10-30"),
        condition(SNOMED, "999000001", display="Test red flag for the data-only change", onset="2026-11-01"),
    )
    ct = request(draft_service_request("72131"))

    def topics(directory: Path) -> list[str]:
        engine = ClinicalEngine(load_knowledge_from(directory), load_knowledge_from(directory).thresholds)
        cards = engine.evaluate(ct, chart, now=NOW).response.cards
        return [card.source.topic.code for card in cards if card.source.topic is not None]

    assert topics(knowledge_dir) == ["conservative-care-first"]  # 3 weeks of sciatica: no imaging yet
    valueset = json.loads((knowledge_dir / "valuesets" / "hiv.json").read_text(encoding="utf-8"))
    valueset.update(id="test-red-flag", url=valueset["url"].replace("hiv", "test_red_flag"), name="TestRedFlag")
    concept = {
        "code": "999000001",
        "display": "Test red flag for the data-only change",
        "extension": [{"url": valueset["compose"]["include"][0]["concept"][0]["extension"][0]["url"],
                       "valueString": "test"}],
    }  # fmt: skip
    valueset["compose"] = {"include": [{"system": SNOMED, "concept": [concept]}]}
    valueset["expansion"]["contains"] = [{"system": SNOMED, "code": "999000001", "display": concept["display"]}]
    (knowledge_dir / "valuesets" / "test_red_flag.json").write_text(json.dumps(valueset), encoding="utf-8")
    _edit(
        knowledge_dir,
        "concepts.json",
        lambda data: data["concepts"].update(
            test_red_flag={"role": "red_flag", "found_in": ["Condition"], "timing": "active", "variants": [7]}
        ),
    )
    _edit(knowledge_dir, "cards.json", lambda data: data["terms"]["concepts"].update(test_red_flag="Test red flag"))
    assert knowledge_problems(knowledge_dir) == []
    assert topics(knowledge_dir) == ["cancer-infection-immunosuppression"]


def test_role_lookbacks_name_thresholds() -> None:
    import dataclasses

    from cds_service.knowledge import Thresholds

    schema = json.loads((KNOWLEDGE_DIR / "schemas" / "concepts.schema.json").read_text(encoding="utf-8"))
    names = schema["$defs"]["concept"]["properties"]["lookback"]["enum"]
    assert set(names) <= {field.name for field in dataclasses.fields(Thresholds)}
