"""Property-based: no request shape a client can send makes the service answer 5xx."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from appsupport import make_app
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_protocol_validation import minimal_request

SELECT = "/cds-services/lumbar-imaging-order-select"

json_scalars = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
# Paths into a valid request where a hostile value is planted.
PATHS = [
    ["hook"],
    ["hookInstance"],
    ["fhirServer"],
    ["fhirAuthorization"],
    ["context"],
    ["context", "userId"],
    ["context", "patientId"],
    ["context", "encounterId"],
    ["context", "selections"],
    ["context", "selections", 0],
    ["context", "draftOrders"],
    ["context", "draftOrders", "entry"],
    ["context", "draftOrders", "entry", 0],
    ["context", "draftOrders", "entry", 0, "resource"],
    ["context", "draftOrders", "entry", 0, "resource", "code"],
    ["context", "draftOrders", "entry", 0, "resource", "status"],
    ["prefetch"],
    ["prefetch", "conditions"],
    ["prefetch", "patient"],
    ["prefetch", "medicationStatements"],
    ["extension"],
]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> FlaskClient:
    return make_app(Path(tmp_path_factory.mktemp("fuzz"))).test_client()


def _plant(path: list[Any], value: Any) -> dict[str, Any]:
    request = copy.deepcopy(minimal_request())
    target: Any = request
    for key in path[:-1]:
        if isinstance(target, dict):
            target = target.setdefault(key, {})
        elif isinstance(target, list) and isinstance(key, int) and key < len(target):
            target = target[key]
        else:
            return request
    if isinstance(target, dict):
        target[path[-1]] = value
    elif isinstance(target, list) and isinstance(path[-1], int) and path[-1] < len(target):
        target[path[-1]] = value
    return request


def _resource_like() -> st.SearchStrategy[dict[str, Any]]:
    types = st.sampled_from(
        ["Condition", "MedicationStatement", "Observation", "ServiceRequest", "Patient", "Bundle", "X"]
    )
    return st.builds(
        lambda t, extra: {"resourceType": t, **extra},
        types,
        st.dictionaries(
            st.sampled_from(
                [
                    "id",
                    "code",
                    "status",
                    "subject",
                    "onsetDateTime",
                    "entry",
                    "clinicalStatus",
                    "valueQuantity",
                    "medicationCodeableConcept",
                    "effectivePeriod",
                    "birthDate",
                ]
            ),
            json_values,
            max_size=5,
        ),
    )


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(PATHS), value=json_values | _resource_like())
def test_no_planted_value_causes_a_server_error(client: FlaskClient, path: list[Any], value: Any) -> None:
    response = client.post(SELECT, data=json.dumps(_plant(path, value)), content_type="application/json")
    assert response.status_code < 500, response.get_data(as_text=True)
    if response.status_code >= 400:
        assert response.get_json(force=True)["resourceType"] == "OperationOutcome"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=json_values)
def test_no_arbitrary_json_body_causes_a_server_error(client: FlaskClient, body: Any) -> None:
    response = client.post(SELECT, data=json.dumps(body), content_type="application/json")
    assert 400 <= response.status_code < 500


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200))
def test_no_byte_string_causes_a_server_error(client: FlaskClient, raw: bytes) -> None:
    response = client.post(f"{SELECT}/feedback", data=raw, content_type="application/json")
    assert 400 <= response.status_code < 500


@settings(max_examples=300, deadline=None)
@given(path=st.sampled_from(PATHS), value=json_values | _resource_like())
def test_the_compiled_schema_check_agrees_with_jsonschema(path: list[Any], value: Any) -> None:
    from cds_service.protocol.validation import compiled_check, schema_validator

    document = _plant(path, value)
    try:
        compiled_check("request")(document)
        fast_valid = True
    except Exception:  # noqa: BLE001 - any refusal counts as "invalid"
        fast_valid = False
    assert fast_valid == schema_validator("request").is_valid(document)
