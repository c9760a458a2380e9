"""Helpers shared by tests (import as ``from support import ...``; pytest puts tests/ on sys.path)."""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def services_required() -> bool:
    """True in CI (``CI`` or ``CDS_REQUIRE_SERVICES`` set): a test missing a real part fails instead of skipping."""
    return bool(os.environ.get("CI") or os.environ.get("CDS_REQUIRE_SERVICES"))


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for a server started by a test."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    """Wait until something accepts connections on 127.0.0.1:port, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


def load_bench_module(name: str) -> ModuleType:
    """Load ``bench/<name>.py`` by path: bench/ is a directory of scripts, not a package."""
    return load_script(REPO / "bench" / f"{name}.py", f"bench_{name}")


def load_script(path: Path, name: str) -> ModuleType:
    """Load a script (bench/, docs/, fixtures/: folders of scripts, not packages) as a module."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def empty_members(value: Any, path: str = "$") -> list[str]:
    """Paths of the null, "", [] and {} members of a CDS Hooks response (2.0 forbids them; ``cards`` may be [])."""
    return list(_empty_members(value, path))


def _empty_members(value: Any, path: str) -> Iterator[str]:
    if value is None or (isinstance(value, str | list | dict) and not value):
        if path != "$.cards":
            yield path
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _empty_members(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _empty_members(item, f"{path}[{index}]")



class SlowFhirHandler(BaseHTTPRequestHandler):
    """A FHIR server that answers every search with an empty searchset after ``delay`` seconds (subclass to set it)."""

    delay = 5.0

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        time.sleep(self.delay)
        body = b'{"resourceType": "Bundle", "type": "searchset"}'
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/fhir+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # the service gave up waiting: that is the point of these tests

    def log_message(self, format: str, *args: Any) -> None:
        pass


def slow_fhir_handler(delay: float) -> type[SlowFhirHandler]:
    return type("SlowFhir", (SlowFhirHandler,), {"delay": delay})
