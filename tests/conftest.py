"""Shared fixtures.

Tests that need PostgreSQL or Redis use the real servers on 127.0.0.1. When a server is not
reachable the test is skipped with a visible reason on a developer machine, and *fails* in CI
(``CI`` or ``CDS_REQUIRE_SERVICES`` set): ``.ci/run`` starts both servers, so a skip there
would hide a broken setup.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from cds_service.knowledge import Knowledge, load_knowledge

POSTGRES_URL = os.environ.get("CDS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("CDS_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def _services_required() -> bool:
    return bool(os.environ.get("CI") or os.environ.get("CDS_REQUIRE_SERVICES"))


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _require(name: str, host: str, port: int) -> None:
    if _reachable(host, port):
        return
    message = f"{name} is not reachable on {host}:{port}"
    if _services_required():
        pytest.fail(message + " (required in CI: .ci/run starts it)")
    pytest.skip(message + "; start it to run this test (see README)")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """URL of the real PostgreSQL test database (trust auth, database ``test``)."""
    _require("PostgreSQL", "127.0.0.1", 5432)
    yield POSTGRES_URL


@pytest.fixture
def redis_url() -> Iterator[str]:
    """URL of the real Redis server (database 15, flushed by the tests that use it)."""
    _require("Redis", "127.0.0.1", 6379)
    yield REDIS_URL


@pytest.fixture(scope="session")
def knowledge() -> Knowledge:
    """The knowledge base of this package (loaded once per process, as the service does)."""
    return load_knowledge()
