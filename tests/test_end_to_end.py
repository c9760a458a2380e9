"""End to end: the real server (gunicorn) fetches missing prefetch from a real FHIR server (sekmet-fhir)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests
from fhir_server import running_fhir_server
from servers import running_service
from support import free_port

pytestmark = pytest.mark.integration
SELECT = "/cds-services/lumbar-imaging-order-select"


def contrast_mri_request(fhir_server: str, token: str) -> dict[str, Any]:
    """An order-select call with NO prefetch: everything must be fetched from the FHIR server."""
    return {
        "hook": "order-select",
        "hookInstance": "5f1a0c0e-3b7d-4f1e-9a55-0c2d8e7b6a41",
        "fhirServer": fhir_server,
        "fhirAuthorization": {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.read",
            "subject": "cds-service",
        },
        "context": {
            "userId": "Practitioner/pr-1",
            "patientId": "pt-lbp-1",
            "selections": ["ServiceRequest/draft-mri-1"],
            "draftOrders": {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [
                    {
                        "resource": {
                            "resourceType": "ServiceRequest",
                            "id": "draft-mri-1",
                            "status": "draft",
                            "intent": "order",
                            "code": {
                                "coding": [
                                    {
                                        "system": "http://www.ama-assn.org/go/cpt",
                                        "code": "72149",
                                        "display": "MRI lumbar spine with contrast",
                                    }
                                ]
                            },
                            "subject": {"reference": "Patient/pt-lbp-1"},
                        }
                    }
                ],
            },
        },
    }


def fetch_outcomes(metrics_text: str) -> dict[str, float]:
    outcomes: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if line.startswith("cds_fhir_fetch_total{"):
            label = line.split('outcome="', 1)[1].split('"', 1)[0]
            outcomes[label] = outcomes.get(label, 0.0) + float(line.split()[-1])
    return outcomes


def test_missing_prefetch_is_fetched_from_the_fhir_server_with_the_token() -> None:
    with running_fhir_server() as fhir:
        env = {"CDS_FHIR_SERVERS": fhir.base_url}
        with running_service(env, workers=1) as service:
            response = requests.post(
                f"{service.base_url}{SELECT}", json=contrast_mri_request(fhir.base_url, fhir.token), timeout=15
            )
            assert response.status_code == 200, response.text
            metrics = requests.get(f"{service.base_url}/metrics", timeout=5).text
    # Every prefetch key of the definition was fetched, and the FHIR server (which requires the
    # bearer token) answered each one: the token was sent, to that server only.
    assert fetch_outcomes(metrics) == {"ok": 11.0}
    body = response.json()
    assert "extension" not in body or "cds-service.data-quality" not in body.get("extension", {})


def test_a_fhir_server_that_is_down_costs_at_most_the_timeout() -> None:
    down = f"http://127.0.0.1:{free_port()}/fhir"
    with running_service({"CDS_FHIR_SERVERS": down, "CDS_FHIR_TIMEOUT": "1.0"}, workers=1) as service:
        started = time.monotonic()
        response = requests.post(f"{service.base_url}{SELECT}", json=contrast_mri_request(down, "t"), timeout=15)
        elapsed = time.monotonic() - started
        metrics = requests.get(f"{service.base_url}/metrics", timeout=5).text
    assert response.status_code in (200, 412), response.text
    assert elapsed < 1.0 + 1.0
    assert fetch_outcomes(metrics).get("ok", 0.0) == 0.0


def test_a_fhir_server_that_is_not_allowed_receives_no_call() -> None:
    with running_fhir_server() as fhir:
        # The service may call only another server; the request names sekmet.
        with running_service({"CDS_FHIR_SERVERS": "https://elsewhere.example.org/fhir"}, workers=1) as service:
            response = requests.post(
                f"{service.base_url}{SELECT}", json=contrast_mri_request(fhir.base_url, fhir.token), timeout=15
            )
            metrics = requests.get(f"{service.base_url}/metrics", timeout=5).text
        fhir_log = fhir.log_path.read_text(errors="replace")
    assert response.status_code in (200, 412), response.text
    assert fetch_outcomes(metrics) == {"not_allowed": 11.0}
    # The FHIR server saw no read and no search (its only GET is the harness's start-up probe).
    assert [line for line in fhir_log.splitlines() if "GET /fhir/" in line and "/fhir/metadata" not in line] == []
