"""Unit tests of the FHIR data path (cds_service.data_source) with HTTP mocked by ``responses``.

``responses`` answers only the URLs registered in a test and raises ConnectionError for any other,
so "never requested" is asserted on ``rsps.calls``: every request made is recorded there.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import requests
import responses
from responses import matchers

from cds_service.data_source import (
    REASON_NOT_ALLOWED,
    REASON_NOT_FHIR,
    REASON_REDIRECT,
    REASON_UNREACHABLE,
    FhirDataSource,
    is_allowed_server,
    normalise_base_url,
    reason_timeout,
    render_template,
)
from cds_service.protocol.request import FhirAuthorization, HookRequest

BASE = "https://fhir.example.org/r4"
OTHER_HOST = "https://evil.example.net/r4"
TOKEN = "tok-3f1e2d9c8b7a6f5e4d3c2b1a"
PATIENT_ID = "pt-7731"

TEMPLATES = {
    "patient": "Patient/{{context.patientId}}",
    "conditions": "Condition?patient={{context.patientId}}",
    "medicationRequests": "MedicationRequest?patient={{context.patientId}}",
}


def make_request(
    prefetch: Mapping[str, Any] | None = None,
    *,
    fhir_server: str | None = BASE,
    token: str | None = TOKEN,
    encounter_id: str | None = "enc-1",
    patient_id: str = PATIENT_ID,
    user_id: str = "Practitioner/dr-1",
) -> HookRequest:
    auth = (
        FhirAuthorization(
            access_token=token,
            token_type="Bearer",
            expires_in=300,
            scope="patient/*.read",
            subject="cds-service",
        )
        if token is not None
        else None
    )
    return HookRequest(
        service_id="lumbar-imaging-order-select",
        hook="order-select",
        hook_instance="d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        patient_id=patient_id,
        user_id=user_id,
        encounter_id=encounter_id,
        selections=("ServiceRequest/sr-1",),
        draft_orders={"resourceType": "Bundle", "entry": []},
        prefetch=prefetch,
        fhir_server=fhir_server,
        fhir_authorization=auth,
    )


def searchset(*resources: Mapping[str, Any], next_url: str | None = None) -> dict[str, Any]:
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": dict(resource)} for resource in resources],
    }
    if next_url:
        bundle["link"] = [{"relation": "self", "url": f"{BASE}/x"}, {"relation": "next", "url": next_url}]
    return bundle


def condition(condition_id: str) -> dict[str, Any]:
    return {"resourceType": "Condition", "id": condition_id, "subject": {"reference": f"Patient/{PATIENT_ID}"}}


def med_request(request_id: str) -> dict[str, Any]:
    return {"resourceType": "MedicationRequest", "id": request_id, "status": "active", "intent": "order"}


PATIENT = {"resourceType": "Patient", "id": PATIENT_ID, "gender": "female", "birthDate": "1961-04-02"}
OUTCOME = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]}


@pytest.fixture
def outcomes() -> list[str]:
    return []


@pytest.fixture
def source(outcomes: list[str]) -> Iterator[FhirDataSource]:
    data_source = FhirDataSource(total_timeout=2.0, on_fetch=outcomes.append)
    yield data_source
    data_source.close()


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


# -- base URLs and the allow-list -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("HTTPS://FHIR.Example.org:443/R4/", "https://fhir.example.org/R4"),
        ("https://fhir.example.org:8443/r4", "https://fhir.example.org:8443/r4"),
        ("http://127.0.0.1:80/fhir//", "http://127.0.0.1/fhir"),
        ("http://[::1]:8080/fhir", "http://[::1]:8080/fhir"),
        ("https://fhir.example.org", "https://fhir.example.org"),
        ("https://fhir.example.org/r4#frag", "https://fhir.example.org/r4"),
    ],
)
def test_normalise_base_url(url: str, expected: str) -> None:
    assert normalise_base_url(url) == expected


@pytest.mark.parametrize("url", ["ftp://fhir.example.org/r4", "fhir.example.org/r4", "https://", "https://h:99999/"])
def test_normalise_base_url_rejects_what_is_not_an_http_url(url: str) -> None:
    with pytest.raises(ValueError):
        normalise_base_url(url)


@pytest.mark.parametrize(
    ("url", "allowed", "expected"),
    [
        ("https://fhir.example.org/r4", [BASE], True),
        ("https://FHIR.example.org:443/r4/", [BASE + "/"], True),
        ("https://fhir.example.org/r4/extra", [BASE], False),  # a sub-path is another server
        ("https://fhir.example.org/R4", [BASE], False),  # paths are case-sensitive
        ("https://fhir.example.org:8443/r4", [BASE], False),
        ("http://fhir.example.org/r4", ["http://fhir.example.org/r4"], False),  # https required off loopback
        ("http://127.0.0.1:8090/fhir", ["http://127.0.0.1:8090/fhir"], True),
        ("http://127.8.9.10:8090/fhir", ["http://127.8.9.10:8090/fhir"], True),
        ("http://localhost:8090/fhir", ["http://LOCALHOST:8090/fhir/"], True),
        ("http://[::1]:8090/fhir", ["http://[::1]:8090/fhir"], True),
        ("http://10.0.0.1/fhir", ["http://10.0.0.1/fhir"], False),
        ("https://fhir.example.org@evil.example.net/r4", [BASE], False),  # user-info trick
        ("https://user:pw@fhir.example.org/r4", [BASE, "https://user:pw@fhir.example.org/r4"], False),
        ("https://fhir.example.org/r4?x=1", [BASE], False),
        ("https://fhir.example.org/r4", [], False),
        ("https://fhir.example.org/r4", ["not a url", BASE], True),  # a bad entry is ignored, not fatal
        (None, [BASE], False),
        ("", [BASE], False),
        ("javascript:alert(1)", [BASE], False),
        ("https://fhir.example.org/r4", [BASE, 42], True),  # non-string entries are ignored
    ],
)
def test_is_allowed_server(url: str | None, allowed: list[str], expected: bool) -> None:
    assert is_allowed_server(url, allowed) is expected


# -- templates ------------------------------------------------------------------------------------


def test_render_template_replaces_2_0_tokens() -> None:
    request = make_request()
    assert render_template("Condition?patient={{context.patientId}}", request).relative_url == (
        f"Condition?patient={PATIENT_ID}"
    )
    assert render_template("Encounter/{{context.encounterId}}", request).relative_url == "Encounter/enc-1"
    rendered = render_template("{{context.userId}}", request)
    assert (rendered.resource_type, rendered.relative_url) == ("Practitioner", "Practitioner/dr-1")
    assert render_template("Practitioner/{{userPractitionerId}}", request).relative_url == "Practitioner/dr-1"


def test_render_template_without_a_value_is_not_fetchable() -> None:
    no_encounter = render_template("Encounter/{{context.encounterId}}", make_request(encounter_id=None))
    assert no_encounter.relative_url is None
    assert no_encounter.resource_type == "Encounter"
    assert no_encounter.missing == "context.encounterId"
    # userPractitionerRoleId has no value when the user is a Practitioner
    assert render_template("PractitionerRole/{{userPractitionerRoleId}}", make_request()).relative_url is None
    # 3.0 FHIRPath tokens are not 2.0 tokens: never guessed
    assert render_template("Observation?date=ge{{today() - 90 days}}", make_request()).relative_url is None


@pytest.mark.parametrize("patient_id", ["../Patient/other", "1?_format=xml", "a b", "..", "x" * 65])
def test_render_template_refuses_ids_that_would_change_the_url(patient_id: str) -> None:
    assert render_template("Patient/{{context.patientId}}", make_request(patient_id=patient_id)).relative_url is None


# -- prefetch values ------------------------------------------------------------------------------


def test_prefetch_values_are_used_as_given(source: FhirDataSource, rsps: responses.RequestsMock) -> None:
    prefetch = {
        "patient": PATIENT,
        "conditions": searchset(condition("c1"), condition("c2"), condition("c1")),
        "medicationRequests": None,
    }
    record = source.resolve(TEMPLATES, make_request(prefetch), [BASE])
    assert [r["id"] for r in record.of_type("Condition")] == ["c1", "c2"]  # de-duplicated, in order
    assert record.of_type("Patient") == (PATIENT,)
    # null: obtained and empty, which is a fact (known), not an unknown
    assert record.of_type("MedicationRequest") == ()
    assert record.is_known("MedicationRequest")
    assert record.unavailable == {}
    assert record.warnings == ()
    assert len(rsps.calls) == 0


def test_bundle_entries_are_grouped_by_their_own_type(source: FhirDataSource) -> None:
    medication = {"resourceType": "Medication", "id": "m1"}
    search_outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "information", "code": "info"}]}
    prefetch = {
        "patient": PATIENT,
        "conditions": searchset(condition("c1")),
        "medicationRequests": searchset(med_request("mr1"), medication, search_outcome, condition("c1")),
    }
    record = source.resolve(TEMPLATES, make_request(prefetch), [BASE])
    assert set(record.resources) == {"Patient", "Condition", "MedicationRequest", "Medication"}
    assert [r["id"] for r in record.of_type("Condition")] == ["c1"]  # same (type, id) across keys: once
    assert "OperationOutcome" not in record.resources


def test_operation_outcome_makes_the_type_unavailable(source: FhirDataSource, rsps: responses.RequestsMock) -> None:
    prefetch = {"patient": PATIENT, "conditions": OUTCOME, "medicationRequests": None}
    record = source.resolve(TEMPLATES, make_request(prefetch), [BASE])
    assert record.unavailable == {"Condition": "the EHR sent an OperationOutcome instead of the data"}
    detail = "the EHR answered prefetch conditions with an OperationOutcome (issue: timeout)"
    assert record.detail("Condition") == detail
    assert not record.is_known("Condition")
    assert record.is_known("MedicationRequest")
    assert len(rsps.calls) == 0  # the EHR said it could not: the service does not re-query


@pytest.mark.parametrize("value", ["text", 42, [PATIENT], {"id": "no-type"}])
def test_a_prefetch_value_that_is_not_a_resource_is_unknown(source: FhirDataSource, value: Any) -> None:
    prefetch = {"patient": value, "conditions": None, "medicationRequests": None}
    record = source.resolve(TEMPLATES, make_request(prefetch), [BASE])
    assert set(record.unavailable) == {"Patient"}


def test_malformed_bundle_entries_are_skipped(source: FhirDataSource) -> None:
    bundle = {"resourceType": "Bundle", "entry": [None, 3, {"resource": "x"}, {"resource": condition("c9")}], "link": 7}
    record = source.resolve(
        TEMPLATES, make_request({"patient": PATIENT, "conditions": bundle, "medicationRequests": None}), [BASE]
    )
    assert [r["id"] for r in record.of_type("Condition")] == ["c9"]


def test_next_page_on_the_same_server_is_followed_with_the_token(
    source: FhirDataSource, rsps: responses.RequestsMock, outcomes: list[str]
) -> None:
    page_2 = f"{BASE}/Condition?patient={PATIENT_ID}&_count=1&_offset=1"
    page_3 = f"{BASE}/Condition?patient={PATIENT_ID}&_count=1&_offset=2"
    rsps.get(page_2, json=searchset(condition("c2"), next_url=page_3))
    rsps.get(page_3, json=searchset(condition("c3")))
    prefetch = {
        "patient": PATIENT,
        "conditions": searchset(condition("c1"), next_url=page_2),
        "medicationRequests": None,
    }
    record = source.resolve(TEMPLATES, make_request(prefetch), [BASE])
    assert [r["id"] for r in record.of_type("Condition")] == ["c1", "c2", "c3"]
    assert [call.request.url for call in rsps.calls] == [page_2, page_3]
    assert all(call.request.headers["Authorization"] == f"Bearer {TOKEN}" for call in rsps.calls)
    assert record.warnings == ()
    assert outcomes == ["ok"]


def test_next_page_on_another_host_is_never_requested(source: FhirDataSource, rsps: responses.RequestsMock) -> None:
    prefetch = {
        "patient": PATIENT,
        "conditions": searchset(condition("c1"), next_url=f"{OTHER_HOST}/Condition?page=2"),
        "medicationRequests": None,
    }
    record = source.resolve(TEMPLATES, make_request(prefetch), [BASE])
    assert len(rsps.calls) == 0
    assert [r["id"] for r in record.of_type("Condition")] == ["c1"]  # the given page is kept: what it shows is true
    assert not record.is_known("Condition")  # but the rest was not read: partial is unknown, not "nothing more"
    assert record.unavailable == {
        "Condition": "the prefetch holds only the first page of the results (the next page is not on the FHIR server)"
    }
    assert record.warnings == (
        "Condition: the prefetch holds only the first page of the results (the next page is not on the FHIR "
        "server); the rest is unknown",
    )


@pytest.mark.parametrize(
    "next_url",
    [
        "https://fhir.example.org/r4-other/Condition?page=2",  # same host, another base
        "https://fhir.example.org/r4/../admin/Condition?page=2",
        "http://fhir.example.org/r4/Condition?page=2",  # same host, downgraded to http
        "/r4/Condition?page=2",  # FHIR requires absolute links
    ],
)
def test_next_page_outside_the_base_is_never_requested(
    source: FhirDataSource, rsps: responses.RequestsMock, next_url: str
) -> None:
    prefetch = {"patient": PATIENT, "conditions": searchset(condition("c1"), next_url=next_url)}
    record = source.resolve(TEMPLATES, make_request({**prefetch, "medicationRequests": None}), [BASE])
    assert len(rsps.calls) == 0
    assert len(record.warnings) == 1
    assert not record.is_known("Condition")


def test_next_page_with_a_server_that_is_not_allowed_is_not_requested(
    source: FhirDataSource, rsps: responses.RequestsMock
) -> None:
    prefetch = {
        "patient": PATIENT,
        "conditions": searchset(condition("c1"), next_url=f"{BASE}/Condition?page=2"),
        "medicationRequests": None,
    }
    record = source.resolve(TEMPLATES, make_request(prefetch), ["https://other.example.org/fhir"])
    assert len(rsps.calls) == 0
    assert [r["id"] for r in record.of_type("Condition")] == ["c1"]
    assert record.unavailable == {
        "Condition": "the prefetch holds only the first page of the results (no allowed FHIR server to read the rest)"
    }
    assert len(record.warnings) == 1


def test_failed_next_page_keeps_the_pages_read(
    source: FhirDataSource, rsps: responses.RequestsMock, outcomes: list[str]
) -> None:
    page_2 = f"{BASE}/Condition?page=2"
    rsps.get(page_2, status=404, json=OUTCOME)
    prefetch = {
        "patient": PATIENT,
        "conditions": searchset(condition("c1"), next_url=page_2),
        "medicationRequests": None,
    }
    record = source.resolve(TEMPLATES, make_request(prefetch), [BASE])
    assert [r["id"] for r in record.of_type("Condition")] == ["c1"]
    reason = "page 2 of the results could not be read: the FHIR server answered 404 to the service's queries"
    reason += " (not found)"
    assert record.unavailable == {"Condition": reason}
    assert record.warnings == (f"Condition: {reason}; the rest is unknown",)
    assert outcomes == ["http_4xx"]


def test_pagination_stops_at_max_pages_and_the_type_is_partial(rsps: responses.RequestsMock) -> None:
    # A next link that never ends: every page points to another.
    rsps.get(f"{BASE}/Condition", json=searchset(condition("cx"), next_url=f"{BASE}/Condition?more=1"))
    with FhirDataSource(max_pages=3) as data_source:
        record = data_source.resolve({"conditions": TEMPLATES["conditions"]}, make_request({}), [BASE])
    assert len(rsps.calls) == 3
    assert [r["id"] for r in record.of_type("Condition")] == ["cx"]  # what was read stays
    assert not record.is_known("Condition")  # what was not read is unknown, not absent
    assert record.unavailable == {"Condition": "only the first 3 pages of results were read"}
    assert record.warnings == ("Condition: only the first 3 pages of results were read; the rest is unknown",)


def test_pagination_bound_also_counts_the_prefetch_page(rsps: responses.RequestsMock) -> None:
    rsps.get(f"{BASE}/Condition", json=searchset(condition("c2"), next_url=f"{BASE}/Condition?more=1"))
    prefetch = {"conditions": searchset(condition("c1"), next_url=f"{BASE}/Condition?page=2")}
    with FhirDataSource(max_pages=2) as data_source:
        record = data_source.resolve({"conditions": TEMPLATES["conditions"]}, make_request(prefetch), [BASE])
    assert len(rsps.calls) == 1
    assert [r["id"] for r in record.of_type("Condition")] == ["c1", "c2"]
    assert record.unavailable == {"Condition": "only the first 2 pages of results were read"}


# -- fetching absent keys -------------------------------------------------------------------------


def register_all(rsps: responses.RequestsMock) -> None:
    rsps.get(f"{BASE}/Patient/{PATIENT_ID}", json=PATIENT)
    rsps.get(
        f"{BASE}/Condition",
        json=searchset(condition("c1")),
        match=[matchers.query_param_matcher({"patient": PATIENT_ID})],
    )
    rsps.get(
        f"{BASE}/MedicationRequest",
        json=searchset(med_request("mr1"), med_request("mr2")),
        match=[matchers.query_param_matcher({"patient": PATIENT_ID})],
    )


def test_absent_keys_are_fetched_with_the_bearer_token(
    source: FhirDataSource, rsps: responses.RequestsMock, outcomes: list[str]
) -> None:
    register_all(rsps)
    record = source.resolve(TEMPLATES, make_request({"conditions": None}), [BASE])
    # only the absent keys are fetched
    assert sorted(str(call.request.url) for call in rsps.calls) == [
        f"{BASE}/MedicationRequest?patient={PATIENT_ID}",
        f"{BASE}/Patient/{PATIENT_ID}",
    ]
    for call in rsps.calls:
        assert call.request.headers["Authorization"] == f"Bearer {TOKEN}"
        assert call.request.headers["Accept"] == "application/fhir+json"
    assert record.of_type("Patient") == (PATIENT,)
    assert [r["id"] for r in record.of_type("MedicationRequest")] == ["mr1", "mr2"]
    assert record.is_known("Condition") and record.of_type("Condition") == ()
    assert record.unavailable == {}
    assert sorted(outcomes) == ["ok", "ok"]


def test_absent_prefetch_member_fetches_every_key(source: FhirDataSource, rsps: responses.RequestsMock) -> None:
    register_all(rsps)
    record = source.resolve(TEMPLATES, make_request(None), [BASE])
    assert len(rsps.calls) == 3
    assert {t: len(r) for t, r in record.resources.items()} == {"Patient": 1, "Condition": 1, "MedicationRequest": 2}


def test_without_fhir_authorization_no_authorization_header_is_sent(
    source: FhirDataSource, rsps: responses.RequestsMock
) -> None:
    register_all(rsps)
    record = source.resolve(TEMPLATES, make_request({}, token=None), [BASE])
    assert len(rsps.calls) == 3
    assert all("Authorization" not in call.request.headers for call in rsps.calls)
    assert record.unavailable == {}


def test_429_then_200_is_retried(source: FhirDataSource, rsps: responses.RequestsMock, outcomes: list[str]) -> None:
    url = f"{BASE}/Condition"
    rsps.get(url, status=429, headers={"Retry-After": "0"}, json=OUTCOME)
    rsps.get(url, json=searchset(condition("c1")))
    record = source.resolve({"conditions": TEMPLATES["conditions"]}, make_request({}), [BASE])
    assert len(rsps.calls) == 2
    assert [r["id"] for r in record.of_type("Condition")] == ["c1"]
    assert outcomes == ["ok"]


def test_retry_after_beyond_the_budget_is_not_waited_for(
    source: FhirDataSource, rsps: responses.RequestsMock, outcomes: list[str]
) -> None:
    rsps.get(f"{BASE}/Condition", status=429, headers={"Retry-After": "30"}, json=OUTCOME)
    record = source.resolve({"conditions": TEMPLATES["conditions"]}, make_request({}), [BASE])
    assert len(rsps.calls) == 1
    reason = "the FHIR server answered 429 to the service's queries (too many requests)"
    assert record.unavailable == {"Condition": reason}
    assert outcomes == ["http_4xx"]


def test_503_three_times_makes_the_type_unavailable(
    source: FhirDataSource, rsps: responses.RequestsMock, outcomes: list[str]
) -> None:
    rsps.get(f"{BASE}/Condition", status=503, body="busy")
    record = source.resolve({"conditions": TEMPLATES["conditions"]}, make_request({}), [BASE])
    assert len(rsps.calls) == 3  # first try + max_retries (2)
    assert record.unavailable == {"Condition": "the FHIR server answered 503 to the service's queries (server error)"}
    assert record.of_type("Condition") == ()
    assert outcomes == ["http_5xx"]


def test_4xx_is_not_retried(source: FhirDataSource, rsps: responses.RequestsMock, outcomes: list[str]) -> None:
    rsps.get(f"{BASE}/Condition", status=403, json=OUTCOME)
    record = source.resolve({"conditions": TEMPLATES["conditions"]}, make_request({}), [BASE])
    assert len(rsps.calls) == 1
    assert not record.is_known("Condition")
    assert record.unavailable == {
        "Condition": "the FHIR server answered 403 to the service's queries (access refused for this token)"
    }
    assert outcomes == ["http_4xx"]


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (TOKEN, "the FHIR server answered 401 to the service's queries (token rejected)"),
        (
            None,
            "the FHIR server answered 401 to the service's queries (no token: the request has no fhirAuthorization)",
        ),
    ],
)
def test_401_says_whether_a_token_was_rejected_or_missing(
    source: FhirDataSource, rsps: responses.RequestsMock, token: str | None, reason: str
) -> None:
    rsps.get(f"{BASE}/Condition", status=401, json=OUTCOME)
    record = source.resolve({"conditions": TEMPLATES["conditions"]}, make_request({}, token=token), [BASE])
    assert record.unavailable == {"Condition": reason}
    assert record.describe_unavailable() == f"Condition: {reason}"


def test_redirect_to_another_host_is_not_followed(
    source: FhirDataSource, rsps: responses.RequestsMock, outcomes: list[str]
) -> None:
    rsps.get(f"{BASE}/Condition", status=302, headers={"Location": f"{OTHER_HOST}/Condition?patient={PATIENT_ID}"})
    rsps.get(f"{OTHER_HOST}/Condition", json=searchset(condition("stolen")))
    record = source.resolve({"conditions": TEMPLATES["conditions"]}, make_request({}), [BASE])
    assert [str(call.request.url).split("?")[0] for call in rsps.calls] == [f"{BASE}/Condition"]
    assert record.unavailable == {"Condition": REASON_REDIRECT}
    # The detail names the FHIR server and the host it pointed to: never the redirect's path or query (patient id).
    assert record.detail("Condition") == f"{REASON_REDIRECT} ({BASE} answered 302 to evil.example.net)"
    assert outcomes == ["error"]


def test_same_origin_redirect_is_followed(source: FhirDataSource, rsps: responses.RequestsMock) -> None:
    rsps.get(f"{BASE}/Condition", status=307, headers={"Location": "/r4-moved/Condition?patient=x"})
    rsps.get("https://fhir.example.org/r4-moved/Condition", json=searchset(condition("c1")))
    record = source.resolve({"conditions": TEMPLATES["conditions"]}, make_request({}), [BASE])
    assert len(rsps.calls) == 2
    assert rsps.calls[1].request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert [r["id"] for r in record.of_type("Condition")] == ["c1"]


def test_at_most_three_redirects_are_followed(source: FhirDataSource, rsps: responses.RequestsMock) -> None:
    rsps.get(f"{BASE}/Condition", status=302, headers={"Location": f"{BASE}/Condition?loop=1"})
    record = source.resolve({"conditions": TEMPLATES["conditions"]}, make_request({}), [BASE])
    assert len(rsps.calls) == 4  # the request and three redirects
    assert record.unavailable == {"Condition": "the FHIR server redirected more than 3 times"}


def test_disallowed_server_makes_no_request(
    source: FhirDataSource, rsps: responses.RequestsMock, outcomes: list[str]
) -> None:
    rsps.get(f"{OTHER_HOST}/Condition", json=searchset(condition("c1")))
    request = make_request({}, fhir_server=OTHER_HOST)
    record = source.resolve(TEMPLATES, request, [BASE])
    assert len(rsps.calls) == 0
    assert record.unavailable == {t: REASON_NOT_ALLOWED for t in ("Patient", "Condition", "MedicationRequest")}
    # The OperationOutcome and the log name the server; cards (unavailable) do not.
    detail = f"fhirServer {OTHER_HOST} is not allowed for this client"
    assert record.diagnostics() == {t: detail for t in ("Condition", "MedicationRequest", "Patient")}
    assert record.describe_unavailable(["Patient", "Condition"]) == f"Condition, Patient: {detail}"
    assert outcomes == ["not_allowed"] * 3


def test_plain_http_outside_loopback_is_refused(source: FhirDataSource, rsps: responses.RequestsMock) -> None:
    server = "http://fhir.example.org/r4"
    rsps.get(f"{server}/Condition", json=searchset(condition("c1")))
    record = source.resolve(TEMPLATES, make_request({}, fhir_server=server), [server])
    assert len(rsps.calls) == 0
    assert set(record.unavailable.values()) == {REASON_NOT_ALLOWED}
    assert set(record.diagnostics().values()) == {
        f"fhirServer {server} is not allowed for this client: https is required outside loopback"
    }


@pytest.mark.parametrize(
    ("fhir_server", "allowed", "detail"),
    [
        (BASE, [], f"fhirServer {BASE} is not allowed for this client: no FHIR server is allowed (the trusted "
         "client's fhir_servers, or CDS_FHIR_SERVERS in open mode, is empty)"),
        ("https://user:secret@fhir.example.org/r4", [BASE], "fhirServer https://fhir.example.org/r4 is not allowed for "
         "this client: a FHIR base URL carries no user name, password, query or fragment"),
        (f"{BASE}?patient={PATIENT_ID}", [BASE], f"fhirServer {BASE} is not allowed for this client: a FHIR base URL "
         "carries no user name, password, query or fragment"),
        ("not a url", [BASE], "fhirServer (not an http(s) URL) is not allowed for this client: it is not an absolute "
         "http(s) URL"),
    ],
)  # fmt: skip
def test_the_not_allowed_detail_names_the_cause_and_never_credentials_or_queries(
    source: FhirDataSource, fhir_server: str, allowed: list[str], detail: str
) -> None:
    record = source.resolve({"conditions": TEMPLATES["conditions"]}, make_request({}, fhir_server=fhir_server), allowed)
    assert record.unavailable == {"Condition": REASON_NOT_ALLOWED}
    assert record.detail("Condition") == detail


def test_no_fhir_server_means_unavailable_without_a_request(
    source: FhirDataSource, rsps: responses.RequestsMock, outcomes: list[str]
) -> None:
    record = source.resolve(TEMPLATES, make_request({"patient": PATIENT}, fhir_server=None), [BASE])
    assert len(rsps.calls) == 0
    assert set(record.unavailable) == {"Condition", "MedicationRequest"}
    assert record.of_type("Patient") == (PATIENT,)
    assert outcomes == []


def test_template_with_a_missing_token_is_not_fetched(source: FhirDataSource, rsps: responses.RequestsMock) -> None:
    templates = {"encounter": "Encounter/{{context.encounterId}}", "patient": TEMPLATES["patient"]}
    rsps.get(f"{BASE}/Patient/{PATIENT_ID}", json=PATIENT)
    record = source.resolve(templates, make_request({}, encounter_id=None), [BASE])
    assert [call.request.url for call in rsps.calls] == [f"{BASE}/Patient/{PATIENT_ID}"]
    assert record.unavailable == {"Encounter": "the request has no context.encounterId for prefetch encounter"}


def test_user_template_is_fetched_by_its_rendered_type(source: FhirDataSource, rsps: responses.RequestsMock) -> None:
    practitioner = {"resourceType": "Practitioner", "id": "dr-1"}
    rsps.get(f"{BASE}/Practitioner/dr-1", json=practitioner)
    record = source.resolve({"user": "{{context.userId}}"}, make_request({}), [BASE])
    assert record.of_type("Practitioner") == (practitioner,)


@pytest.mark.parametrize(
    ("response_kwargs", "reason"),
    [
        ({"body": "<html>login</html>", "content_type": "text/html"}, REASON_NOT_FHIR),
        ({"body": "{not json", "content_type": "application/fhir+json"}, REASON_NOT_FHIR),
        ({"json": [1, 2]}, REASON_NOT_FHIR),
        ({"json": {"entry": []}}, REASON_NOT_FHIR),
        ({"json": OUTCOME}, "the FHIR server could not provide it (it answered with an OperationOutcome)"),
        ({"body": requests.ConnectionError("refused")}, REASON_UNREACHABLE),
        ({"body": requests.ReadTimeout("slow")}, reason_timeout(2.0)),
        ({"status": 204}, "the FHIR server answered 204 to the service's queries"),
    ],
)
def test_unusable_answers_make_the_type_unavailable(
    source: FhirDataSource, rsps: responses.RequestsMock, response_kwargs: dict[str, Any], reason: str
) -> None:
    rsps.get(f"{BASE}/Condition", **response_kwargs)
    record = source.resolve(TEMPLATES, make_request({"patient": PATIENT, "medicationRequests": None}), [BASE])
    assert record.unavailable == {"Condition": reason}
    assert record.of_type("Patient") == (PATIENT,)


def test_timeout_and_unreachable_reasons_are_precise(source: FhirDataSource, rsps: responses.RequestsMock) -> None:
    assert reason_timeout(2.5) == "the FHIR server did not answer within 2.5 s"
    rsps.get(f"{BASE}/Condition", body=requests.ConnectionError(f"refused {BASE}/Condition?patient={PATIENT_ID}"))
    record = source.resolve({"conditions": TEMPLATES["conditions"]}, make_request({}), [BASE])
    assert record.unavailable == {"Condition": REASON_UNREACHABLE}
    assert record.detail("Condition") == f"the FHIR server {BASE} could not be reached (ConnectionError)"


def test_oversized_answer_is_refused(rsps: responses.RequestsMock) -> None:
    rsps.get(f"{BASE}/Condition", json=searchset(*[condition(f"c{i}") for i in range(200)]))
    with FhirDataSource(max_response_bytes=1000) as data_source:
        record = data_source.resolve({"conditions": TEMPLATES["conditions"]}, make_request({}), [BASE])
    assert not record.is_known("Condition")


def test_on_fetch_reports_one_outcome_per_fetched_key(
    source: FhirDataSource, rsps: responses.RequestsMock, outcomes: list[str]
) -> None:
    rsps.get(f"{BASE}/Patient/{PATIENT_ID}", json=PATIENT)
    rsps.get(f"{BASE}/Condition", status=500, body="")
    rsps.get(f"{BASE}/MedicationRequest", body=requests.ReadTimeout("slow"))
    source.resolve(TEMPLATES, make_request({}), [BASE])
    assert sorted(outcomes) == ["http_5xx", "ok", "timeout"]


def test_a_failing_on_fetch_callback_does_not_fail_resolve(rsps: responses.RequestsMock) -> None:
    def broken(outcome: str) -> None:
        raise RuntimeError("metrics down")

    rsps.get(f"{BASE}/Condition", json=searchset(condition("c1")))
    with FhirDataSource(on_fetch=broken) as data_source:
        record = data_source.resolve({"conditions": TEMPLATES["conditions"]}, make_request({}), [BASE])
    assert [r["id"] for r in record.of_type("Condition")] == ["c1"]


def test_token_and_patient_id_never_reach_logs_warnings_or_reasons(
    source: FhirDataSource, rsps: responses.RequestsMock, caplog: pytest.LogCaptureFixture
) -> None:
    rsps.get(f"{BASE}/Patient/{PATIENT_ID}", body=requests.ConnectionError(f"failed {BASE}/Patient/{PATIENT_ID}"))
    rsps.get(f"{BASE}/Condition", status=302, headers={"Location": f"{OTHER_HOST}/x?patient={PATIENT_ID}"})
    rsps.get(f"{BASE}/MedicationRequest", status=503, body=TOKEN)
    page_2 = f"{BASE}/Observation?patient={PATIENT_ID}&page=2"
    rsps.get(page_2, status=401, json=OUTCOME)
    templates = {**TEMPLATES, "observations": "Observation?patient={{context.patientId}}"}
    prefetch = {"observations": searchset({"resourceType": "Observation", "id": "o1"}, next_url=page_2)}
    with caplog.at_level(logging.DEBUG, logger="cds_service.data_source"):
        record = source.resolve(templates, make_request(prefetch), [BASE])
    assert len(record.unavailable) == 4  # Observation: page 2 refused, so partial
    texts = [*record.warnings, *record.unavailable.values(), *record.diagnostics().values()]
    texts.append(record.describe_unavailable())
    texts += [entry.getMessage() + repr(getattr(entry, "fields", "")) for entry in caplog.records]
    assert caplog.records  # the data path does log
    for text in texts:
        assert TOKEN not in text
        assert PATIENT_ID not in text


def test_resolve_with_no_templates_is_empty(source: FhirDataSource) -> None:
    assert source.resolve({}, make_request({}), [BASE]).resources == {}


def test_resolve_after_close_does_not_raise(rsps: responses.RequestsMock) -> None:
    rsps.get(f"{BASE}/Condition", json=searchset(condition("c1")))
    data_source = FhirDataSource()
    data_source.close()
    record = data_source.resolve({"conditions": TEMPLATES["conditions"]}, make_request({}), [BASE])
    assert not record.is_known("Condition")
    assert len(rsps.calls) == 0


def test_cookies_from_one_server_are_never_sent_again(source: FhirDataSource, rsps: responses.RequestsMock) -> None:
    """One session serves every patient: a FHIR server's cookie must not follow the next request."""
    rsps.get(f"{BASE}/Condition", json=searchset(condition("c1")), headers={"Set-Cookie": "session=abc; Path=/"})
    request = make_request({})
    source.resolve({"conditions": TEMPLATES["conditions"]}, request, [BASE])
    source.resolve({"conditions": TEMPLATES["conditions"]}, request, [BASE])
    assert len(rsps.calls) == 2
    assert "Cookie" not in rsps.calls[1].request.headers
