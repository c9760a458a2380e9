"""Real-world corpus: public Synthea patient records nobody on the project wrote, run through the service.

``fixtures/real-world/synthea/corpus.jsonl.gz`` holds the records (source, selection and stripping in SOURCE.md);
``expected_categories.json`` says which clinical categories each record holds, derived from the records' own words
by ``fixtures/real-world/expected_categories.py`` without the service's knowledge base, then reviewed by hand.

Every patient gets one synthetic "Low back pain" Condition (SNOMED CT 279039007, onset 8 weeks before the record's
fixed ``now``) and an order-select request for CT lumbar spine without contrast (CPT 72131) with the whole record as
prefetch. The tests assert, per category, that the facts the service extracts recognise exactly the patients that
hold it (the table in the failure message is the figure to quote), and the safety properties: every request is
answered and the response is valid CDS Hooks; a patient with cancer, cancer therapy, an immunosuppressant, a
transplant or HIV on record never gets a "remove the order" suggestion or a not-appropriate rating.

``recognised_categories`` is the only place that knows how the service's facts map onto the categories.
"""

from __future__ import annotations

import gzip
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
from support import empty_members, load_script

from cds_service.clinical import ClinicalEngine
from cds_service.clinical.evidence import Evidence
from cds_service.data_source import FhirDataSource
from cds_service.errors import CdsError
from cds_service.registry import ServiceDefinition, load_registry
from cds_service.service import HookServices
from cds_service.settings import Settings

REPO = Path(__file__).resolve().parent.parent
CORPUS_DIR = REPO / "fixtures" / "real-world" / "synthea"
CORPUS = CORPUS_DIR / "corpus.jsonl.gz"
EXPECTED = CORPUS_DIR / "expected_categories.json"
GROUND_TRUTH_SCRIPT = REPO / "fixtures" / "real-world" / "expected_categories.py"
RESPONSE_SCHEMA = REPO / "cds_service" / "schemas" / "response.schema.json"

SERVICE_ID = "lumbar-imaging-order-select"
PAMA_RATING = "http://fhir.org/argonaut/Extension/pama-rating"
PAMA_RATING_SYSTEM = "http://fhir.org/argonaut/CodeSystem/pama-rating"
# Red flags that make removing an imaging order unsafe whatever else the record says (ACR variant 7).
NEVER_REMOVE = frozenset({"malignancy", "cancer_therapy", "immunosuppressant", "transplant", "hiv"})
SYNTHETIC_BASE = "https://synthea.example.org/fhir/R4"
MEDICATION_TYPES = ("MedicationRequest/", "MedicationStatement/")


# ------------------------------------------------------------------------------------------------ the adapter
# Red-flag concepts -> corpus categories, for a finding from the problem list or procedures, and from a drug.
CONDITION_CATEGORY = {
    "malignancy": "malignancy",
    "transplant": "transplant",
    "hiv": "hiv",
    "osteoporosis": "osteoporosis",
    "vertebral_fracture": "vertebral_or_pathological_fracture",
    "long_term_steroids": "long_term_systemic_steroid",
    "prior_lumbar_surgery": "prior_lumbar_spine_surgery",
}
MEDICATION_CATEGORY = {
    "malignancy": "cancer_therapy",
    "immunosuppression": "immunosuppressant",
    "long_term_steroids": "long_term_systemic_steroid",
}

