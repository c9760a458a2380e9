"""Errors that name their cause, against a real FHIR server (sekmet-fhir) and the real app with trusted clients.

* a 412 says why each missing type is missing, in its OperationOutcome and in its log line: the FHIR server is not
  allowed for the client, the FHIR server refused the token, the FHIR server did not answer within the budget;
* every log line of a service call carries its hookInstance, the per-fetch lines of the fetch threads included;
* results cut short by the page bound (a next link that never ends) are unknown, and the response's data-quality
  extension says so.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from appsupport import ClientKey, make_app
from fhir_server import FhirServer
from fhir_server import fhir_server as fhir_server  # the session fixture (sekmet-fhir with the fixtures)
from flask.testing import FlaskClient
from support import slow_fhir_handler
from test_end_to_end import contrast_mri_request
from test_logs import json_log_lines

from cds_service.data_source import FhirDataSource

pytestmark = pytest.mark.integration

SELECT = "/cds-services/lumbar-imaging-order-select"
AUDIENCE = f"http://localhost{SELECT}"  # the Flask test client's URL root is http://localhost/
HOOK_INSTANCE = "5f1a0c0e-3b7d-4f1e-9a55-0c2d8e7b6a41"  # contrast_mri_request's
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
DATA_QUALITY = "cds-service.data-quality"


def mri_request(fhir_server: str, token: str) -> dict[str, Any]:
    """MRI lumbar spine without contrast, no prefetch: without patient data nothing about it can be determined."""
    path = FIXTURES / "no-patient-history-mri-wo-precondition-failed" / "request.json"
    request: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    request["hookInstance"] = HOOK_INSTANCE
    request["fhirServer"] = fhir_server
    request["fhirAuthorization"] = {
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/*.read",
        "subject": "cds-service",
    }
    return request


def trusted_app(tmp_path: Path, key: ClientKey, fhir_servers: list[str], **settings: Any) -> FlaskClient:
    clients = key.trusted_clients_file(tmp_path, fhir_servers=fhir_servers)
    return make_app(tmp_path, trusted_clients_path=str(clients), **settings).test_client()


def post(client: FlaskClient, key: ClientKey, body: dict[str, Any]) -> Any:
    return client.post(SELECT, json=body, headers={"Authorization": f"Bearer {key.token(AUDIENCE)}"})


def diagnostics(response: Any) -> str:
    body = response.get_json(force=True)
    assert body["resourceType"] == "OperationOutcome", body
    return str(body["issue"][0]["diagnostics"])


def request_line(lines: list[dict[str, Any]]) -> dict[str, Any]:
    return next(line for line in lines if line.get("event") == "request")


def test_a_fhir_server_not_allowed_for_the_client_is_named_in_the_412_and_its_log_line(
    tmp_path: Path, fhir_server: FhirServer
) -> None:
    key = ClientKey()
    client = trusted_app(tmp_path, key, fhir_servers=["https://ehr.example.org/fhir"])
    with json_log_lines() as lines:
        response = post(client, key, mri_request(fhir_server.base_url, fhir_server.token))
    assert response.status_code == 412
    cause = f"fhirServer {fhir_server.base_url} is not allowed for this client"
    assert cause in diagnostics(response)
    line = request_line(lines)
    assert line["status"] == 412 and line["hookInstance"] == HOOK_INSTANCE
    assert cause in line["diagnostics"]
    assert all(entry.get("hookInstance") == HOOK_INSTANCE for entry in lines), lines
    assert fhir_server.token not in json.dumps(lines)


def test_a_token_the_fhir_server_rejects_is_named_in_the_412(tmp_path: Path, fhir_server: FhirServer) -> None:
    key = ClientKey()
    client = trusted_app(tmp_path, key, fhir_servers=[fhir_server.base_url])
    with json_log_lines() as lines:
        response = post(client, key, mri_request(fhir_server.base_url, "not-the-servers-token"))
    assert response.status_code == 412
    assert "the FHIR server answered 401 to the service's queries (token rejected)" in diagnostics(response)
    fetches = [line for line in lines if line["message"] == "fhir fetch"]
    assert len(fetches) == 11  # one per prefetch key, each from a fetch thread
    assert {line["hookInstance"] for line in fetches} == {HOOK_INSTANCE}
    assert {line["reason"] for line in fetches} == {
        "the FHIR server answered 401 to the service's queries (token rejected)"
    }
    assert "not-the-servers-token" not in json.dumps(lines)


@contextmanager
def fhir_stub(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.block_on_close = False  # do not wait for sleeping handlers at shutdown
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/fhir"
    finally:
        server.shutdown()
        server.server_close()


def test_a_fhir_server_that_does_not_answer_in_time_is_named_in_the_412(tmp_path: Path) -> None:
    key = ClientKey()
    with fhir_stub(slow_fhir_handler(2.0)) as base:
        client = trusted_app(tmp_path, key, fhir_servers=[base], fhir_timeout=0.5)
        response = post(client, key, mri_request(base, "t"))
    assert response.status_code == 412
    assert "the FHIR server did not answer within 0.5 s" in diagnostics(response)


def test_every_log_line_of_a_call_carries_its_hook_instance(tmp_path: Path, fhir_server: FhirServer) -> None:
    key = ClientKey()
    client = trusted_app(tmp_path, key, fhir_servers=[fhir_server.base_url])
    with json_log_lines() as call_lines:
        response = post(client, key, contrast_mri_request(fhir_server.base_url, fhir_server.token))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert len(call_lines) >= 14  # authentication, 11 fetches, "prefetch resolved", the request line
    missing = [line for line in call_lines if line.get("hookInstance") != HOOK_INSTANCE]
    assert missing == []
    # The next request on the same thread does not inherit it: discovery has no hookInstance.
    with json_log_lines() as discovery_lines:
        discovery_token = key.token("http://localhost/cds-services")
        discovery = client.get("/cds-services", headers={"Authorization": f"Bearer {discovery_token}"})
    assert discovery.status_code == 200
    assert discovery_lines and all("hookInstance" not in line for line in discovery_lines)


def test_a_401_log_line_carries_the_hook_instance_of_the_refused_call(tmp_path: Path) -> None:
    key = ClientKey()
    client = trusted_app(tmp_path, key, fhir_servers=[])
    with json_log_lines() as lines:
        response = client.post(SELECT, json=mri_request("https://ehr.example.org/fhir", "t"))  # no client JWT
    assert response.status_code == 401
    assert len(lines) == 3  # the authenticator, the refusal, the request line
    assert {line["hookInstance"] for line in lines} == {HOOK_INSTANCE}


# ------------------------------------------------------------------------------------------------ paging cut short
def test_the_page_bound_against_a_real_fhir_server_leaves_the_type_unknown(fhir_server: FhirServer) -> None:
    """sekmet pages 20 results: the patient's 25 Observations need 2 pages, and the bound here is 1."""
    from test_data_source_integration import TEMPLATES, make_request

    with FhirDataSource(max_pages=1) as source:
        request = make_request(fhir_server.base_url, fhir_server.token)
        record = source.resolve(TEMPLATES, request, [fhir_server.base_url])
    assert len(record.of_type("Observation")) == 20  # the first page is kept
    assert not record.is_known("Observation")
    assert record.unavailable == {"Observation": "only the first page of results was read"}
    assert record.warnings == ("Observation: only the first page of results was read; the rest is unknown",)


