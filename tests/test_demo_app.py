"""The demo page's server side: routes only in demo mode, its data, and its patients' meaning over time.

The browser tests are in ``test_demo_e2e.py``; these run without a browser.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import responses
from appsupport import make_app
from flask.testing import FlaskClient
from servers import cds_service_command, running_service, stop_process_group
from support import REPO, free_port, wait_for_port

from cds_service.app import create_app
from cds_service.demo import build_patients
from cds_service.demo.catalogue import days_since, orderables, patients_for, shift_dates
from cds_service.errors import CdsError
from cds_service.offline import evaluate_request
from cds_service.settings import Settings

FIXTURES = REPO / "fixtures"
PAMA_RATING = "http://fhir.org/argonaut/Extension/pama-rating"
SELECT = "/cds-services/lumbar-imaging-order-select"


@pytest.fixture
def demo_client(tmp_path: Path) -> Iterator[FlaskClient]:
    app = create_app(Settings(data_dir=str(tmp_path / "data")), {"TESTING": True}, demo=True)
    yield app.test_client()


def _ratings(response: dict[str, Any]) -> dict[str, str]:
    ratings = {}
    for action in response.get("systemActions", ()):
        resource = action["resource"]
        for extension in resource.get("extension", ()):
            if extension["url"] == PAMA_RATING:
                code = next(
                    c["code"]
                    for c in extension["valueCodeableConcept"]["coding"]
                    if c["system"].endswith("pama-rating")
                )
                ratings[f"{resource['resourceType']}/{resource['id']}"] = code
    return ratings


# -- demo mode only ----------------------------------------------------------------------------


def test_production_app_has_no_demo_routes(tmp_path: Path) -> None:
    client = make_app(tmp_path).test_client()
    for path in ("/demo/", "/demo/static/app.js", "/demo/api/patients", "/demo/api/orderables"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.json is not None and response.json["resourceType"] == "OperationOutcome"


def _fetch(client: FlaskClient, path: str) -> tuple[int, str, dict[str, str], str]:
    """GET a path and close the response (static files are streamed from an open file)."""
    with client.get(path) as response:
        return response.status_code, response.mimetype, dict(response.headers), response.get_data(as_text=True)


def test_demo_page_and_assets_are_served_with_a_strict_policy(demo_client: FlaskClient) -> None:
    status, mimetype, headers, html = _fetch(demo_client, "/demo/")
    assert status == 200 and mimetype == "text/html"
    policy = headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy and "connect-src 'self'" in policy
    # Every asset the page references is served by the package, from this origin: no CDN.
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert "static/app.js" in assets and "static/demo.css" in assets
    for asset in assets:
        assert not re.match(r"^(https?:)?//", asset), asset
        if asset.startswith("static/"):
            assert _fetch(demo_client, f"/demo/{asset}")[0] == 200, asset
    for module in ("app.js", "cds.js", "markdown.js"):
        status, mimetype, _, text = _fetch(demo_client, f"/demo/static/{module}")
        assert status == 200 and mimetype in ("text/javascript", "application/javascript")
        imports = re.findall(r'from "([^"]+)"', text)
        assert all(name.startswith("./") for name in imports), imports  # modules of the package only
    assert demo_client.get("/demo").status_code == 308


def test_the_service_routes_are_unchanged_in_demo_mode(demo_client: FlaskClient) -> None:
    discovery = demo_client.get("/cds-services")
    assert discovery.status_code == 200
    assert {service["hook"] for service in discovery.json["services"]} == {"order-select", "order-sign"}


# -- patients ----------------------------------------------------------------------------------


def test_patient_catalogue_is_generated_from_the_fixtures() -> None:
    committed = (REPO / "cds_service" / "demo" / "data" / "patients.json").read_text("utf-8")
    assert committed == build_patients.render(build_patients.build_catalogue(FIXTURES)), (
        "cds_service/demo/data/patients.json is out of date: run python -m cds_service.demo.build_patients"
    )


def test_patient_catalogue_covers_the_stories_the_page_promises() -> None:
    keys = {patient["key"] for patient in patients_for(date(2027, 1, 1))["patients"]}
    assert {
        "acute-lbp",
        "failed-therapy-radiculopathy",
        "cauda-equina",
        "prostate-cancer",
        "osteoporosis",
        "prior-laminectomy",
        "pacemaker",
        "ckd-egfr-22",
        "no-record",
    } <= keys


def test_shift_dates_moves_dates_only() -> None:
    record = {
        "birthDate": "1977-03-25",
        "onsetDateTime": "2026-09-25T08:30:00Z",
        "period": {"start": "2026-02-28", "end": "2026-12-31"},
        "note": [{"text": "Implanted 2022-06-05."}],
        "code": {"coding": [{"code": "8640"}, {"code": "30679-5"}, {"code": "128196005"}]},
        "value": "2026-13-45",
        "count": 2026,
        "nothing": None,
    }
    moved = shift_dates(record, 3)
    assert moved["birthDate"] == "1977-03-28"
    assert moved["onsetDateTime"] == "2026-09-28T08:30:00Z"
    assert moved["period"] == {"start": "2026-03-03", "end": "2027-01-03"}
    assert moved["note"][0]["text"] == "Implanted 2022-06-08."
    assert moved["code"] == record["code"]
    assert moved["value"] == "2026-13-45"  # not a calendar date
    assert moved["count"] == 2026 and moved["nothing"] is None
    assert shift_dates(record, 0) == record


def test_no_demo_record_lies_in_the_future() -> None:
    today = datetime.now(UTC).date()
    for patient in patients_for(today)["patients"]:
        # Effective dates may not pass today (ends of validity periods and the like may).
        for resource in _resources(patient["prefetch"]):
            for key in ("onsetDateTime", "recordedDate", "authoredOn", "effectiveDateTime", "performedDateTime"):
                if key in resource:
                    assert resource[key][:10] <= today.isoformat(), (patient["key"], key, resource[key])


def _resources(prefetch: dict[str, Any] | None) -> Iterator[dict[str, Any]]:
    for value in (prefetch or {}).values():
        if isinstance(value, dict) and value.get("resourceType") == "Bundle":
            yield from (entry["resource"] for entry in value.get("entry", ()))
        elif isinstance(value, dict):
            yield value


@pytest.mark.parametrize("patient", build_patients.PATIENTS, ids=lambda patient: patient.key)
def test_a_demo_patient_means_later_what_its_scenario_meant(patient: build_patients.DemoPatient) -> None:
    """The scenario's request, moved to a later day, gets the scenario's answer with the same dates moved.

    Exact equality: every rating, card, duration ("8 weeks") and look-back is the same, so a demo
    patient tells its story whenever the demo runs.
    """
    folder = FIXTURES / patient.scenario
    request = json.loads((folder / "request.json").read_text("utf-8"))
    expected = json.loads((folder / "expected.json").read_text("utf-8"))
    recorded_at = json.loads((folder / "scenario.json").read_text("utf-8"))["now"]
    days = days_since(recorded_at, date(2029, 3, 1))  # years later: unshifted records would tell other stories
    now = datetime.fromisoformat(recorded_at.replace("Z", "+00:00")) + timedelta(days=days)
    try:
        response = evaluate_request(shift_dates(request, days), now=now, settings=Settings())
    except CdsError as error:  # the scenario answers with an error (412): the moved one must too
        assert error.to_operation_outcome() == expected
        return
    assert response == shift_dates(expected, days)


# -- orderables --------------------------------------------------------------------------------


def _order_select(client: FlaskClient, patient: dict[str, Any], resource: dict[str, Any]) -> dict[str, Any]:
    resource = {**resource, "id": "draft-1", "subject": {"reference": f"Patient/{patient['patientId']}"}}
    if "orderReason" in patient:
        resource["reasonCode"] = patient["orderReason"]
    body = {
        "hook": "order-select",
        "hookInstance": str(uuid.uuid4()),
        "context": {
            "userId": patient["userId"],
            "patientId": patient["patientId"],
            "selections": [f"{resource['resourceType']}/draft-1"],
            "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": resource}]},
        },
        "prefetch": patient["prefetch"],
    }
    answer = client.post(SELECT, json=body)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    result: dict[str, Any] = answer.json
    return result


def test_every_orderable_is_recognised_as_the_page_says(demo_client: FlaskClient) -> None:
    """Lumbar studies are rated; the back-pain orders ask for the MRI after failed therapy; the rest say nothing."""
    patients = {patient["key"]: patient for patient in demo_client.get("/demo/api/patients").json["patients"]}
    failed_therapy = patients["failed-therapy-radiculopathy"]
    items = orderables()["orderables"]
    assert {item["group"] for item in items} == {"Imaging", "Medication", "Referral and procedure"}
    for item in items:
        response = _order_select(demo_client, failed_therapy, item["resource"])
        rated = _ratings(response)
        created = [
            action["resource"]
            for card in response["cards"]
            for suggestion in card.get("suggestions", ())
            for action in suggestion.get("actions", ())
            if action["type"] == "create"
        ]
        if item["id"] == "cta-chest":
            assert rated == {} and response["cards"] == [], "a non-lumbar study is neither rated nor commented"
        elif item["group"] == "Imaging":
            assert set(rated) == {"ServiceRequest/draft-1"}, item["id"]
        elif item["id"] == "pt-referral":
            assert rated == {} and response["cards"] == [], "physical therapy raises no imaging question"
        else:  # NSAIDs, steroids, injection and surgery/pain referrals after failed therapy: create the MRI
            assert rated == {}, item["id"]
            codes = {coding["code"] for resource in created for coding in resource["code"]["coding"]}
            assert "72148" in codes, item["id"]


# -- FHIR server mode --------------------------------------------------------------------------


def test_record_helper_refuses_servers_the_service_may_not_call(demo_client: FlaskClient) -> None:
    answer = demo_client.post("/demo/api/record", json={"fhirServer": "https://fhir.example.org/r4", "patientId": "p1"})
    assert answer.status_code == 400
    diagnostics = answer.json["issue"][0]["diagnostics"]
    assert "https://fhir.example.org/r4 is not allowed" in diagnostics and "CDS_FHIR_SERVERS" in diagnostics


@pytest.mark.parametrize(
    "headers",
    [{"Sec-Fetch-Site": "cross-site"}, {"Origin": "https://attacker.example"}, {"Sec-Fetch-Site": "same-site"}],
)
def test_record_helper_refuses_other_sites_pages(tmp_path: Path, headers: dict[str, str]) -> None:
    base = "https://fhir.test/r4"
    app = create_app(Settings(data_dir=str(tmp_path / "data"), fhir_servers=(base,)), {"TESTING": True}, demo=True)
    answer = app.test_client().post("/demo/api/record", json={"fhirServer": base, "patientId": "p1"}, headers=headers)
    assert answer.status_code == 400
    assert "same-origin" in answer.json["issue"][0]["diagnostics"]


@pytest.mark.parametrize(
    "body",
    [
        {"fhirServer": "ftp://x", "patientId": "p1"},
        {"fhirServer": "https://x", "patientId": "a b"},
        ["not", "an object"],
    ],
)
def test_record_helper_rejects_bad_input(demo_client: FlaskClient, body: Any) -> None:
    answer = demo_client.post("/demo/api/record", json=body)
    assert answer.status_code == 400
    assert answer.json["resourceType"] == "OperationOutcome"


@responses.activate
def test_record_helper_reads_through_the_service_data_source(tmp_path: Path) -> None:
    base = "https://fhir.test/r4"
    app = create_app(Settings(data_dir=str(tmp_path / "data"), fhir_servers=(base,)), {"TESTING": True}, demo=True)
    patient = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1980-01-01"}
    condition = {"resourceType": "Condition", "id": "c1", "code": {"text": "Low back pain"}}
    responses.get(f"{base}/Patient/p1", json=patient)
    responses.get(
        f"{base}/Condition", json={"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": condition}]}
    )
    # Every other query of the service definition fails (responses refuses unregistered URLs): those
    # types become unknown, not empty.
    answer = app.test_client().post(
        "/demo/api/record",
        json={"fhirServer": base, "patientId": "p1", "accessToken": "secret-token"},
        headers={"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"},  # as the page sends it
    )
    assert answer.status_code == 200, answer.get_data(as_text=True)
    body = answer.json
    assert body["resources"]["Patient"] == [patient]
    assert body["resources"]["Condition"] == [condition]
    assert "MedicationRequest" in body["unavailable"]
    sent = [call.request for call in responses.calls]
    assert all(request.headers.get("Authorization") == "Bearer secret-token" for request in sent)


# -- the command -------------------------------------------------------------------------------


def _run_command(args: list[str], tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """Start the installed console script; its output goes to a file (a pipe could fill up)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    env["CDS_DATA_DIR"] = str(tmp_path / "data")
    log_path = tmp_path / "output.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*cds_service_command(), *args], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    return process, log_path