def recognised_categories(evidence: Evidence) -> set[str]:
    """The corpus categories (expected_categories.json) that the service's judged evidence recognises.

    The one mapping from the service's fact model to the ground truth's categories: adapt it when the facts change.
    """
    found: set[str] = set()
    for finding in evidence.red_flags:
        from_medication = finding.reference.startswith(MEDICATION_TYPES)
        category = (MEDICATION_CATEGORY if from_medication else CONDITION_CATEGORY).get(finding.concept)
        if category is not None:
            found.add(category)
        if finding.concept == "osteoporosis" and "fracture" in finding.label.lower():
            # The service files osteoporotic fractures ("Pathological fracture due to osteoporosis") under
            # osteoporosis: both are fracture risk (ACR variant 6). The category is read from the finding's words.
            found.add("vertebral_or_pathological_fracture")
    if evidence.motor_deficits:
        found.add("motor_deficit")
    for course in evidence.courses:
        if course.drug_class == "nsaid":
            found.add("nsaid_course")
        elif course.drug_class == "systemic_corticosteroid":
            found.add("systemic_steroid_course")
            if course.kind == "long_term":
                found.add("long_term_systemic_steroid")
    if evidence.pregnancy:
        found.add("pregnancy")
    if evidence.implants:
        found.add("mr_implant")
    if any(f.concept in ("kidney_failure", "dialysis") for f in evidence.contrast_concerns):
        found.add("kidney_failure_or_dialysis")
    return found


# ------------------------------------------------------------------------------------------------ loading
def _load_script(path: Path) -> ModuleType:
    return load_script(path, "corpus_expected_categories")


@cache
def _corpus() -> tuple[dict[str, Any], ...]:
    with gzip.open(CORPUS, "rt", encoding="utf-8") as handle:
        return tuple(json.loads(line) for line in handle if line.strip())


@cache
def _expected() -> dict[str, Any]:
    expected: dict[str, Any] = json.loads(EXPECTED.read_text(encoding="utf-8"))
    return expected


def _now(record: Mapping[str, Any]) -> datetime:
    return datetime.fromisoformat(str(record["now"]).replace("Z", "+00:00"))


# ------------------------------------------------------------------------------------------------ the request
def _resource_type_of_key(definition: ServiceDefinition) -> dict[str, str]:
    """Resource type -> prefetch key, from the service definition's templates ("Condition?patient=...")."""
    return {template.split("?")[0].split("/")[0]: key for key, template in definition.prefetch.items()}


def _low_back_pain(patient_id: str, onset: datetime) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": "corpus-low-back-pain",
        "clinicalStatus": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]
        },
        "verificationStatus": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]
        },
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-category",
                        "code": "encounter-diagnosis",
                        "display": "Encounter Diagnosis",
                    }
                ]
            }
        ],
        "code": {
            "coding": [{"system": "http://snomed.info/sct", "code": "279039007", "display": "Low back pain"}],
            "text": "Low back pain",
        },
        "subject": {"reference": f"Patient/{patient_id}"},
        "onsetDateTime": onset.date().isoformat(),
        "recordedDate": onset.date().isoformat(),
    }


def _ct_lumbar_order(patient_id: str, now: datetime) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "id": "corpus-ct-lumbar",
        "status": "draft",
        "intent": "order",
        "priority": "routine",
        "code": {
            "coding": [
                {
                    "system": "http://www.ama-assn.org/go/cpt",
                    "code": "72131",
                    "display": "Computed tomography, lumbar spine; without contrast material",
                }
            ],
            "text": "CT lumbar spine without contrast",
        },
        "subject": {"reference": f"Patient/{patient_id}"},
        "authoredOn": now.isoformat().replace("+00:00", "Z"),
        "reasonCode": [
            {
                "coding": [{"system": "http://snomed.info/sct", "code": "279039007", "display": "Low back pain"}],
                "text": "Low back pain",
            }
        ],
    }