class EndlessPagesHandler(BaseHTTPRequestHandler):
    """Every search answers an empty page whose next link points to yet another page."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        host = f"http://127.0.0.1:{self.server.server_address[1]}"
        page = self.path.count("&page=") + 1
        body = {
            "resourceType": "Bundle",
            "type": "searchset",
            "link": [{"relation": "next", "url": f"{host}{self.path}&page={page + 1}"}],
        }
        self.send_response(200)
        self.send_header("Content-Type", "application/fhir+json")
        self.end_headers()
        self.wfile.write(json.dumps(body).encode())

    def log_message(self, *args: Any) -> None:
        pass


def test_a_next_link_that_never_ends_is_reported_in_the_data_quality_extension(tmp_path: Path) -> None:
    scenario = "mri-lumbar-wo-after-failed-nsaid-trial-with-sciatica"
    request = json.loads((FIXTURES / scenario / "request.json").read_text(encoding="utf-8"))
    request = copy.deepcopy(request)
    del request["prefetch"]["observations"]  # fetched from the FHIR server, whose next links never end
    with fhir_stub(EndlessPagesHandler) as base:
        request["fhirServer"] = base
        client = make_app(tmp_path, fhir_servers=(base,)).test_client()
        response = client.post(SELECT, json=request)
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    issues = body["extension"][DATA_QUALITY]["issue"]
    assert {
        "severity": "warning",
        "code": "incomplete",
        "diagnostics": "Observation: only the first 20 pages of results were read; the rest is unknown",
    } in issues
