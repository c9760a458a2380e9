"""Response conformance: what a strict CDS Hooks 2.0 client and the Argonaut PAMA guide require of every response.

* every golden ``expected.json`` and every response the HTTP app gives for each fixture request (with each
  ``CDS_SYSTEM_ACTIONS`` placement) validates against ``cds_service/schemas/cds-hooks-2.0-response.schema.json``
  (the specification's members only, ``additionalProperties: false`` everywhere but FHIR resources and
  ``extension``) and against the service's own profile (``response.schema.json``);
* the schema really is strict: an unknown member in any CDS Hooks object of a real response is refused, while
  one inside a FHIR resource or an ``extension`` is not;
* actions carry no ``uuid``; every suggestion says ``isRecommended`` (true or false);
* every rating (system action and suggested order) carries ``pama-rating-qcdsm-consulted`` with a ``valueUri``:
  ``CDS_QCDSM_URI`` when set, else the invoked service's endpoint URL.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from appsupport import make_app
from flask.testing import FlaskClient
from jsonschema.exceptions import ValidationError
from jsonschema.protocols import Validator

from cds_service.errors import BadRequest
from cds_service.protocol.response import SystemActionsLocation
from cds_service.protocol.validation import schema_validator, validate_against

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures"
STRICT = "cds-hooks-2.0-response"
SCENARIOS = sorted(path.name for path in FIXTURES.iterdir() if (path / "scenario.json").is_file())
CARD_SCENARIOS = [
    name
    for name in SCENARIOS
    if json.loads((FIXTURES / name / "scenario.json").read_text(encoding="utf-8"))["expect"].get("status", 200) == 200
]
PAMA_RATING = "http://fhir.org/argonaut/Extension/pama-rating"
PAMA_QCDSM = "http://fhir.org/argonaut/Extension/pama-rating-qcdsm-consulted"


def _read(path: Path) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return value


def _strict() -> Validator:
    return schema_validator(STRICT)


def _errors(document: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in _strict().iter_errors(document)]


@cache
def _app_client(tmp_root: str, location: SystemActionsLocation) -> FlaskClient:
    return make_app(Path(tmp_root) / location.value, system_actions=location).test_client()


@pytest.fixture(scope="module")
def tmp_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("conformance"))


def _service_path(request: dict[str, Any]) -> str:
    return f"/cds-services/lumbar-imaging-{request['hook']}"


# ------------------------------------------------------------------------------------------------ the schema
def test_the_strict_schema_is_a_valid_json_schema_and_forbids_unknown_members() -> None:
    schema = _read(REPO / "cds_service" / "schemas" / f"{STRICT}.schema.json")
    type(_strict()).check_schema(schema)

    def objects(node: Any) -> Iterator[dict[str, Any]]:
        if isinstance(node, dict):
            if node.get("type") == "object":
                yield node
            for value in node.values():
                yield from objects(value)
        elif isinstance(node, list):
            for value in node:
                yield from objects(value)

    open_objects = {name for name, definition in schema["$defs"].items() if "additionalProperties" not in definition}
    # Only FHIR resources and extension contents are open; every CDS Hooks object is closed.
    assert open_objects == {"extension", "fhirResource", "text", "absoluteUrl", "uuid"}
    closed = [o for o in objects(schema) if o.get("additionalProperties") is False]
    assert len(closed) == 7  # response, coding, card, source, suggestion, action, link


# ------------------------------------------------------------------------------------------------ golden files
@pytest.mark.parametrize("name", CARD_SCENARIOS)
def test_golden_response_is_strict_cds_hooks_2_0(name: str) -> None:
    expected = _read(FIXTURES / name / "expected.json")
    assert _errors(expected) == []
    validate_against("response", expected)  # the service's own, stricter profile


# ------------------------------------------------------------------------------------------------ live answers
@pytest.mark.parametrize("location", list(SystemActionsLocation), ids=lambda location: location.value)
@pytest.mark.parametrize("name", CARD_SCENARIOS)
def test_app_response_for_each_fixture_request_is_strict_cds_hooks_2_0(
    name: str, location: SystemActionsLocation, tmp_root: str
) -> None:
    request = _read(FIXTURES / name / "request.json")
    response = _app_client(tmp_root, location).post(_service_path(request), json=request)
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert _errors(body) == []
    validate_against("response", body)
    for suggestion in _suggestions(body):
        assert isinstance(suggestion["isRecommended"], bool)
    for action in _actions(body):
        assert "uuid" not in action
    # The ratings are where the deployment asked for them (the Sandbox reads only extension.systemActions).
    rated = len(_read(FIXTURES / name / "expected.json").get("systemActions", []))  # the golden's placement: both
    top = location in (SystemActionsLocation.TOP, SystemActionsLocation.BOTH)
    legacy = location in (SystemActionsLocation.EXTENSION, SystemActionsLocation.BOTH)
    assert len(body.get("systemActions", [])) == (rated if top else 0)
    assert len(body.get("extension", {}).get("systemActions", [])) == (rated if legacy else 0)


def test_every_golden_rating_names_the_qcdsm_consulted() -> None:
    """Offline (evaluate, golden files) the default is the endpoint of a default local `cds-service serve`."""
    ratings = 0
    for name in CARD_SCENARIOS:
        body = _read(FIXTURES / name / "expected.json")
        request = _read(FIXTURES / name / "request.json")
        for resource in _rated_resources(body):
            ratings += 1
            qcdsm = _extension(resource, PAMA_QCDSM)
            assert qcdsm == {"url": PAMA_QCDSM, "valueUri": f"http://127.0.0.1:8080{_service_path(request)}"}, name
    assert ratings >= 40  # system actions (twice with "both") and the rated suggested orders


def test_qcdsm_defaults_to_the_invoked_endpoint_url(tmp_path: Path) -> None:
    request = _read(FIXTURES / "ct-lumbar-wo-after-failed-therapy-converts-to-mri" / "request.json")
    client = make_app(tmp_path).test_client()
    body = client.post(_service_path(request), json=request, base_url="https://cds.example.org:8443").get_json()
    values = {_extension(r, PAMA_QCDSM)["valueUri"] for r in _rated_resources(body)}  # type: ignore[index]
    assert values == {"https://cds.example.org:8443/cds-services/lumbar-imaging-order-select"}
    # Rated suggested orders carry it too (the MRI the card offers is rated "appropriate").
    assert any(_extension(a["resource"], PAMA_QCDSM) for s in _suggestions(body) for a in s["actions"])


def test_qcdsm_follows_cds_public_url_then_cds_qcdsm_uri(tmp_path: Path) -> None:
    request = _read(FIXTURES / "ct-lumbar-wo-after-failed-therapy-converts-to-mri" / "request.json")
    public = make_app(tmp_path / "a", public_url="https://cds.example.org/base").test_client()
    body = public.post(_service_path(request), json=request).get_json()
    assert {_extension(r, PAMA_QCDSM)["valueUri"] for r in _rated_resources(body)} == {  # type: ignore[index]
        "https://cds.example.org/base/cds-services/lumbar-imaging-order-select"
    }
    gcode = make_app(tmp_path / "b", qcdsm_uri="urn:cms:qcdsm:G1011").test_client()
    body = gcode.post(_service_path(request), json=request).get_json()
    assert {_extension(r, PAMA_QCDSM)["valueUri"] for r in _rated_resources(body)} == {  # type: ignore[index]
        "urn:cms:qcdsm:G1011"
    }


# ------------------------------------------------------------------------------------------------ strictness
def _closed_objects(body: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, object) for every CDS Hooks object of a response: not FHIR resources, not extension contents."""
    yield "$", body
    system_actions = body.get("systemActions", [])
    actions: list[tuple[str, dict[str, Any]]] = [(f"$.systemActions[{i}]", a) for i, a in enumerate(system_actions)]
    for c, card in enumerate(body["cards"]):
        yield f"$.cards[{c}]", card
        yield f"$.cards[{c}].source", card["source"]
        if "topic" in card["source"]:
            yield f"$.cards[{c}].source.topic", card["source"]["topic"]
        for r, reason in enumerate(card.get("overrideReasons", [])):
            yield f"$.cards[{c}].overrideReasons[{r}]", reason
        for k, link in enumerate(card.get("links", [])):
            yield f"$.cards[{c}].links[{k}]", link
        for s, suggestion in enumerate(card.get("suggestions", [])):
            yield f"$.cards[{c}].suggestions[{s}]", suggestion
            actions += [(f"$.cards[{c}].suggestions[{s}].actions[{a}]", x) for a, x in enumerate(suggestion["actions"])]
    yield from actions


