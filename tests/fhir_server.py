"""A real FHIR R4 server for integration tests: sekmet-fhir on 127.0.0.1, loaded with fixtures.

Two ways to use it:

* the context manager, anywhere (an end-to-end test, a benchmark, a shell session)::

      from fhir_server import running_fhir_server
      with running_fhir_server() as server:
          requests.get(f"{server.base_url}/Patient/pt-lbp-1", headers=server.auth_headers)

* the session-scoped pytest fixture ``fhir_server`` (load it with ``pytest_plugins = ("fhir_server",)``
  in a test module, or once in ``tests/conftest.py``).

The server runs as a subprocess (``python -m sekmet.cli serve``) with a temporary configuration
and SQLite data directory, bound to loopback on a free port, and requires a bearer token (so a test
proves that the token was sent). Resources from ``fixtures/fhir-server/*.json`` are PUT in file-name
order; a file holds one resource or a Bundle whose entries are PUT one by one.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from support import free_port

FIXTURES_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "fhir-server"
STARTUP_TIMEOUT = 60.0


@dataclass(frozen=True)
class FhirServer:
    """A running sekmet-fhir server."""

    base_url: str  # e.g. http://127.0.0.1:40123/fhir (no trailing slash)
    token: str  # the bearer token the server accepts
    port: int
    data_dir: Path
    log_path: Path

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "Accept": "application/fhir+json"}

    def put(self, resource: Mapping[str, Any]) -> None:
        """Create or replace one resource (PUT [type]/[id])."""
        _put(self.base_url, self.token, resource)


def fixture_resources(directory: Path = FIXTURES_DIR) -> Iterator[Mapping[str, Any]]:
    """Every resource in ``directory/*.json``, in file-name order; Bundles are unpacked into their entries."""
    for path in sorted(directory.glob("*.json")):
        document = json.loads(path.read_text(encoding="utf-8"))
        if document.get("resourceType") == "Bundle":
            yield from (entry["resource"] for entry in document.get("entry", []))
        else:
            yield document


def _put(base_url: str, token: str, resource: Mapping[str, Any]) -> None:
    url = f"{base_url}/{resource['resourceType']}/{resource['id']}"
    response = requests.put(
        url,
        data=json.dumps(resource),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"},
        timeout=10,
    )
    if response.status_code not in (200, 201):
        raise RuntimeError(f"PUT {resource['resourceType']}/{resource['id']}: {response.status_code} {response.text}")


def _wait_until_up(process: subprocess.Popen[bytes], base_url: str, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"sekmet-fhir exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if requests.get(f"{base_url}/metadata", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"sekmet-fhir did not answer /metadata in {STARTUP_TIMEOUT} s:\n{log_path.read_text()[-3000:]}")


@contextmanager
def running_fhir_server(
    resources: Iterable[Mapping[str, Any]] | None = None, *, token: str | None = None
) -> Iterator[FhirServer]:
    """Start sekmet-fhir on a free loopback port, load ``resources`` (default: the fixtures), yield it, stop it."""
    port = free_port()
    token = token or secrets.token_urlsafe(24)
    base_url = f"http://127.0.0.1:{port}/fhir"
    with tempfile.TemporaryDirectory(prefix="sekmet-") as work:
        work_dir = Path(work)
        data_dir = work_dir / "data"
        config = {
            "base_url": base_url,
            "host": "127.0.0.1",
            "port": port,
            "data_dir": str(data_dir),
            "server_auth": {"types": ["bearer"], "tokens": [token]},
            "simulator": {"enabled": False},  # no simulated lab/RIS traffic writing into the store
            "log_inbound": False,
        }
        config_path = work_dir / "settings.yaml"
        config_path.write_text(json.dumps(config), encoding="utf-8")  # JSON is valid YAML
        log_path = work_dir / "sekmet.log"
        env = {**os.environ, "SEKMET_CONFIG": str(config_path)}
        for name in ("SEKMET_BASE_URL", "SEKMET_DB", "SEKMET_PUBLIC_URL", "SEKMET_PORT"):
            env.pop(name, None)
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "sekmet.cli", "serve", "--config", str(config_path)],
                cwd=work_dir,  # sekmet writes relative paths (keys/, reports/) under its working directory
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
            try:
                _wait_until_up(process, base_url, log_path)
                for resource in fixture_resources() if resources is None else resources:
                    _put(base_url, token, resource)
                yield FhirServer(base_url, token, port, data_dir, log_path)
            finally:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)


@pytest.fixture(scope="session")
def fhir_server() -> Iterator[FhirServer]:
    """A sekmet-fhir server loaded with fixtures/fhir-server/, shared by the whole test session."""
    with running_fhir_server() as server:
        yield server