def build_request(record: Mapping[str, Any], definition: ServiceDefinition) -> dict[str, Any]:
    """An order-select request for CT lumbar spine without contrast, with the record (plus low back pain) prefetched."""
    now = _now(record)
    resources = list(record["resources"])
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    patient_id = str(patient["id"])
    resources.append(_low_back_pain(patient_id, now - timedelta(weeks=8)))
    key_of_type = _resource_type_of_key(definition)
    by_key: dict[str, list[dict[str, Any]]] = {key: [] for key in definition.prefetch}
    for resource in resources:
        key = key_of_type.get(resource["resourceType"])
        if key is not None and resource["resourceType"] != "Patient":
            by_key[key].append(resource)
    prefetch: dict[str, Any] = {}
    for key in definition.prefetch:
        if key == key_of_type["Patient"]:
            prefetch[key] = patient
            continue
        entries = [
            {
                "fullUrl": f"{SYNTHETIC_BASE}/{r['resourceType']}/{r['id']}",
                "resource": r,
                "search": {"mode": "match"},
            }
            for r in by_key[key]
        ]
        prefetch[key] = {"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries}
    order = _ct_lumbar_order(patient_id, now)
    return {
        "hook": "order-select",
        "hookInstance": str(uuid.uuid5(uuid.NAMESPACE_URL, f"corpus:{record['key']}")),
        "context": {
            "userId": "Practitioner/corpus-clinician",
            "patientId": patient_id,
            "encounterId": "corpus-encounter",
            "selections": [f"ServiceRequest/{order['id']}"],
            "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": order}]},
        },
        "prefetch": prefetch,
    }


# ------------------------------------------------------------------------------------------------ running it
@dataclass(frozen=True)
class Outcome:
    status: int
    body: dict[str, Any]
    categories: frozenset[str]  # recognised from the extracted facts (empty when the call failed)


@cache
def _services() -> tuple[HookServices, ServiceDefinition, ClinicalEngine]:
    settings = Settings()  # default settings, whatever CDS_* variables this test run has
    services = HookServices(load_registry(settings.hooks_dir), settings, FhirDataSource(total_timeout=5.0))
    definition = services.registry.get(SERVICE_ID)
    assert definition is not None
    return services, definition, ClinicalEngine.from_config(definition.config)


@cache
def _outcomes() -> dict[str, Outcome]:
    services, definition, engine = _services()
    outcomes: dict[str, Outcome] = {}
    for record in _corpus():
        now = _now(record)
        body = build_request(record, definition)
        try:
            result = services.call(definition, body, now=now, allowed_fhir_servers=())
            patient_record = services.data_source.resolve(definition.prefetch, result.request, ())
            evidence = engine.decide(result.request, patient_record, now=now).evidence
            outcomes[record["key"]] = Outcome(200, result.body, frozenset(recognised_categories(evidence)))
        except CdsError as error:
            outcomes[record["key"]] = Outcome(error.status, error.to_operation_outcome(), frozenset())
        except Exception as error:  # an unexpected exception is what the HTTP layer turns into a 500
            outcomes[record["key"]] = Outcome(500, {"error": f"{type(error).__name__}: {error}"}, frozenset())
    return outcomes


def _ratings(response: Mapping[str, Any]) -> dict[str, str]:
    ratings: dict[str, str] = {}
    actions = response.get("systemActions") or response.get("extension", {}).get("systemActions") or []
    for action in actions:
        resource = action.get("resource", {})
        for extension in resource.get("extension", []):
            if extension.get("url") == PAMA_RATING:
                for coding in extension["valueCodeableConcept"]["coding"]:
                    if coding.get("system") == PAMA_RATING_SYSTEM:
                        ratings[f"{resource['resourceType']}/{resource['id']}"] = coding["code"]
    return ratings


def _has_delete(response: Mapping[str, Any]) -> bool:
    return any(
        action.get("type") == "delete"
        for card in response.get("cards", [])
        for suggestion in card.get("suggestions", [])
        for action in suggestion.get("actions", [])
    )


