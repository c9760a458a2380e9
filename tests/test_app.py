"""The HTTP service: endpoints, status codes, CORS, OperationOutcome errors and authentication wiring."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from appsupport import ClientKey, make_app
from flask.testing import FlaskClient
from test_protocol_validation import minimal_request

from cds_service.protocol.validation import validate_against

SELECT = "/cds-services/lumbar-imaging-order-select"
SIGN = "/cds-services/lumbar-imaging-order-sign"


@pytest.fixture
def client(tmp_path: Path) -> FlaskClient:
    return make_app(tmp_path).test_client()


def assert_operation_outcome(response: Any, status: int, contains: str = "") -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    body = response.get_json(force=True)
    assert body["resourceType"] == "OperationOutcome"
    diagnostics = body["issue"][0]["diagnostics"]
    assert contains in diagnostics
    assert "Traceback" not in response.get_data(as_text=True)
    return dict(body)


def test_factory_builds_a_testing_app(tmp_path: Path) -> None:
    assert make_app(tmp_path).testing


def test_discovery_lists_both_services_without_private_settings(client: FlaskClient) -> None:
    response = client.get("/cds-services")
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    services = response.get_json()["services"]
    assert {s["id"]: s["hook"] for s in services} == {
        "lumbar-imaging-order-select": "order-select",
        "lumbar-imaging-order-sign": "order-sign",
    }
    assert all("_config" not in s and s["description"] and s["prefetch"] for s in services)


@pytest.mark.parametrize("path", ["/cds-services", SELECT, f"{SELECT}/feedback", "/healthz"])
def test_cors_preflight_on_every_route(client: FlaskClient, path: str) -> None:
    response = client.options(
        path,
        headers={
            "Origin": "https://sandbox.cds-hooks.org",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "Authorization" in response.headers["Access-Control-Allow-Headers"]
    assert "POST" in response.headers["Access-Control-Allow-Methods"]


def test_service_call_answers_a_valid_response(client: FlaskClient) -> None:
    response = client.post(SELECT, json=minimal_request())
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    validate_against("response", response.get_json())


def test_order_sign_call(client: FlaskClient) -> None:
    response = client.post(SIGN, json=minimal_request("order-sign"))
    assert response.status_code == 200
    validate_against("response", response.get_json())


def test_unknown_service_is_404(client: FlaskClient) -> None:
    assert_operation_outcome(
        client.post("/cds-services/nope", json=minimal_request()), 404, "no CDS service with id 'nope'"
    )


def test_unknown_path_is_404(client: FlaskClient) -> None:
    assert_operation_outcome(client.get("/nowhere"), 404, "no such endpoint")


def test_wrong_method_is_405(client: FlaskClient) -> None:
    assert_operation_outcome(client.get(SELECT), 405, "GET is not allowed")
    assert_operation_outcome(client.delete("/cds-services"), 405)


def test_not_json_is_415(client: FlaskClient) -> None:
    response = client.post(SELECT, data="hook=order-select", content_type="application/x-www-form-urlencoded")
    assert_operation_outcome(response, 415, "Content-Type must be application/json")


def test_json_with_charset_is_accepted(client: FlaskClient) -> None:
    response = client.post(SELECT, data=json.dumps(minimal_request()), content_type="application/json; charset=utf-8")
    assert response.status_code == 200


def test_body_too_large_is_413(tmp_path: Path) -> None:
    client = make_app(tmp_path, max_body_bytes=1000).test_client()
    body = minimal_request()
    body["extension"] = {"padding": "x" * 2000}
    assert_operation_outcome(client.post(SELECT, json=body), 413, "exceeds 1000 bytes")


def test_malformed_json_is_400(client: FlaskClient) -> None:
    assert_operation_outcome(client.post(SELECT, data="{", content_type="application/json"), 400, "not valid JSON")


def test_missing_field_is_400_naming_it(client: FlaskClient) -> None:
    body = minimal_request()
    del body["context"]["patientId"]
    assert_operation_outcome(client.post(SELECT, json=body), 400, "context: 'patientId' is a required property")


def test_hook_of_another_service_is_400(client: FlaskClient) -> None:
    assert_operation_outcome(client.post(SELECT, json=minimal_request("order-sign")), 400, "does not match service")


def test_deep_nesting_is_400(client: FlaskClient) -> None:
    body = minimal_request()
    nested: Any = {}
    for _ in range(100):
        nested = {"n": nested}
    body["extension"] = nested
    assert_operation_outcome(client.post(SELECT, json=body), 400, "nested deeper than")


FEEDBACK = {
    "feedback": [
        {
            "card": "9368d37b-283f-44a0-93ea-547cebab93ed",
            "outcome": "overridden",
            "overrideReason": {
                "reason": {
                    "code": "proceed-with-order",
                    "system": "http://lumbar-imaging-cds.example.org/fhir/CodeSystem/override-reason",
                }
            },
            "outcomeTimestamp": "2026-11-27T10:05:31Z",
        }
    ]
}


def test_feedback_is_stored_once(client: FlaskClient) -> None:
    first = client.post(f"{SELECT}/feedback", json=FEEDBACK)
    assert first.status_code == 200
    assert first.get_json() == {"received": 1, "stored": 1}
    again = client.post(f"{SELECT}/feedback", json=FEEDBACK)
    assert again.get_json() == {"received": 1, "stored": 0}


def test_bad_feedback_is_400(client: FlaskClient) -> None:
    body = {"feedback": [{"card": "x", "outcome": "maybe", "outcomeTimestamp": "2026-11-27T10:05:31Z"}]}
    assert_operation_outcome(client.post(f"{SELECT}/feedback", json=body), 400, "feedback[0].outcome")


def test_feedback_for_unknown_service_is_404(client: FlaskClient) -> None:
    assert_operation_outcome(client.post("/cds-services/nope/feedback", json=FEEDBACK), 404)


def test_health_readiness_and_metrics(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["checks"] == {"definitions": True, "store": True}
    client.post(SELECT, json=minimal_request())
    text = client.get("/metrics").get_data(as_text=True)
    assert 'cds_requests_total{endpoint="call_service",service="lumbar-imaging-order-select",status="200"}' in text
    assert "cds_request_duration_seconds_bucket" in text


class TestAuthentication:
    @pytest.fixture
    def key(self) -> ClientKey:
        return ClientKey()

    @pytest.fixture
    def secured(self, tmp_path: Path, key: ClientKey) -> FlaskClient:
        path = key.trusted_clients_file(tmp_path)
        return make_app(tmp_path, trusted_clients_path=str(path), public_url="https://cds.example.org").test_client()

    @pytest.mark.parametrize(
        ("method", "path"), [("get", "/cds-services"), ("post", SELECT), ("post", f"{SELECT}/feedback")]
    )
    def test_missing_token_is_401_without_details(self, secured: FlaskClient, method: str, path: str) -> None:
        response = getattr(secured, method)(path, json=minimal_request())
        body = assert_operation_outcome(response, 401)
        assert body["issue"][0]["diagnostics"] == "Authentication required"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")

    def test_valid_token_for_the_endpoint_is_accepted(self, secured: FlaskClient, key: ClientKey) -> None:
        token = key.token("https://cds.example.org/cds-services/lumbar-imaging-order-select")
        response = secured.post(SELECT, json=minimal_request(), headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200

    def test_token_for_another_endpoint_is_refused(self, secured: FlaskClient, key: ClientKey) -> None:
        token = key.token("https://cds.example.org/cds-services/lumbar-imaging-order-sign")
        response = secured.post(SELECT, json=minimal_request(), headers={"Authorization": f"Bearer {token}"})
        assert_operation_outcome(response, 401)

    def test_replayed_token_is_refused(self, secured: FlaskClient, key: ClientKey) -> None:
        token = key.token("https://cds.example.org/cds-services")
        headers = {"Authorization": f"Bearer {token}"}
        assert secured.get("/cds-services", headers=headers).status_code == 200
        assert secured.get("/cds-services", headers=headers).status_code == 401

    def test_health_endpoints_and_preflight_need_no_token(self, secured: FlaskClient) -> None:
        assert secured.get("/healthz").status_code == 200
        assert secured.options(SELECT).status_code == 200


def test_a_failing_store_never_blocks_cards_and_feedback_is_not_acknowledged(tmp_path: Path) -> None:
    app = make_app(tmp_path, database_url="postgresql://postgres@127.0.0.1:1/test")
    client = app.test_client()
    assert client.post(SELECT, json=minimal_request()).status_code == 200
    # Still ready: the cards do not need the store. The body and the metric say that it is down.
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json == {"status": "ready", "store": "down", "checks": {"definitions": True, "store": False}}
    assert "cds_store_up 0.0" in client.get("/metrics").text
    response = client.post(f"{SELECT}/feedback", json=FEEDBACK)
    body = assert_operation_outcome(response, 503)
    assert "postgres" not in json.dumps(body)
    # The audit record of the call above could not be written: the writer retries it (here until close)
    # and then counts it as dropped.
    store = app.extensions["cds_service"].store
    store.close()
    assert store.audit_dropped_total() == 1
