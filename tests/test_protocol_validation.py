"""Request validation: every malformed request is refused with a message naming what is wrong."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cds_service.errors import BadRequest
from cds_service.protocol.validation import check_depth, decode_json, validate_hook_request

SERVICE = "lumbar-imaging-order-select"


def minimal_request(hook: str = "order-select") -> dict[str, Any]:
    request: dict[str, Any] = {
        "hook": hook,
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {
            "userId": "Practitioner/1",
            "patientId": "p1",
            "draftOrders": {
                "resourceType": "Bundle",
                "entry": [{"resource": {"resourceType": "ServiceRequest", "id": "sr1", "status": "draft"}}],
            },
        },
    }
    if hook == "order-select":
        request["context"]["selections"] = ["ServiceRequest/sr1"]
    return request


def test_minimal_requests_pass() -> None:
    validate_hook_request(minimal_request(), service_id=SERVICE, expected_hook="order-select")
    validate_hook_request(minimal_request("order-sign"), service_id="x", expected_hook="order-sign")


def _mutated(path: list[Any], value: Any = None, delete: bool = False) -> dict[str, Any]:
    request = copy.deepcopy(minimal_request())
    target = request
    for key in path[:-1]:
        target = target[key]
    if delete:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return request


@pytest.mark.parametrize(
    ("request_body", "message"),
    [
        (_mutated(["hook"], delete=True), "(root): 'hook' is a required property"),
        (_mutated(["context", "patientId"], delete=True), "context: 'patientId' is a required property"),
        (_mutated(["context", "patientId"], 12), "context.patientId: 12 is not of type 'string'"),
        (_mutated(["context", "selections"], delete=True), "context: 'selections' is a required property"),
        (_mutated(["context", "selections"], []), "context.selections: [] should be non-empty"),
        (_mutated(["context", "draftOrders", "resourceType"], "Patient"), "context.draftOrders.resourceType:"),
        (_mutated(["fhirServer"], "ftp://x"), "fhirServer: 'ftp://x' does not match"),
        (
            _mutated(
                ["fhirAuthorization"],
                {
                    "access_token": "t",
                    "token_type": "Bearer",
                    "expires_in": 30,
                    "scope": "patient/*.read",
                    "subject": "cds",
                },
            ),
            "(root): 'fhirServer' is a dependency of 'fhirAuthorization'",
        ),
        (
            _mutated(["prefetch"], {"patient": "Patient/1"}),
            "prefetch.patient: 'Patient/1' is not of type 'object', 'null'",
        ),
        (_mutated(["prefetch"], {"patient": {"id": "1"}}), "prefetch.patient: 'resourceType' is a required property"),
        (_mutated(["hook"], "order-sign"), "hook: 'order-sign' does not match service"),
        (
            _mutated(["context", "selections"], ["ServiceRequest/other"]),
            "context.selections[0]: 'ServiceRequest/other' is not an order in context.draftOrders",
        ),
    ],
)
def test_malformed_requests_are_refused_with_the_path(request_body: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequest) as caught:
        validate_hook_request(request_body, service_id=SERVICE, expected_hook="order-select")
    assert message in caught.value.message


def test_body_must_be_an_object() -> None:
    with pytest.raises(BadRequest, match="must be a JSON object"):
        validate_hook_request([1, 2], service_id=SERVICE, expected_hook="order-select")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "empty"),
        (b"{", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[" * 70 + b"]" * 70, "deeper than 64"),
    ],
)
def test_decode_refuses_bad_json(raw: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        decode_json(raw, max_depth=64)


def tree_depth(value: Any) -> int:
    """The reference definition: containers on the longest path from the root (scalars count 0)."""
    if isinstance(value, dict):
        return 1 + max((tree_depth(member) for member in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((tree_depth(member) for member in value), default=0)
    return 0


def test_depth_check_counts_nesting_exactly() -> None:
    value: Any = 1
    for _ in range(10):
        value = {"a": value}
    raw = orjson.dumps(value)
    check_depth(raw, 10)
    with pytest.raises(BadRequest):
        check_depth(raw, 9)


# Strings that look like structure: brackets, quotes and backslashes must not count as nesting.
_TRICKY_STRINGS = st.sampled_from(['[', ']', '{', '}', '"', '\\', '\\"', '"[', '}"', '\\\\"]', 'é[', '""', "x"])
_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=5)  # JSON text holds no lone surrogates
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | _TEXT | _TRICKY_STRINGS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_TEXT | _TRICKY_STRINGS, children, max_size=4),
    max_leaves=40,
)


@settings(max_examples=400, deadline=None)
@given(_JSON, st.booleans())
def test_depth_check_matches_the_decoded_tree(value: Any, indent: bool) -> None:
    raw = orjson.dumps(value, option=orjson.OPT_INDENT_2 if indent else 0)
    depth = tree_depth(value)
    check_depth(raw, max(depth, 1))
    if depth > 1:
        with pytest.raises(BadRequest, match=f"deeper than {depth - 1} levels"):
            check_depth(raw, depth - 1)