def recognition_table() -> tuple[str, bool]:
    """The per-category table (expected vs recognised, missed, extra) and whether every category matches."""
    expected = _expected()
    outcomes = _outcomes()
    rows = [f"{'category':36} {'expected':>8} {'recognised':>10} {'missed':>6} {'extra':>5}"]
    all_match = True
    for category in expected["categories"]:
        holders = {key for key, cats in expected["patients"].items() if category in cats}
        recognised = {key for key, outcome in outcomes.items() if category in outcome.categories}
        missed, extra = holders - recognised, recognised - holders
        all_match = all_match and not missed and not extra
        rows.append(f"{category:36} {len(holders):>8} {len(recognised & holders):>10} {len(missed):>6} {len(extra):>5}")
    rows.append(f"({len(outcomes)} patients; recognised = expected and recognised; extra = recognised, not expected)")
    return "\n".join(rows), all_match


# ------------------------------------------------------------------------------------------------ tests
def test_corpus_is_large_enough_and_the_ground_truth_is_current() -> None:
    corpus = _corpus()
    expected = _expected()
    assert len(corpus) >= 40
    assert sorted(r["key"] for r in corpus) == sorted(expected["patients"])
    # The committed ground truth is exactly what its script derives from the corpus (no hand edits).
    script = _load_script(GROUND_TRUTH_SCRIPT)
    assert script.render(script.ground_truth(list(corpus))) == EXPECTED.read_text(encoding="utf-8")
    # The corpus over-represents what matters: each of these categories is held by several patients.
    for category in ("malignancy", "cancer_therapy", "osteoporosis", "pregnancy", "mr_implant", "nsaid_course"):
        assert expected["totals"][category] >= 5, category


def test_every_request_is_answered_with_a_valid_response() -> None:
    schema = json.loads(RESPONSE_SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.validators.validator_for(schema)(schema)
    problems: list[str] = []
    for key, outcome in _outcomes().items():
        if outcome.status != 200:
            problems.append(f"{key}: HTTP {outcome.status}: {json.dumps(outcome.body)[:300]}")
            continue
        errors = [e.message for e in validator.iter_errors(outcome.body)]
        if errors:
            problems.append(f"{key}: invalid response: {errors[:3]}")
        if empty_members(outcome.body):
            problems.append(f"{key}: null or empty members in the response")
    assert problems == [], "\n".join(problems)


def test_red_flag_patients_are_never_told_to_remove_the_order() -> None:
    problems: list[str] = []
    outcomes = _outcomes()
    patients = removed = rated_not_appropriate = 0
    for key, categories in _expected()["patients"].items():
        flags = NEVER_REMOVE & set(categories)
        if not flags:
            continue
        patients += 1
        outcome = outcomes[key]
        if outcome.status != 200:
            problems.append(f"{key} ({', '.join(sorted(flags))}): HTTP {outcome.status}")
            continue
        if _has_delete(outcome.body):
            removed += 1
            problems.append(f"{key} ({', '.join(sorted(flags))}): a card suggests removing the order")
        not_appropriate = [ref for ref, rating in _ratings(outcome.body).items() if rating == "not-appropriate"]
        if not_appropriate:
            rated_not_appropriate += 1
            problems.append(f"{key} ({', '.join(sorted(flags))}): rated not-appropriate: {not_appropriate}")
    summary = (
        f"{patients} patients with {', '.join(sorted(NEVER_REMOVE))} on record: {removed} told to remove the order,"
        f" {rated_not_appropriate} rated not-appropriate"
    )
    table, _ = recognition_table()
    assert problems == [], summary + "\n" + "\n".join(problems) + "\n\n" + table


def test_every_category_is_recognised_for_exactly_the_patients_that_hold_it() -> None:
    table, all_match = recognition_table()
    outcomes = _outcomes()
    details = []
    for category in _expected()["categories"]:
        for key, cats in sorted(_expected()["patients"].items()):
            held, seen = category in cats, category in outcomes[key].categories
            if held != seen:
                evidence = _expected()["evidence"].get(key, {}).get(category, [])
                details.append(f"  {category}: {'missed' if held else 'extra'} {key} {evidence[:2]}")
    assert all_match, "per-category recognition (expected vs recognised):\n" + table + "\n" + "\n".join(details[:80])