# A golden response with every kind of CDS Hooks object: cards with suggestions, links, topics, override reasons,
# system actions, create/update/delete actions.
RICH = ["prior-laminectomy-with-radiculopathy-ct-converts-to-mri", "order-sign-several-drafts-acute-lbp"]


@pytest.mark.parametrize("name", RICH)
def test_an_unknown_member_anywhere_outside_resources_and_extension_is_refused(name: str) -> None:
    body = _read(FIXTURES / name / "expected.json")
    paths = [path for path, _ in _closed_objects(body)]
    assert len(paths) >= 10
    for index, path in enumerate(paths):
        mutated = copy.deepcopy(body)
        target = dict(_closed_objects(mutated))[path]
        target["vendorMember"] = "x"
        assert any("vendorMember" in error for error in _errors(mutated)), f"an unknown member at {path} passed"
        if index == 0:
            continue
        # "extension" is the one name the specification reserves for implementers, on any of its objects.
        target.pop("vendorMember")
        target["extension"] = {"org.example.note": "x"}
        assert _errors(mutated) == [], path


def test_members_inside_fhir_resources_and_extension_are_free() -> None:
    body = _read(FIXTURES / "ct-lumbar-wo-after-failed-therapy-converts-to-mri" / "expected.json")
    body["systemActions"][0]["resource"]["vendorMember"] = {"any": ["thing"]}
    body["extension"]["org.example.trace"] = {"anything": True}
    assert _errors(body) == []


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda b: b["systemActions"][0].__setitem__("uuid", "3349f602-30bf-5f36-bfc5-5c4fc2a6fa86"), "uuid"),
        (lambda b: b["cards"][0]["suggestions"][0]["actions"][0].__setitem__("uuid", "x"), "uuid"),
        (lambda b: b["cards"][0]["suggestions"][0].__setitem__("isRecommended", None), "None is not of type"),
        (lambda b: b["cards"][0].__setitem__("detail", ""), "should be non-empty"),
        (lambda b: b["cards"][0].__setitem__("links", []), "should be non-empty"),
        (lambda b: b.__setitem__("extension", {}), "should be non-empty"),
        (lambda b: b["cards"][0].pop("selectionBehavior"), "'selectionBehavior' is a dependency of 'suggestions'"),
        (lambda b: b["cards"][0]["overrideReasons"][0].pop("display"), "'display' is a required property"),
        (lambda b: b["cards"][0].__setitem__("summary", "x" * 140), "is too long"),
        (lambda b: b["cards"][0].__setitem__("indicator", "hard-stop"), "is not one of"),
    ],
)
def test_the_strict_schema_refuses_what_the_specification_forbids(mutate: Any, problem: str) -> None:
    body = _read(FIXTURES / "ct-lumbar-wo-after-failed-therapy-converts-to-mri" / "expected.json")
    assert _errors(body) == []
    mutate(body)
    errors = _errors(body)
    assert any(problem in error for error in errors), errors