def _stop(process: subprocess.Popen[bytes], log_path: Path) -> str:
    stop_process_group(process)
    return log_path.read_text(errors="replace")


@pytest.mark.integration
def test_cds_service_demo_serves_the_page_and_serve_does_not(tmp_path: Path) -> None:
    port = free_port()
    demo, log_path = _run_command(["demo", "--port", str(port)], tmp_path)
    try:
        wait_for_port(port, timeout=30)
        base = f"http://127.0.0.1:{port}"
        page = requests.get(f"{base}/demo/", timeout=10)
        assert page.status_code == 200 and "Order entry" in page.text
        assert requests.get(f"{base}/demo/api/patients", timeout=10).json()["patients"]
        assert requests.get(f"{base}/cds-services", timeout=10).status_code == 200
    finally:
        output = _stop(demo, log_path)
    assert f"http://127.0.0.1:{port}/demo/" in output

    with running_service() as service:
        assert requests.get(f"{service.base_url}/demo/", timeout=10).status_code == 404
        assert requests.get(f"{service.base_url}/cds-services", timeout=10).status_code == 200


def test_cds_service_demo_keeps_to_loopback(tmp_path: Path) -> None:
    process, log_path = _run_command(["demo", "--host", "0.0.0.0", "--port", str(free_port())], tmp_path)
    try:
        assert process.wait(timeout=30) == 2
    finally:
        output = _stop(process, log_path)
    assert "refusing to bind 0.0.0.0" in output
