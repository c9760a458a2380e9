"""Golden clinical scenarios: every ``fixtures/<scenario>/`` folder is one patient story.

Each folder holds:

* ``request.json``: a complete CDS Hooks 2.0 request as an EHR sends it (offline: no ``fhirServer``);
* ``scenario.json``: the evaluation time and the clinician's expectation, written from docs/clinical-rules.md
  *before* the engine's output was seen (ratings per order, card indicators, suggestion kinds; a few checks on
  card details were added in review where the output contradicted the specification);
* ``expected.json``: the exact response the service returns (or, for an expected error status, its
  OperationOutcome), written by the engine and reviewed by hand.

The snapshot test catches any change in the response; the expectation test says, independently of the
snapshot, whether the response is clinically right; the wording test catches card text a clinician should never
read. A snapshot can be accepted by mistake; the expectation cannot be regenerated. See fixtures/README.md.

Update the snapshots (never in CI), then read every diff against scenario.json before accepting it::

    python tests/test_golden.py --update            # every scenario
    python tests/test_golden.py --update NAME ...   # some scenarios
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fhir.resources.R4B import get_fhir_model_class
from support import empty_members

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures"
HOOKS = REPO / "hooks"
RESPONSE_SCHEMA = REPO / "cds_service" / "schemas" / "response.schema.json"

# Only folders with a scenario.json are golden scenarios (fixtures/ also holds other test data).
SCENARIOS = sorted(path.name for path in FIXTURES.iterdir() if (path / "scenario.json").is_file())
# Scenarios answered with cards (HTTP 200); the others expect an error status such as 412.
CARD_SCENARIOS = [
    name
    for name in SCENARIOS
    if json.loads((FIXTURES / name / "scenario.json").read_text(encoding="utf-8"))["expect"].get("status", 200) == 200
]
# Two scenarios are also run through the console script: one with cards and suggestions, one with missing data.
CLI_SCENARIOS = ["ct-lumbar-wo-after-failed-therapy-converts-to-mri", "no-patient-history-ct-lumbar-wwo-still-rated"]

PAMA_RATING = "http://fhir.org/argonaut/Extension/pama-rating"
PAMA_RATING_SYSTEM = "http://fhir.org/argonaut/CodeSystem/pama-rating"
PAMA_CONSULT_ID = "http://fhir.org/argonaut/Extension/pama-rating-consult-id"
PAMA_AUC_APPLIED = "http://fhir.org/argonaut/Extension/pama-rating-auc-applied"
DATA_QUALITY_KEY = "cds-service.data-quality"
RATINGS = {"appropriate", "not-appropriate", "no-criteria-apply"}
INDICATORS = {"info", "warning", "critical"}

CPT = "http://www.ama-assn.org/go/cpt"
LOINC = "http://loinc.org"
# Imaging codes -> the short procedure names used in scenario.json suggestion kinds (docs/clinical-rules.md#procedures).
PROCEDURE_SLUGS: dict[tuple[str, str], str] = {
    (CPT, "72148"): "mri-wo",
    (LOINC, "30679-5"): "mri-wo",
    (CPT, "72149"): "mri-w",
    (LOINC, "30678-7"): "mri-w",
    (CPT, "72158"): "mri-wwo",
    (LOINC, "24967-2"): "mri-wwo",
    (LOINC, "24968-0"): "mri",
    (CPT, "72131"): "ct-wo",
    (LOINC, "30620-9"): "ct-wo",
    (LOINC, "24963-1"): "ct-wo",
    (CPT, "72132"): "ct-w",
    (LOINC, "24964-9"): "ct-w",
    (CPT, "72133"): "ct-wwo",
    (LOINC, "36402-6"): "ct-wwo",
    (LOINC, "24965-6"): "ct-myelo",
    (LOINC, "24974-8"): "ct-myelo",
    (CPT, "72100"): "xr",
    (CPT, "72110"): "xr",
    (CPT, "72114"): "xr",
    (CPT, "72120"): "xr",
    (LOINC, "24970-6"): "xr",
    (LOINC, "24971-4"): "xr",
    (LOINC, "24972-2"): "xr",
    (CPT, "78306"): "bone-scan",
    (LOINC, "24578-7"): "bone-scan",
}
PROCEDURES = sorted(set(PROCEDURE_SLUGS.values()))
URGENCIES = ("stat", "urgent")  # suggested order priorities a kind names: create-mri-wo-stat, convert-to-mri-wo-urgent
SUGGESTION_KINDS = (
    {"delete-order"}
    | {f"{verb}-{slug}" for verb in ("create", "convert-to") for slug in PROCEDURES}
    | {f"{verb}-{slug}-{urgency}" for verb in ("create", "convert-to") for slug in PROCEDURES for urgency in URGENCIES}
)
# FHIR versions whose order resources R4B models cannot validate (the public Sandbox sends them).
PRE_R4_ORDER_TYPES = {"ProcedureRequest", "MedicationOrder"}
# Date members that must not lie after the scenario's evaluation time (validity periods and abatements may).
PAST_DATE_MEMBERS = {
    "onsetDateTime",
    "recordedDate",
    "authoredOn",
    "effectiveDateTime",
    "issued",
    "performedDateTime",
    "dateAsserted",
    "started",
    "occurrenceDateTime",
    "birthDate",
}


# ------------------------------------------------------------------------------------------------ loading
def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _request(name: str) -> dict[str, Any]:
    request: dict[str, Any] = _read_json(FIXTURES / name / "request.json")
    return request


def _scenario(name: str) -> dict[str, Any]:
    scenario: dict[str, Any] = _read_json(FIXTURES / name / "scenario.json")
    return scenario


def _now(name: str) -> datetime:
    return datetime.fromisoformat(_scenario(name)["now"].replace("Z", "+00:00"))


@cache
def _evaluated(name: str) -> tuple[int, str]:
    """HTTP status and body JSON text the service answers for a scenario (cached: several tests read it; text so
    nobody mutates it). An error answer (412 when nothing can be determined ...) is its OperationOutcome body."""
    # Imported here, so that the request checks run without the engine.
    from cds_service.errors import CdsError
    from cds_service.offline import evaluate_request
    from cds_service.settings import Settings

    try:
        # Golden responses are for the default settings, whatever CDS_* variables this test run has.
        return 200, json.dumps(evaluate_request(_request(name), now=_now(name), settings=Settings()))
    except CdsError as exc:
        return exc.status, json.dumps(exc.to_operation_outcome())


def _outcome(name: str) -> tuple[int, dict[str, Any]]:
    status, text = _evaluated(name)
    body: dict[str, Any] = json.loads(text)
    return status, body


def _response(name: str) -> dict[str, Any]:
    """The CDS Hooks response of a scenario that expects one (HTTP 200)."""
    status, body = _outcome(name)
    assert status == 200, f"HTTP {status}: {body}"
    return body


def _expected_status(name: str) -> int:
    status: int = _scenario(name)["expect"].get("status", 200)
    return status


def _format(response: Mapping[str, Any]) -> str:
    """The golden-file format: what ``cds-service evaluate`` prints (2-space indent, UTF-8, final newline)."""
    return json.dumps(response, indent=2, ensure_ascii=False) + "\n"


@cache
def _prefetch_keys() -> dict[str, frozenset[str]]:
    """hook -> the prefetch keys its service definition declares."""
    keys: dict[str, frozenset[str]] = {}
    for path in sorted(HOOKS.glob("*.json")):
        definition = _read_json(path)
        keys[definition["hook"]] = frozenset(definition.get("prefetch", {}))
    return keys


# ------------------------------------------------------------------------------------------------ reading a response
def _rating_actions(response: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The system actions that carry a PAMA rating (top-level ``systemActions``, else the legacy extension)."""
    top = response.get("systemActions")
    legacy = response.get("extension", {}).get("systemActions")
    if top is not None and legacy is not None:
        assert top == legacy, "systemActions differ between the top level and extension.systemActions"
    actions: list[dict[str, Any]] = top if top is not None else legacy or []
    return [action for action in actions if _extension(action.get("resource", {}), PAMA_RATING) is not None]


