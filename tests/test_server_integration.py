"""The real server: ``cds-service serve`` under gunicorn, on a loopback port, with its SQLite store."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests
from appsupport import ClientKey
from servers import cds_service_command, running_service, worker_pids
from test_app import FEEDBACK
from test_protocol_validation import minimal_request

from cds_service.protocol.validation import validate_against

pytestmark = pytest.mark.integration
SELECT = "/cds-services/lumbar-imaging-order-select"


def test_serve_answers_discovery_services_feedback_and_metrics() -> None:
    with running_service() as service, requests.Session() as http:
        discovery = http.get(f"{service.base_url}/cds-services", timeout=5)
        assert discovery.status_code == 200
        assert len(discovery.json()["services"]) == 2
        for _ in range(4):
            response = http.post(f"{service.base_url}{SELECT}", json=minimal_request(), timeout=5)
            assert response.status_code == 200
            validate_against("response", response.json())
        assert http.post(f"{service.base_url}{SELECT}/feedback", json=FEEDBACK, timeout=5).status_code == 200
        assert http.get(f"{service.base_url}/readyz", timeout=5).status_code == 200
        metrics = http.get(f"{service.base_url}/metrics", timeout=5).text
        # Multi-process mode: the counters of both workers are summed into one series.
        line = next(
            line
            for line in metrics.splitlines()
            if line.startswith(
                'cds_requests_total{endpoint="call_service",service="lumbar-imaging-order-select",status="200"}'
            )
        )
        assert float(line.split()[-1]) == 4.0
        log = service.log_text()
    assert '"event": "startup"' in log or '"event":"startup"' in log
    assert "mode: OPEN" in log


def test_acknowledged_feedback_survives_a_killed_worker() -> None:
    with running_service(workers=1) as service, requests.Session() as http:
        body = {"feedback": [dict(FEEDBACK["feedback"][0], card="4ab5e4d6-2d7c-4f5e-9a0e-9d0c8a1b2c3d")]}
        assert http.post(f"{service.base_url}{SELECT}/feedback", json=body, timeout=5).json()["stored"] == 1
        (worker,) = worker_pids(service.process.pid)
        os.kill(worker, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            pids = worker_pids(service.process.pid)
            if pids and pids != [worker]:
                break
            time.sleep(0.1)
        # The new worker finds the item already stored: it was durable when acknowledged.
        for _ in range(50):
            try:
                again = http.post(f"{service.base_url}{SELECT}/feedback", json=body, timeout=5)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        assert again.json() == {"received": 1, "stored": 0}


def test_serve_refuses_a_public_bind_in_open_mode() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    result = subprocess.run(
        [*cds_service_command(), "serve", "--host", "0.0.0.0", "--port", "1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2
    assert "refusing to bind 0.0.0.0: no trusted clients are configured" in result.stderr
    assert "CDS_ALLOW_OPEN=1" in result.stderr


def test_logs_carry_no_token_and_no_patient_identifier() -> None:
    secret_token = "tok-SECRET-4f1c9a"
    patient_id = "PATIENT-8823-ZX"
    body = minimal_request()
    body["context"]["patientId"] = patient_id
    body["fhirServer"] = "https://ehr.example.org/fhir"  # not allowed: no call is made
    body["fhirAuthorization"] = {
        "access_token": secret_token,
        "token_type": "Bearer",
        "expires_in": 60,
        "scope": "patient/*.read",
        "subject": "cds-service",
    }
    with running_service() as service, requests.Session() as http:
        assert http.post(f"{service.base_url}{SELECT}", json=body, timeout=10).status_code == 200
        bad = dict(body, hook="order-sign")
        assert http.post(f"{service.base_url}{SELECT}", json=bad, timeout=10).status_code == 400
        http.get(f"{service.base_url}/cds-services", headers={"Authorization": f"Bearer {secret_token}"}, timeout=5)
        time.sleep(0.3)
        log = service.log_text()
    assert body["hookInstance"] in log  # the log is there and correlates by hookInstance ...
    assert secret_token not in log  # ... but never carries the token
    assert patient_id not in log


def test_replayed_token_is_refused_across_two_service_processes_sharing_redis(tmp_path: Path, redis_url: str) -> None:
    key = ClientKey()
    clients = key.trusted_clients_file(tmp_path)
    env = {
        "CDS_TRUSTED_CLIENTS": str(clients),
        "CDS_REDIS_URL": redis_url,
        # Both replicas sit behind one public URL, as behind a load balancer: the same token is valid for both.
        "CDS_PUBLIC_URL": "https://cds.example.org",
    }
    token = key.token("https://cds.example.org/cds-services")
    headers = {"Authorization": f"Bearer {token}"}
    with running_service(env, workers=1) as first, running_service(env, workers=1) as second:
        assert requests.get(f"{first.base_url}/cds-services", headers=headers, timeout=5).status_code == 200
        replay = requests.get(f"{second.base_url}/cds-services", headers=headers, timeout=5)
        assert replay.status_code == 401
        assert replay.json()["issue"][0]["diagnostics"] == "Authentication required"
        fresh = {"Authorization": f"Bearer {key.token('https://cds.example.org/cds-services')}"}
        assert requests.get(f"{second.base_url}/cds-services", headers=fresh, timeout=5).status_code == 200
        log = second.log_text()
    assert "authentication refused" in log
    assert token not in log
