"""The ``cds-service`` command line: evaluate, check-config, and their error messages."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from servers import cds_service_command
from test_protocol_validation import minimal_request

import cds_service


def run(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    base.update(env or {})
    return subprocess.run(
        [*cds_service_command(), *args], capture_output=True, text=True, env=base, input=stdin, timeout=120
    )


def test_public_api_is_small_and_explicit() -> None:
    assert cds_service.__all__ == ["__version__", "create_app"]
    assert callable(cds_service.create_app)


def test_evaluate_prints_the_response_json(tmp_path: Path) -> None:
    request = tmp_path / "request.json"
    request.write_text(json.dumps(minimal_request()))
    result = run("evaluate", str(request), "--now", "2026-06-01T12:00:00Z")
    assert result.returncode == 0, result.stderr
    assert "cards" in json.loads(result.stdout)


def test_evaluate_reads_standard_input() -> None:
    result = run("evaluate", "-", "--now", "2026-06-01T12:00:00Z", stdin=json.dumps(minimal_request("order-sign")))
    assert result.returncode == 0, result.stderr
    assert "cards" in json.loads(result.stdout)


def test_evaluate_bad_request_prints_an_operation_outcome(tmp_path: Path) -> None:
    body = minimal_request()
    del body["context"]["draftOrders"]
    request = tmp_path / "request.json"
    request.write_text(json.dumps(body))
    result = run("evaluate", str(request))
    assert result.returncode == 1
    outcome = json.loads(result.stdout)
    assert outcome["resourceType"] == "OperationOutcome"
    assert "context: 'draftOrders' is a required property" in outcome["issue"][0]["diagnostics"]


def test_evaluate_reports_unreadable_file_and_bad_time(tmp_path: Path) -> None:
    missing = run("evaluate", str(tmp_path / "nope.json"))
    assert missing.returncode == 2
    assert "cannot read" in missing.stderr
    request = tmp_path / "request.json"
    request.write_text(json.dumps(minimal_request()))
    bad_time = run("evaluate", str(request), "--now", "yesterday")
    assert bad_time.returncode == 2
    assert "--now 'yesterday' is not an ISO 8601 date-time" in bad_time.stderr


def test_check_config_passes_with_the_shipped_configuration() -> None:
    result = run("check-config")
    assert result.returncode == 0, result.stderr
    assert "service definitions: ok (lumbar-imaging-order-select, lumbar-imaging-order-sign)" in result.stdout
    assert "knowledge base: version" in result.stdout


def test_check_config_names_a_bad_setting() -> None:
    result = run("check-config", env={"CDS_SYSTEM_ACTIONS": "sideways"})
    assert result.returncode == 2
    assert "CDS_SYSTEM_ACTIONS='sideways'" in result.stderr


def test_check_config_names_a_bad_definition_file(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text('{"id": "broken", "hook": "order-select"}')
    result = run("check-config", env={"CDS_HOOKS_DIR": str(tmp_path)})
    assert result.returncode == 2
    assert "broken.json: missing required field 'description'" in result.stderr


def test_check_config_names_a_bad_trusted_clients_file(tmp_path: Path) -> None:
    clients = tmp_path / "clients.json"
    clients.write_text("[{")
    result = run("check-config", env={"CDS_TRUSTED_CLIENTS": str(clients)})
    assert result.returncode == 2
    assert "clients.json" in result.stderr
