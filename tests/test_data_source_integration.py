"""Integration tests of the FHIR data path against real HTTP servers on 127.0.0.1.

* a real FHIR server (sekmet-fhir, see tests/fhir_server.py) loaded with fixtures/fhir-server/;
* a closed port (a server that is down);
* tiny threaded HTTP servers that answer slowly, to check the deadline and the parallel fetch.

The prefetch templates are the real ones from hooks/lumbar-imaging-order-select.json.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Iterator, Mapping
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from fhir_server import FhirServer
from fhir_server import fhir_server as fhir_server  # the session fixture (sekmet-fhir with the fixtures)
from support import free_port, slow_fhir_handler

from cds_service.data_source import REASON_UNREACHABLE, FhirDataSource, reason_timeout
from cds_service.protocol.request import FhirAuthorization, HookRequest

pytestmark = pytest.mark.integration

HOOKS_DIR = Path(__file__).resolve().parent.parent / "hooks"
TEMPLATES: Mapping[str, str] = json.loads((HOOKS_DIR / "lumbar-imaging-order-select.json").read_text())["prefetch"]
PATIENT_ID = "pt-lbp-1"  # fixtures/fhir-server/10-pt-lbp-1.json

EXPECTED_COUNTS = {
    "Patient": 1,
    "Condition": 2,
    "MedicationRequest": 1,
    "MedicationStatement": 1,
    "Procedure": 1,
    "Observation": 25,  # 24 temperatures + 1 eGFR: more than sekmet's page of 20, so page 2 is followed
    "AllergyIntolerance": 1,
    "ServiceRequest": 1,
    "DiagnosticReport": 1,
    "ImagingStudy": 1,
}


def make_request(fhir_server: str, token: str | None, prefetch: Mapping[str, Any] | None = None) -> HookRequest:
    return HookRequest(
        service_id="lumbar-imaging-order-select",
        hook="order-select",
        hook_instance="5f0c64a2-7d55-4a53-a3c4-5d4f0b1c2e11",
        patient_id=PATIENT_ID,
        user_id="Practitioner/dr-1",
        encounter_id=None,
        selections=("ServiceRequest/draft-1",),
        draft_orders={"resourceType": "Bundle", "entry": []},
        prefetch=prefetch,
        fhir_server=fhir_server,
        fhir_authorization=FhirAuthorization(
            access_token=token, token_type="Bearer", expires_in=300, scope="patient/*.read", subject="cds"
        )
        if token
        else None,
    )


@pytest.fixture
def outcomes() -> list[str]:
    return []


@pytest.fixture
def source(outcomes: list[str]) -> Iterator[FhirDataSource]:
    data_source = FhirDataSource(on_fetch=outcomes.append)  # production defaults: total_timeout 2.5 s
    yield data_source
    data_source.close()


class _RoomyHTTPServer(ThreadingHTTPServer):
    # The default listen backlog (5) drops some of eleven simultaneous connects, and the kernel
    # retries them a second later: that would measure the test server, not the data source.
    request_queue_size = 64


@pytest.fixture
def slow_server_factory() -> Iterator[Any]:
    servers: list[ThreadingHTTPServer] = []

    def start(delay: float) -> str:
        handler = slow_fhir_handler(delay)
        server = _RoomyHTTPServer(("127.0.0.1", free_port()), handler)
        server.daemon_threads = True
        server.block_on_close = False  # do not wait for sleeping handlers at shutdown
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/fhir"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_empty_prefetch_is_fetched_from_the_fhir_server(
    fhir_server: FhirServer, source: FhirDataSource, outcomes: list[str]
) -> None:
    request = make_request(fhir_server.base_url, fhir_server.token, prefetch={})
    record = source.resolve(TEMPLATES, request, [fhir_server.base_url])
    assert record.unavailable == {}
    assert record.warnings == ()
    assert {t: len(resources) for t, resources in record.resources.items()} == EXPECTED_COUNTS
    # Device: fetched, and the patient has none: a known empty list, not an unknown
    assert record.is_known("Device") and record.of_type("Device") == ()
    # the social-history observation is outside the template's categories; the other patient's data is not here
    observation_ids = {o["id"] for o in record.of_type("Observation")}
    assert "obs-smoking-1" not in observation_ids and "obs-egfr-1" in observation_ids
    assert all(c["subject"]["reference"] == f"Patient/{PATIENT_ID}" for c in record.of_type("Condition"))
    assert outcomes == ["ok"] * len(TEMPLATES)


def test_absent_prefetch_member_is_fetched_too(fhir_server: FhirServer, source: FhirDataSource) -> None:
    record = source.resolve(
        TEMPLATES, make_request(fhir_server.base_url, fhir_server.token, None), [fhir_server.base_url]
    )
    assert {t: len(resources) for t, resources in record.resources.items()} == EXPECTED_COUNTS


def test_a_first_page_in_the_prefetch_is_completed_from_the_server(
    fhir_server: FhirServer, source: FhirDataSource, outcomes: list[str]
) -> None:
    first_page = requests.get(
        f"{fhir_server.base_url}/Observation",
        params={"patient": PATIENT_ID, "category": "vital-signs,laboratory", "_count": "10"},
        headers=fhir_server.auth_headers,
        timeout=5,
    ).json()
    assert len(first_page["entry"]) == 10
    prefetch: dict[str, Any] = dict.fromkeys(TEMPLATES)  # every other key: null
    prefetch["observations"] = first_page
    prefetch["patient"] = {"resourceType": "Patient", "id": PATIENT_ID}
    record = source.resolve(
        TEMPLATES, make_request(fhir_server.base_url, fhir_server.token, prefetch), [fhir_server.base_url]
    )
    assert len(record.of_type("Observation")) == 25
    assert len({o["id"] for o in record.of_type("Observation")}) == 25
    assert record.of_type("Condition") == ()  # null in the prefetch: not fetched
    assert record.unavailable == {}
    assert outcomes == ["ok"]  # one network-completed key


def test_concurrent_requests_share_one_data_source(fhir_server: FhirServer, source: FhirDataSource) -> None:
    """The app serves requests from several threads with the one per-process data source."""
    request = make_request(fhir_server.base_url, fhir_server.token, {})
    records = []

    def resolve_once() -> None:
        records.append(source.resolve(TEMPLATES, request, [fhir_server.base_url]))

    threads = [threading.Thread(target=resolve_once) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(records) == 8
    for record in records:
        assert record.unavailable == {}
        assert {t: len(resources) for t, resources in record.resources.items()} == EXPECTED_COUNTS


def test_wrong_token_makes_every_type_unavailable(
    fhir_server: FhirServer, source: FhirDataSource, outcomes: list[str]
) -> None:
    request = make_request(fhir_server.base_url, "not-the-token", prefetch={})
    record = source.resolve(TEMPLATES, request, [fhir_server.base_url])
    assert record.resources == {}
    rejected = "the FHIR server answered 401 to the service's queries (token rejected)"
    assert set(record.unavailable.values()) == {rejected}
    assert len(record.unavailable) == len(TEMPLATES)
    assert outcomes == ["http_4xx"] * len(TEMPLATES)


def test_missing_token_is_refused_by_the_server(fhir_server: FhirServer, source: FhirDataSource) -> None:
    record = source.resolve(TEMPLATES, make_request(fhir_server.base_url, None, {}), [fhir_server.base_url])
    assert len(record.unavailable) == len(TEMPLATES)  # proves the authorised fetches above did send the token
    assert set(record.unavailable.values()) == {
        "the FHIR server answered 401 to the service's queries (no token: the request has no fhirAuthorization)"
    }


def test_server_that_is_down_is_unavailable_quickly(source: FhirDataSource, outcomes: list[str]) -> None:
    closed = f"http://127.0.0.1:{free_port()}/fhir"
    started = time.monotonic()
    record = source.resolve(TEMPLATES, make_request(closed, "token", {}), [closed])
    elapsed = time.monotonic() - started
    assert elapsed < 0.5
    assert set(record.unavailable.values()) == {REASON_UNREACHABLE}
    assert set(record.diagnostics().values()) == {f"the FHIR server {closed} could not be reached (ConnectionError)"}
    assert len(record.unavailable) == len(TEMPLATES)
    assert outcomes == ["error"] * len(TEMPLATES)


def test_slow_server_costs_at_most_the_total_timeout(
    slow_server_factory: Any, source: FhirDataSource, outcomes: list[str]
) -> None:
    slow = slow_server_factory(5.0)
    started = time.monotonic()
    record = source.resolve(TEMPLATES, make_request(slow, "token", {}), [slow])
    elapsed = time.monotonic() - started
    assert elapsed < source.total_timeout + 0.3
    assert elapsed >= source.total_timeout - 0.1  # it did wait for the server, up to the budget
    assert set(record.unavailable.values()) == {"the FHIR server did not answer within 2.5 s"}
    assert reason_timeout(source.total_timeout) == "the FHIR server did not answer within 2.5 s"
    assert len(record.unavailable) == len(TEMPLATES)
    assert outcomes == ["timeout"] * len(TEMPLATES)


def test_absent_keys_are_fetched_in_parallel(slow_server_factory: Any, source: FhirDataSource) -> None:
    delayed = slow_server_factory(0.4)  # eleven keys one after the other would take 4.4 s
    started = time.monotonic()
    record = source.resolve(TEMPLATES, make_request(delayed, "token", {}), [delayed])
    elapsed = time.monotonic() - started
    assert record.unavailable == {}
    assert elapsed < 1.2


def test_resolve_latency_against_sekmet(fhir_server: FhirServer, source: FhirDataSource, record_property: Any) -> None:
    """Median wall time of resolve() for the full template set (11 keys, 2 Observation pages)."""
    allowed = [fhir_server.base_url]
    request = make_request(fhir_server.base_url, fhir_server.token, {})
    source.resolve(TEMPLATES, request, allowed)  # warm the connection pool
    timings = []
    for _ in range(20):
        started = time.perf_counter()
        record = source.resolve(TEMPLATES, request, allowed)
        timings.append(time.perf_counter() - started)
        assert record.unavailable == {}
    median_ms = statistics.median(timings) * 1000
    record_property("resolve_median_ms", round(median_ms, 1))
    print(f"\nresolve() against sekmet-fhir, 11 keys: median {median_ms:.1f} ms, max {max(timings) * 1000:.1f} ms")
    assert median_ms < 1000


def test_a_prefetch_page_is_kept_when_its_next_page_misses_the_deadline(slow_server_factory: Any) -> None:
    slow = slow_server_factory(5.0)
    first_page = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": {"resourceType": "Condition", "id": "c1"}}],
        "link": [{"relation": "next", "url": f"{slow}/Condition?patient={PATIENT_ID}&_offset=1"}],
    }
    prefetch: dict[str, Any] = dict.fromkeys(TEMPLATES)
    prefetch["conditions"] = first_page
    outcomes: list[str] = []
    with FhirDataSource(total_timeout=0.5, on_fetch=outcomes.append) as data_source:
        started = time.monotonic()
        record = data_source.resolve(TEMPLATES, make_request(slow, "token", prefetch), [slow])
        elapsed = time.monotonic() - started
    assert elapsed < 0.5 + 0.3
    assert [c["id"] for c in record.of_type("Condition")] == ["c1"]  # the given page is kept
    assert not record.is_known("Condition")  # the rest is unknown
    # Whether the fetch thread's own read or the request's deadline gave up first, the reason says why.
    reason = record.unavailable["Condition"]
    assert reason in (
        "the remaining pages of results could not be read: the FHIR server did not answer within 0.5 s",
        "page 2 of the results could not be read: the FHIR server did not answer within 0.5 s",
    )
    assert record.warnings == (f"Condition: {reason}; the rest is unknown",)
    assert outcomes == ["timeout"]
