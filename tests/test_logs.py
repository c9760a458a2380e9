"""Log lines: JSON, redacted, and every line of a service call carries its hookInstance (also from fetch threads)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import responses
from test_data_source_unit import BASE, PATIENT, PATIENT_ID, TEMPLATES, condition, make_request, searchset

from cds_service.data_source import FhirDataSource
from cds_service.logs import (
    HookInstanceFilter,
    JsonFormatter,
    RedactingFilter,
    bind_hook_instance,
    clear_hook_instance,
    current_hook_instance,
    without_resource_ids,
)

HOOK_INSTANCE = "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea"


@contextmanager
def json_log_lines(level: int = logging.DEBUG) -> Iterator[list[dict[str, Any]]]:
    """The JSON lines the service's own handler (as ``configure_logging`` installs it) writes, parsed."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(HookInstanceFilter())
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("cds_service")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    lines: list[dict[str, Any]] = []
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
        lines.extend(json.loads(line) for line in stream.getvalue().splitlines())


def test_fetch_thread_lines_carry_the_hook_instance_of_the_request() -> None:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps, FhirDataSource() as source:
        rsps.get(f"{BASE}/Patient/{PATIENT_ID}", json=PATIENT)
        rsps.get(f"{BASE}/Condition", json=searchset(condition("c1")))
        rsps.get(f"{BASE}/MedicationRequest", status=500, body="")
        bind_hook_instance(HOOK_INSTANCE)
        try:
            with json_log_lines() as lines:
                source.resolve(TEMPLATES, make_request({}), [BASE])
        finally:
            clear_hook_instance()
    fetch_lines = [line for line in lines if line["message"] == "fhir fetch"]
    assert len(fetch_lines) == 3  # one per key, each logged by a worker thread
    assert {line["hookInstance"] for line in lines} == {HOOK_INSTANCE}
    failed = next(line for line in fetch_lines if line["prefetch_key"] == "medicationRequests")
    assert failed["reason"] == "the FHIR server answered 500 to the service's queries (server error)"
    assert all(PATIENT_ID not in json.dumps(line) for line in lines)


def test_without_a_bound_hook_instance_lines_have_none() -> None:
    clear_hook_instance()
    with json_log_lines() as lines:
        logging.getLogger("cds_service.test").info("start-up")
    assert "hookInstance" not in lines[0]


def test_a_line_that_names_its_hook_instance_keeps_it() -> None:
    bind_hook_instance(HOOK_INSTANCE)
    try:
        with json_log_lines() as lines:
            logging.getLogger("cds_service.test").info("x", extra={"fields": {"hookInstance": "other"}})
    finally:
        clear_hook_instance()
    assert lines[0]["hookInstance"] == "other"


def test_an_odd_hook_instance_is_not_logged_verbatim() -> None:
    for value in ("a" * 101, "line\nbreak", 42, {"x": 1}):
        bind_hook_instance(value)
        assert current_hook_instance() == "(invalid)"
    bind_hook_instance(None)
    assert current_hook_instance() is None


def test_resource_ids_are_removed_from_log_text() -> None:
    assert without_resource_ids("Condition/c-9 skipped: code: missing") == "Condition skipped: code: missing"
    assert (
        without_resource_ids("MedicationRequest/mr.1 and Observation/o1: value_error")
        == "MedicationRequest and Observation: value_error"
    )
