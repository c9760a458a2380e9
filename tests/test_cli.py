"""The ``cds-service`` command line: evaluate, check-config, and their error messages."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from appsupport import ClientKey
from jwks_server import JwksServer
from servers import cds_service_command
from support import REPO, free_port
from test_protocol_validation import minimal_request

import cds_service


def run(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    base.update(env or {})
    return subprocess.run(
        [*cds_service_command(), *args], capture_output=True, text=True, env=base, input=stdin, timeout=120, cwd=cwd
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


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"cds-service {cds_service.__version__}"


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400", "0", "-1", "21", "soon"])
def test_check_config_refuses_a_fhir_timeout_that_is_not_a_usable_number_of_seconds(value: str) -> None:
    result = run("check-config", env={"CDS_FHIR_TIMEOUT": value})
    assert result.returncode == 2
    assert f"CDS_FHIR_TIMEOUT={value!r}: expected a positive number of at most 20" in result.stderr


def test_check_config_names_the_file_of_a_bad_threshold(tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    shutil.copytree(REPO / "hooks", hooks)
    definition = json.loads((hooks / "lumbar-imaging-order-sign.json").read_text())
    definition.setdefault("_config", {})["thresholds"] = {"symptom_weeks": -6}
    (hooks / "lumbar-imaging-order-sign.json").write_text(json.dumps(definition))
    result = run("check-config", env={"CDS_HOOKS_DIR": "hooks"}, cwd=tmp_path)
    assert result.returncode == 2
    assert (
        "configuration error: hooks/lumbar-imaging-order-sign.json: _config.thresholds.symptom_weeks: "
        "-6 is less than the minimum of 1"
    ) in result.stderr


def _clients_file(tmp_path: Path, **entry: Any) -> Path:
    key = ClientKey()
    path = tmp_path / "clients.json"
    path.write_text(json.dumps([{"iss": "https://ehr.example.org", "jwks": key.jwks, **entry}]))
    return path


def test_check_config_reports_a_trusted_client_without_fhir_servers(tmp_path: Path) -> None:
    clients = _clients_file(tmp_path)
    result = run("check-config", env={"CDS_TRUSTED_CLIENTS": str(clients)})
    assert result.returncode == 1
    assert f'problem: {clients}: client https://ehr.example.org: no "fhir_servers"' in result.stderr
    # An explicit empty list is a choice (a client that always sends complete prefetch): a note, not a failure.
    clients = _clients_file(tmp_path, fhir_servers=[])
    result = run("check-config", env={"CDS_TRUSTED_CLIENTS": str(clients)})
    assert result.returncode == 0, result.stderr
    assert '"fhir_servers" is empty' in result.stdout


def test_check_config_connect_reaches_each_target_and_names_the_one_that_failed(tmp_path: Path) -> None:
    key = ClientKey()
    with JwksServer(key.jwks) as good, JwksServer(key.jwks) as missing:
        missing.set_status(404)
        clients = tmp_path / "clients.json"
        entries = [
            {"iss": "https://a.example.org", "jwks_url": good.url, "fhir_servers": ["https://a.example.org/fhir"]},
            {"iss": "https://b.example.org", "jwks_url": missing.url, "fhir_servers": ["https://b.example.org/fhir"]},
        ]
        clients.write_text(json.dumps(entries))
        down = f"127.0.0.1:{free_port()}"
        env = {
            "CDS_TRUSTED_CLIENTS": str(clients),
            "CDS_DATA_DIR": str(tmp_path / "data"),
            "CDS_REDIS_URL": f"redis://{down}/0",
        }
        result = run("check-config", "--connect", env=env)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert f"connect: database (SQLite in {tmp_path / 'data'}): ok" in lines
    assert f"connect: jwks_url {good.url} (trusted client https://a.example.org): ok (1 key)" in lines
    assert f"connect: jwks_url {missing.url} (trusted client https://b.example.org): FAILED: HTTP 404" in lines
    assert any(line.startswith(f"connect: Redis redis://{down}/0: FAILED: ") for line in lines)
    problems = [line for line in result.stderr.splitlines() if line.startswith("problem: ")]
    assert len(problems) == 2
    assert problems[0].startswith(f"problem: cannot reach Redis redis://{down}/0: ")
    assert problems[1] == (
        f"problem: cannot reach jwks_url {missing.url} (trusted client https://b.example.org): HTTP 404"
    )


def test_check_config_connect_names_an_unreachable_database_without_its_password(
    tmp_path: Path, redis_url: str, postgres_url: str
) -> None:
    ok = run("check-config", "--connect", env={"CDS_DATABASE_URL": postgres_url, "CDS_REDIS_URL": redis_url})
    assert ok.returncode == 0, ok.stderr
    assert f"connect: database {postgres_url}: ok" in ok.stdout
    assert f"connect: Redis {redis_url}: ok" in ok.stdout
    port = free_port()
    result = run("check-config", "--connect", env={"CDS_DATABASE_URL": f"postgresql://cds:s3cret@127.0.0.1:{port}/cds"})
    assert result.returncode == 1
    assert f"problem: cannot reach database postgresql://cds:***@127.0.0.1:{port}/cds: " in result.stderr
    assert "s3cret" not in result.stdout + result.stderr