def _extension(resource: Mapping[str, Any], url: str) -> dict[str, Any] | None:
    for extension in resource.get("extension", []):
        if extension.get("url") == url:
            found: dict[str, Any] = extension
            return found
    return None


def _ratings(response: Mapping[str, Any]) -> dict[str, str]:
    """Order reference -> pama-rating code, from the rating system actions."""
    ratings: dict[str, str] = {}
    for action in _rating_actions(response):
        resource = action["resource"]
        reference = f"{resource['resourceType']}/{resource['id']}"
        assert reference not in ratings, f"{reference} is rated twice"
        rating = _extension(resource, PAMA_RATING)
        assert rating is not None
        codes = [c["code"] for c in rating["valueCodeableConcept"]["coding"] if c.get("system") == PAMA_RATING_SYSTEM]
        assert len(codes) == 1, f"{reference}: expected one pama-rating coding, got {codes}"
        ratings[reference] = codes[0]
    return ratings


def _procedure_slug(resource: Mapping[str, Any]) -> str:
    code = resource.get("code", {})
    slugs = {
        PROCEDURE_SLUGS[(coding.get("system"), coding.get("code"))]
        for coding in code.get("coding", [])
        if (coding.get("system"), coding.get("code")) in PROCEDURE_SLUGS
    }
    assert len(slugs) <= 1, f"{resource.get('id')}: codings name different procedures {sorted(slugs)}"
    if slugs:
        return slugs.pop()
    text = " ".join([code.get("text", "")] + [c.get("display", "") for c in code.get("coding", [])]).lower()
    if "myelogra" in text:
        return "ct-myelo"
    return f"other-{resource.get('resourceType', 'resource').lower()}"