def test_at_most_one_allows_one_recommended_suggestion() -> None:
    body = _read(FIXTURES / "prior-laminectomy-with-radiculopathy-ct-converts-to-mri" / "expected.json")
    card = next(c for c in body["cards"] if len(c.get("suggestions", [])) >= 2)
    card["selectionBehavior"] = "at-most-one"
    for suggestion in card["suggestions"]:
        suggestion["isRecommended"] = False
    card["suggestions"][0]["isRecommended"] = True
    assert _errors(body) == []
    card["suggestions"][1]["isRecommended"] = True
    assert _errors(body) != []


def test_the_service_profile_also_refuses_an_action_uuid() -> None:
    body = _read(FIXTURES / "ct-lumbar-wo-after-failed-therapy-converts-to-mri" / "expected.json")
    body["systemActions"][0]["uuid"] = "3349f602-30bf-5f36-bfc5-5c4fc2a6fa86"
    with pytest.raises(BadRequest, match="uuid"):
        validate_against("response", body)
    with pytest.raises(ValidationError):
        _strict().validate(body)


# ------------------------------------------------------------------------------------------------ helpers
def _suggestions(body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for card in body["cards"]:
        yield from card.get("suggestions", [])


def _actions(body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from body.get("systemActions", [])
    yield from body.get("extension", {}).get("systemActions", [])
    for suggestion in _suggestions(body):
        yield from suggestion.get("actions", [])


def _extension(resource: dict[str, Any], url: str) -> dict[str, Any] | None:
    return next((e for e in resource.get("extension", []) if e.get("url") == url), None)


def _rated_resources(body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for action in _actions(body):
        resource = action.get("resource")
        if resource and _extension(resource, PAMA_RATING):
            yield resource
