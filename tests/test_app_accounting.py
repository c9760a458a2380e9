"""What the app counts and logs per request: metrics that agree with the replies, log lines that name causes and
carry no resource or patient identifiers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from appsupport import make_app
from flask.testing import FlaskClient
from prometheus_client import REGISTRY
from test_app import FEEDBACK
from test_logs import json_log_lines
from test_protocol_validation import minimal_request

SELECT = "/cds-services/lumbar-imaging-order-select"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


@pytest.fixture
def client(tmp_path: Path) -> FlaskClient:
    return make_app(tmp_path).test_client()


def sample(name: str, **labels: str) -> float:
    """A counter's current value (the default registry is process-wide: tests compare before and after)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_repeated_feedback_post_is_counted_as_stored_once(client: FlaskClient) -> None:
    service = "lumbar-imaging-order-select"
    stored_before = sample("cds_feedback_stored_total", service=service)
    received_before = sample("cds_feedback_items_total", service=service, outcome="overridden")
    replies = [client.post(f"{SELECT}/feedback", json=FEEDBACK).get_json() for _ in range(2)]
    assert replies == [{"received": 1, "stored": 1}, {"received": 1, "stored": 0}]
    # The metric says what the replies said: one item stored; two received.
    assert sample("cds_feedback_stored_total", service=service) - stored_before == 1
    assert sample("cds_feedback_items_total", service=service, outcome="overridden") - received_before == 2


@pytest.mark.parametrize(
    ("method", "path", "endpoint", "service"),
    [
        ("get", SELECT, "call_service", "lumbar-imaging-order-select"),
        ("delete", "/cds-services", "discovery", ""),
        ("get", f"{SELECT}/feedback", "feedback", "lumbar-imaging-order-select"),
        ("put", "/cds-services/nope", "call_service", "unknown"),
    ],
)
def test_a_405_is_counted_and_logged_under_its_route(
    client: FlaskClient, method: str, path: str, endpoint: str, service: str
) -> None:
    labels = {"endpoint": endpoint, "service": service, "status": "405"}
    before = sample("cds_requests_total", **labels)
    with json_log_lines() as lines:
        response = getattr(client, method)(path)
    assert response.status_code == 405
    assert sample("cds_requests_total", **labels) - before == 1
    (line,) = [line for line in lines if line.get("event") == "request"]
    assert line["status"] == 405 and line["endpoint"] == f"cds.{endpoint}"
    assert f"{method.upper()} is not allowed" in line["diagnostics"]


def test_a_data_quality_warning_is_logged_without_the_resource_id(client: FlaskClient) -> None:
    scenario = "invalid-condition-in-prefetch-is-skipped"
    request = json.loads((FIXTURES / scenario / "request.json").read_text(encoding="utf-8"))
    with json_log_lines() as lines:
        response = client.post(SELECT, json=request)
    assert response.status_code == 200
    # The response tells the client which resource it was ...
    issues = response.get_json()["extension"]["cds-service.data-quality"]["issue"]
    assert issues[0]["diagnostics"] == "Condition/cond-invalid skipped: onsetDateTime: value_error"
    # ... the log says what kind of problem, and never which record.
    (warning,) = [line for line in lines if line["message"].startswith("data quality")]
    assert warning["message"] == "data quality: Condition skipped: onsetDateTime: value_error"
    assert warning["hookInstance"] == request["hookInstance"]
    text = json.dumps(lines)
    assert "cond-invalid" not in text
    assert request["context"]["patientId"] not in text


def test_a_400_log_line_names_the_member_but_never_echoes_the_value(client: FlaskClient) -> None:
    body: dict[str, Any] = minimal_request()
    body["context"]["patientId"] = 918273645  # a patient identifier in the wrong type
    with json_log_lines() as lines:
        response = client.post(SELECT, json=body)
    assert response.status_code == 400
    assert "918273645" in response.get_json()["issue"][0]["diagnostics"]  # the client is told what it sent
    (line,) = [line for line in lines if line.get("event") == "request"]
    assert line["errorAt"] == "context.patientId" and line["hookInstance"] == body["hookInstance"]
    assert "918273645" not in json.dumps(lines)


def test_a_412_log_line_says_why(client: FlaskClient) -> None:
    request = json.loads((FIXTURES / "no-patient-history-mri-wo-precondition-failed" / "request.json").read_text())
    with json_log_lines() as lines:
        response = client.post(SELECT, json=request)
    assert response.status_code == 412
    (line,) = [line for line in lines if line.get("event") == "request"]
    diagnostics = response.get_json()["issue"][0]["diagnostics"]
    assert line["diagnostics"] == diagnostics
    assert "the request has no fhirServer to fetch from" in diagnostics
    assert line["hookInstance"] == request["hookInstance"]