def _action_kind(action: Mapping[str, Any]) -> str:
    """A suggestion action as a scenario.json kind: delete-order, create-mri-wo, convert-to-xr, ...-stat."""
    if action["type"] == "delete":
        return "delete-order"
    resource = action["resource"]
    verb = "create" if action["type"] == "create" else "convert-to"
    urgency = f"-{resource['priority']}" if resource.get("priority") in ("stat", "urgent") else ""
    return f"{verb}-{_procedure_slug(resource)}{urgency}"


def _suggestions(response: Mapping[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]:
    """(card, suggestion, action) for every suggestion action in the response."""
    for card in response["cards"]:
        for suggestion in card.get("suggestions", []):
            for action in suggestion.get("actions", []):
                yield card, suggestion, action


def _drafts(request: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Draft orders by "Type/id"."""
    entries = request["context"]["draftOrders"].get("entry", [])
    return {f"{e['resource']['resourceType']}/{e['resource']['id']}": e["resource"] for e in entries}


def _focus(request: Mapping[str, Any]) -> set[str]:
    """The orders the service must decide about: the selections (order-select) or every draft (order-sign)."""
    selections = request["context"].get("selections")
    return set(selections) if selections is not None else set(_drafts(request))


# ------------------------------------------------------------------------------------------------ the tests
def test_there_are_at_least_32_scenarios() -> None:
    assert len(SCENARIOS) >= 32, SCENARIOS


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_file_is_well_formed(name: str) -> None:
    scenario = _scenario(name)
    assert scenario["title"] and scenario["clinical_summary"]
    assert _now(name).tzinfo is not None, "now must carry a time zone"
    expect = scenario["expect"]
    assert set(expect["ratings"].values()) <= RATINGS
    assert set(expect["ratings"]) <= _focus(_request(name)), "only selected (order-sign: drafted) orders are rated"
    assert {card["indicator"] for card in expect["cards"]} <= INDICATORS
    assert all(card["about"] for card in expect["cards"])
    kinds = set(expect["suggests"]) | set(expect.get("optional_suggests", []))
    assert kinds <= SUGGESTION_KINDS, kinds - SUGGESTION_KINDS
    assert not set(expect["suggests"]) & set(expect.get("optional_suggests", []))
    if "status" in expect:  # an error answer has no ratings, cards or suggestions
        assert expect["status"] in {400, 412} and not (expect["ratings"] or expect["cards"] or expect["suggests"])
    for filename in ("request.json", "scenario.json", "expected.json"):
        path = FIXTURES / name / filename
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            assert text == _format(json.loads(text)), f"{filename}: format with 2-space indent and a final newline"


@pytest.mark.parametrize("name", SCENARIOS)
def test_request_is_a_complete_cds_hooks_request_with_valid_fhir_r4(name: str) -> None:
    request = _request(name)
    scenario = _scenario(name)
    now = _now(name)
    invalid = set(scenario.get("invalid_resources", []))

    assert request["hook"] in _prefetch_keys()
    assert str(uuid.UUID(request["hookInstance"])) == request["hookInstance"]
    assert "fhirServer" not in request and "fhirAuthorization" not in request, "golden requests run offline"
    context = request["context"]
    patient_reference = f"Patient/{context['patientId']}"
    assert context["userId"].startswith(("Practitioner/", "PractitionerRole/"))
    assert context["encounterId"]

    drafts = _drafts(request)
    bundle = context["draftOrders"]
    pre_r4 = any(reference.split("/")[0] in PRE_R4_ORDER_TYPES for reference in drafts)
    if not pre_r4:
        assert bundle.get("type") == "collection"
        get_fhir_model_class("Bundle").model_validate(bundle)
    if request["hook"] == "order-select":
        assert context["selections"] and set(context["selections"]) <= set(drafts)
    else:
        assert "selections" not in context
    for reference, draft in drafts.items():
        owner = draft["subject"] if "subject" in draft else draft["patient"]  # DSTU2 MedicationOrder: "patient"
        assert draft["status"] == "draft" and owner["reference"] == patient_reference, reference
        if draft["resourceType"] not in PRE_R4_ORDER_TYPES:
            assert draft["intent"] == "order", reference
            get_fhir_model_class(draft["resourceType"]).model_validate(draft)

    if "prefetch" not in request:
        return  # the "no patient history at all" scenario: nothing but the draft orders
    prefetch = request["prefetch"]
    assert set(prefetch) == _prefetch_keys()[request["hook"]], "prefetch must answer every template key"
    patient = prefetch["patient"]
    assert patient["resourceType"] == "Patient" and patient["id"] == context["patientId"]
    failed: set[str] = set()
    for key, value in prefetch.items():
        if value is None:
            continue
        resources = [e["resource"] for e in value.get("entry", [])] if value["resourceType"] == "Bundle" else [value]
        if value["resourceType"] == "Bundle":
            assert value["type"] == "searchset", key
        for resource in resources:
            reference = f"{resource['resourceType']}/{resource.get('id')}"
            try:
                get_fhir_model_class(resource["resourceType"]).model_validate(resource)
            except ValueError:
                failed.add(reference)
                continue
            owner = resource.get("subject", resource.get("patient", {"reference": patient_reference}))
            assert owner["reference"] == patient_reference, reference
            for member, moment in _dates(resource):
                assert moment <= now, f"{reference}.{member} = {moment} lies after the evaluation time {now}"
    assert failed == invalid, "only the resources listed in scenario.json invalid_resources may fail validation"


def _dates(value: Any) -> Iterator[tuple[str, datetime]]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key in PAST_DATE_MEMBERS and isinstance(item, str):
                yield key, _as_datetime(item)
            else:
                yield from _dates(item)
    elif isinstance(value, list):
        for item in value:
            yield from _dates(item)


def _as_datetime(text: str) -> datetime:
    if len(text) == 10:
        return datetime.combine(date.fromisoformat(text), datetime.min.time(), tzinfo=UTC)
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.mark.parametrize("name", SCENARIOS)
def test_response_equals_the_golden_file(name: str) -> None:
    expected_path = FIXTURES / name / "expected.json"
    assert expected_path.is_file(), f"no expected.json: run python tests/test_golden.py --update {name} and review it"
    status, body = _outcome(name)
    assert status == _expected_status(name), f"HTTP {status}: {body}"
    assert body == _read_json(expected_path)


@pytest.mark.parametrize("name", SCENARIOS)
def test_response_meets_the_clinical_expectation(name: str) -> None:
    """The scenario's expectation, checked against the live response (not the snapshot)."""
    request, expect = _request(name), _scenario(name)["expect"]
    status, response = _outcome(name)
    assert status == expect.get("status", 200), f"HTTP {status}: {response}"
    if status != 200:
        # An error answer is a FHIR OperationOutcome that says what is wrong (CDS Hooks 2.0, https://cds-hooks.hl7.org/2.0/).
        get_fhir_model_class("OperationOutcome").model_validate(response)
        assert all(issue.get("diagnostics") for issue in response["issue"])
        return
    drafts, focus = _drafts(request), _focus(request)

    # Ratings: exactly the expected orders, each with its expected code; nothing else is rated.
    assert _ratings(response) == expect["ratings"]
    for action in _rating_actions(response):
        resource = action["resource"]
        reference = f"{resource['resourceType']}/{resource['id']}"
        assert action["type"] == "update"
        # The rating update adds the Argonaut extensions and changes nothing else on the order.
        for member, value in resource.items():
            if member != "extension":
                assert value == drafts[reference][member], f"the rating update changed {reference}.{member}"
        consult_id = _extension(resource, PAMA_CONSULT_ID)
        assert consult_id is not None and consult_id["valueUri"].startswith("urn:uuid:")
        assert _extension(resource, PAMA_AUC_APPLIED) is not None
        rating = _extension(resource, PAMA_RATING)
        assert rating is not None
        codings = rating["valueCodeableConcept"]["coding"]
        # appropriate / not-appropriate carry the ACR category as a translation; no-criteria-apply has none.
        expected_codings = 1 if expect["ratings"][reference] == "no-criteria-apply" else 2
        assert len(codings) == expected_codings, f"{reference}: rating and ACR category codings {codings}"

    # Cards: the expected indicators, one card per expected concern.
    assert sorted(card["indicator"] for card in response["cards"]) == sorted(c["indicator"] for c in expect["cards"])

    # Suggestions: every expected kind, and nothing beyond the expected and the optional kinds.
    required, optional = set(expect["suggests"]), set(expect.get("optional_suggests", []))
    found = {_action_kind(action) for _, _, action in _suggestions(response)}
    assert required <= found, f"missing suggestions {sorted(required - found)}"
    assert found <= required | optional, f"unexpected suggestions {sorted(found - required - optional)}"
    for _card, suggestion, action in _suggestions(response):
        kind = _action_kind(action)
        if kind in optional:
            # A card never asks to replace an appropriate order: alternatives are offered, not recommended.
            assert not suggestion.get("isRecommended"), f"{kind} is optional here but recommended"
        if action["type"] == "delete":
            assert action["resourceId"] in focus, f"delete of {action['resourceId']}, not a decided order"
        elif action["type"] == "update":
            resource = action["resource"]
            assert f"{resource['resourceType']}/{resource['id']}" in focus, "converts only a decided order"
            _assert_mri_wo_codings(resource)
        else:
            _assert_complete_created_order(action["resource"], request)

    # Override reasons that the scenario needs (e.g. "Surgery or intervention candidate confirmed").
    displays = {reason["display"] for card in response["cards"] for reason in card.get("overrideReasons", [])}
    assert set(expect.get("override_reasons_include", [])) <= displays

    # Words the card details must (or must not) use, e.g. "eGFR" for a contrast order without a recent one.
    details = "\n".join(card.get("detail", "") for card in response["cards"])
    for word in expect.get("detail_includes", []):
        assert word in details, f"no card detail mentions {word!r}"
    for word in expect.get("detail_excludes", []):
        assert word.lower() not in details.lower(), f"a card detail mentions {word!r}"

    # Skipped invalid resources are reported in the response extension.
    skipped = expect.get("data_quality_skipped", [])
    diagnostics = " ".join(
        issue.get("diagnostics", "")
        for issue in response.get("extension", {}).get(DATA_QUALITY_KEY, {}).get("issue", [])
    )
    for reference in skipped:
        assert reference in diagnostics, f"{reference} was not reported in extension[{DATA_QUALITY_KEY!r}]"
    if not skipped:
        assert DATA_QUALITY_KEY not in response.get("extension", {}), "a data-quality warning nobody expected"


def _assert_complete_created_order(order: Mapping[str, Any], request: Mapping[str, Any]) -> None:
    """A created ServiceRequest is ready to sign and to survive a prior-authorisation review.

    docs/clinical-rules.md#suggested-orders
    """
    assert order["resourceType"] == "ServiceRequest"
    assert order["status"] == "draft" and order["intent"] == "order"
    assert order["subject"]["reference"] == f"Patient/{request['context']['patientId']}"
    assert order["priority"] in {"routine", "urgent", "asap", "stat"}
    _assert_mri_wo_codings(order)
    assert order.get("reasonCode"), "reasonCode: the codes on record"
    assert order.get("reasonReference"), "reasonReference: the conditions on record"
    protocol = json.dumps([order.get("note", []), order.get("orderDetail", [])])
    if _procedure_slug(order).startswith("mri"):
        for element in ("T1", "T2", "fat-suppressed", "1.5 T"):
            assert element in protocol, f"the MRI protocol (note or orderDetail) does not name {element!r}"


def _assert_mri_wo_codings(order: Mapping[str, Any]) -> None:
    """An order for MRI lumbar spine without contrast carries CPT 72148 and LOINC 30679-5, each with its display."""
    if _procedure_slug(order) != "mri-wo":
        return
    codings = {(c["system"], c["code"]): c.get("display") for c in order["code"]["coding"]}
    assert codings.get((CPT, "72148")) and codings.get((LOINC, "30679-5")), "CPT 72148 and LOINC 30679-5 with display"


# Wording that a clinician should never read in a card (every word of a card matters: docs/clinical-rules.md#cards).
BAD_WORDING = {
    r"\b1 (weeks|months|days)\b": "singular count with a plural unit",
    r"\bis may be appropriate\b": "ACR category used as a verb phrase",
    r"\binappropriate\b": "'inappropriate' as a verdict (use the ACR category words)",
    r"\b[A-Za-z]+_[a-z_]+\b": "an internal identifier (concept key) instead of words",
    r"\{[a-z_]*\}": "an unfilled template placeholder",
    r"\S  +\S": "a gap where a value is missing",
    r"…\s*(weeks|days|months)\b": "a truncated value before a unit",
}


@pytest.mark.parametrize("name", CARD_SCENARIOS)
def test_card_text_reads_well(name: str) -> None:
    response = _response(name)
    problems: list[str] = []
    for card in response["cards"]:
        texts = [card["summary"], card.get("detail", "")]
        texts += [s["label"] for s in card.get("suggestions", [])]
        texts += [a["description"] for s in card.get("suggestions", []) for a in s.get("actions", [])]
        for text in texts:
            for pattern, problem in BAD_WORDING.items():
                if match := re.search(pattern, text):
                    problems.append(f"{problem}: {match.group(0)!r} in {text[:90]!r}")
        bullets = [line.strip() for line in card.get("detail", "").splitlines() if line.strip().startswith("- ")]
        problems += [f"evidence listed twice: {line!r}" for line in sorted(set(bullets)) if bullets.count(line) > 1]
        for suggestion in card.get("suggestions", []):
            for action in suggestion.get("actions", []):
                if action["type"] == "update" and action["description"].startswith("Creates"):
                    problems.append(f"an update (change of the selected order) described as {action['description']!r}")
    # A card must not say an order was not rated when every decided imaging order was rated.
    request = _request(name)
    imaging = {ref for ref in _focus(request) if not _procedure_slug(_drafts(request)[ref]).startswith("other-")}
    if imaging and imaging <= set(_ratings(response)):
        problems += [
            f"says 'not rated' but the order is rated: {c['summary']!r}"
            for c in response["cards"]
            if "not rated" in f"{c['summary']} {c.get('detail', '')}"
        ]
    assert problems == []


@pytest.mark.parametrize("name", CARD_SCENARIOS)
def test_response_is_valid_cds_hooks(name: str) -> None:
    response = _response(name)
    schema = _read_json(RESPONSE_SCHEMA)
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator_class(schema).validate(response)
    assert empty_members(response) == [], "null or empty members in the response"
    for card in response["cards"]:
        assert len(card["summary"]) < 140
        if card.get("suggestions"):
            assert card.get("selectionBehavior")


def _launchers() -> dict[str, list[str]]:
    """How to run the command line: the installed console script (next to this Python) and ``python -m``."""
    launchers = {"python-m": [sys.executable, "-m", "cds_service"]}
    script = Path(sys.executable).parent / "cds-service"
    if script.is_file():
        launchers["console-script"] = [str(script)]
    return launchers


@pytest.mark.parametrize("launcher", sorted(_launchers()))
@pytest.mark.parametrize("name", CLI_SCENARIOS)
def test_cds_service_evaluate_prints_the_golden_response(name: str, launcher: str, tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CDS_")}
    env["CDS_DATA_DIR"] = str(tmp_path)
    request_path = FIXTURES / name / "request.json"
    completed = subprocess.run(
        [*_launchers()[launcher], "evaluate", str(request_path), "--now", _scenario(name)["now"]],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    expected_text = (FIXTURES / name / "expected.json").read_text(encoding="utf-8")
    assert json.loads(completed.stdout) == json.loads(expected_text)
    assert completed.stdout == expected_text


# ------------------------------------------------------------------------------------------------ update mode
def _update(names: list[str]) -> int:
    """Rewrite expected.json from the engine. Review every diff against scenario.json before accepting it."""
    if os.environ.get("CI"):
        print("refusing to update golden files in CI", file=sys.stderr)
        return 2
    unknown = sorted(set(names) - set(SCENARIOS))
    if unknown:
        print(f"unknown scenarios: {', '.join(unknown)}", file=sys.stderr)
        return 2
    failures = 0
    for name in names or SCENARIOS:
        path = FIXTURES / name / "expected.json"
        status, body = _outcome(name)
        if status != _expected_status(name):  # e.g. a 412 where the scenario expects cards: nothing to accept
            print(f"NOT updated {name}: HTTP {status}, expected {_expected_status(name)}: {body}", file=sys.stderr)
            failures += 1
            continue
        text = _format(body)
        old = path.read_text(encoding="utf-8") if path.is_file() else None
        if text != old:
            path.write_text(text, encoding="utf-8")
            print(f"{'updated' if old is not None else 'created'} {path.relative_to(REPO)}")
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] != "--update":
        print(__doc__)
        sys.exit(2)
    sys.path.insert(0, str(REPO))
    sys.exit(_update(sys.argv[2:]))
