"""Validation of CDS Hooks feedback bodies (cds_service.feedback)."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from cds_service.errors import BadRequest
from cds_service.feedback import (
    MAX_EXTRA_JSON_CHARS,
    FeedbackItem,
    OverrideReason,
    ReasonCoding,
    json_path,
    parse_feedback,
    parse_rfc3339,
)

TS = "2021-12-11T10:05:31Z"
CARD = "9368d37b-283f-44a0-93ea-547cebab93ed"


def accepted(**overrides: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "card": CARD,
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": "e56e1945-20b3-4393-8503-a1a20fd73152"}],
        "outcomeTimestamp": TS,
    }
    item.update(overrides)
    return item


def overridden(**overrides: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "card": CARD,
        "outcome": "overridden",
        "overrideReason": {
            "reason": {
                "code": "d7e8f0a1",
                "system": "http://example.org/cds-services/fhir/CodeSystem/override-reasons",
            },
            "userComment": "Patient already had an MRI elsewhere",
        },
        "outcomeTimestamp": TS,
    }
    item.update(overrides)
    return item


def without(item: dict[str, Any], key: str) -> dict[str, Any]:
    copied = copy.deepcopy(item)
    del copied[key]
    return copied


# Each bad body and the exact message: the JSON path of the first problem, then what is wrong.
BAD_BODIES: list[tuple[str, object, str]] = [
    ("not an object", [], "body: [] is not of type 'object'"),
    ("a string", "feedback", "body: 'feedback' is not of type 'object'"),
    ("no feedback member", {}, "body: 'feedback' is a required property"),
    ("feedback not an array", {"feedback": {}}, "feedback: {} is not of type 'array'"),
    ("empty feedback", {"feedback": []}, "feedback: needs at least 1 item"),
    ("too many items", {"feedback": [overridden()] * 101}, "feedback: has more than 100 items"),
    ("item not an object", {"feedback": ["x"]}, "feedback[0]: 'x' is not of type 'object'"),
    ("missing card", {"feedback": [without(accepted(), "card")]}, "feedback[0]: 'card' is a required property"),
    (
        "missing outcome",
        {"feedback": [without(overridden(), "outcome")]},
        "feedback[0]: 'outcome' is a required property",
    ),
    (
        "missing timestamp",
        {"feedback": [without(overridden(), "outcomeTimestamp")]},
        "feedback[0]: 'outcomeTimestamp' is a required property",
    ),
    (
        "unknown outcome (cds-fb-1)",
        {"feedback": [overridden(outcome="maybe")]},
        "feedback[0].outcome: 'maybe' is not one of ['accepted', 'overridden']",
    ),
    (
        "accepted without suggestions (cds-fb-2)",
        {"feedback": [without(accepted(), "acceptedSuggestions")]},
        "feedback[0]: 'acceptedSuggestions' is a required property",
    ),
    (
        "empty overrideReason (cds-fb-3)",
        {"feedback": [overridden(overrideReason={})]},
        "feedback[0].overrideReason: needs a reason, a userComment or both (cds-fb-3)",
    ),
    (
        "reason without code",
        {"feedback": [overridden(overrideReason={"reason": {"system": "http://x"}})]},
        "feedback[0].overrideReason.reason: 'code' is a required property",
    ),
    (
        "reason code empty",
        {"feedback": [overridden(overrideReason={"reason": {"system": "http://x", "code": ""}})]},
        "feedback[0].overrideReason.reason.code: '' should be non-empty",
    ),
    (
        "reason system not a string",
        {"feedback": [overridden(overrideReason={"reason": {"system": 1, "code": "x"}})]},
        "feedback[0].overrideReason.reason.system: 1 is not of type 'string'",
    ),
    (
        "card not a string",
        {"feedback": [overridden(card=42)]},
        "feedback[0].card: 42 is not of type 'string'",
    ),
    ("card empty", {"feedback": [overridden(card="")]}, "feedback[0].card: '' should be non-empty"),
    (
        "card too long",
        {"feedback": [overridden(card="c" * 129)]},
        "feedback[0].card: is longer than 128 characters",
    ),
    (
        "suggestion without id",
        {"feedback": [accepted(acceptedSuggestions=[{"uuid": "x"}])]},
        "feedback[0].acceptedSuggestions[0]: 'id' is a required property",
    ),
    (
        "empty acceptedSuggestions",
        {"feedback": [accepted(acceptedSuggestions=[])]},
        "feedback[0].acceptedSuggestions: needs at least 1 item",
    ),
    (
        "too many suggestions",
        {"feedback": [accepted(acceptedSuggestions=[{"id": str(n)} for n in range(101)])]},
        "feedback[0].acceptedSuggestions: has more than 100 items",
    ),
    (
        "comment too long",
        {"feedback": [overridden(overrideReason={"userComment": "x" * 4001})]},
        "feedback[0].overrideReason.userComment: is longer than 4000 characters",
    ),
    (
        "timestamp without offset",
        {"feedback": [overridden(outcomeTimestamp="2021-12-11T10:05:31")]},
        "feedback[0].outcomeTimestamp: '2021-12-11T10:05:31' is not an RFC 3339 date-time (e.g. 2021-12-11T10:05:31Z)",
    ),
    (
        "timestamp date only",
        {"feedback": [overridden(outcomeTimestamp="2021-12-11")]},
        "feedback[0].outcomeTimestamp: '2021-12-11' is not an RFC 3339 date-time (e.g. 2021-12-11T10:05:31Z)",
    ),
    (
        "timestamp impossible date",
        {"feedback": [overridden(outcomeTimestamp="2021-02-30T10:05:31Z")]},
        "feedback[0].outcomeTimestamp: '2021-02-30T10:05:31Z' is not an RFC 3339 date-time (e.g. 2021-12-11T10:05:31Z)",
    ),
    (
        "timestamp not a string",
        {"feedback": [overridden(outcomeTimestamp=1639217131)]},
        "feedback[0].outcomeTimestamp: 1639217131 is not of type 'string'",
    ),
    (
        "extension not an object",
        {"feedback": [overridden(extension=[1])]},
        "feedback[0].extension: [1] is not of type 'object'",
    ),
    (
        "problem in the second item is located there",
        {"feedback": [overridden(), overridden(outcome="dismissed")]},
        "feedback[1].outcome: 'dismissed' is not one of ['accepted', 'overridden']",
    ),
    (
        "the first problem in document order wins",
        {"feedback": [overridden(outcome="x"), overridden(card="")]},
        "feedback[0].outcome: 'x' is not one of ['accepted', 'overridden']",
    ),
]


@pytest.mark.parametrize(("body", "message"), [(b, m) for _, b, m in BAD_BODIES], ids=[i for i, _, _ in BAD_BODIES])
def test_bad_body_message_names_the_path(body: object, message: str) -> None:
    with pytest.raises(BadRequest) as raised:
        parse_feedback(body)
    assert raised.value.message == message
    assert raised.value.status == 400
    outcome = raised.value.to_operation_outcome()
    assert outcome["issue"][0]["diagnostics"] == message
    assert outcome["issue"][0]["expression"] == [message.split(":", 1)[0]]


def test_long_input_is_not_echoed_in_full() -> None:
    with pytest.raises(BadRequest) as raised:
        parse_feedback({"feedback": [overridden(outcome="z" * 5000)]})
    assert len(raised.value.message) <= 300
    assert raised.value.message.startswith("feedback[0].outcome: ")


def test_sandbox_feedback_shape_is_accepted() -> None:
    # What cds-hooks/sandbox card-list.jsx posts: reason with system and code but no display, no userComment.
    body = {
        "feedback": [
            {
                "card": "c1f4b1f4-6e0e-4a5c-9d7c-3c2f7f0b6a11",
                "outcome": "overridden",
                "overrideReason": {
                    "reason": {"code": "guideline-not-applicable", "system": "http://example.org/override-reason"}
                },
                "outcomeTimestamp": "2026-11-27T01:02:03.456Z",
            }
        ]
    }
    (item,) = parse_feedback(body)
    assert item.outcome == "overridden"
    assert item.override_reason == OverrideReason(
        reason=ReasonCoding(system="http://example.org/override-reason", code="guideline-not-applicable")
    )
    assert item.outcome_timestamp == datetime(2026, 11, 27, 1, 2, 3, 456000, tzinfo=UTC)


def test_spec_example_accepted_and_overridden() -> None:
    # The two examples of CDS Hooks 2.0 §Feedback, in one POST.
    items = parse_feedback({"feedback": [accepted(), overridden()]})
    assert [item.outcome for item in items] == ["accepted", "overridden"]
    assert items[0].accepted_suggestions == ("e56e1945-20b3-4393-8503-a1a20fd73152",)
    assert items[0].override_reason is None
    reason = items[1].override_reason
    assert reason is not None and reason.user_comment == "Patient already had an MRI elsewhere"
    assert reason.reason is not None and reason.reason.display is None


def test_field_client_shapes_are_accepted_and_empty_strings_read_as_absent() -> None:
    # Shapes seen from EHR clients in the field: system and userComment sent as "", or system left out.
    empty_strings = overridden(overrideReason={"reason": {"code": "proceed", "system": ""}, "userComment": ""})
    no_system = overridden(overrideReason={"reason": {"code": "proceed", "display": "Proceed with order"}})
    only_empty_comment = overridden(overrideReason={"userComment": ""})
    first, second, third = parse_feedback({"feedback": [empty_strings, no_system, only_empty_comment]})
    assert first.override_reason == OverrideReason(reason=ReasonCoding(code="proceed"))
    assert second.override_reason == OverrideReason(reason=ReasonCoding(code="proceed", display="Proceed with order"))
    assert third.override_reason is None
    assert first.to_json()["overrideReason"] == {"reason": {"code": "proceed"}}


def test_comment_only_override_is_valid() -> None:
    (item,) = parse_feedback({"feedback": [overridden(overrideReason={"userComment": "not now"})]})
    assert item.override_reason == OverrideReason(reason=None, user_comment="not now")


def test_unknown_members_are_kept() -> None:
    body = {
        "feedback": [overridden(extension={"com.example.user": "practitioner-role"}, vendorField=3)],
        "extension": {"top": True},
    }
    (item,) = parse_feedback(body)
    assert item.extra_json is not None
    assert json.loads(item.extra_json) == {"extension": {"com.example.user": "practitioner-role"}, "vendorField": 3}
    assert item.to_json()["extension"] == {"com.example.user": "practitioner-role"}


def test_oversized_unknown_members_are_refused() -> None:
    with pytest.raises(BadRequest) as raised:
        parse_feedback({"feedback": [overridden(extension={"blob": "x" * MAX_EXTRA_JSON_CHARS})]})
    assert raised.value.message == f"feedback[0]: extension members are longer than {MAX_EXTRA_JSON_CHARS} characters"


def test_round_trip_through_canonical_json() -> None:
    (item,) = parse_feedback({"feedback": [overridden(extension={"b": 1, "a": [2]})]})
    assert parse_feedback({"feedback": [json.loads(item.canonical_json())]}) == (item,)


def test_idempotency_key_ignores_key_order_and_offset_spelling() -> None:
    first = parse_feedback({"feedback": [accepted()]})[0]
    reordered = dict(reversed(list(accepted(outcomeTimestamp="2021-12-11T11:05:31+01:00").items())))
    second = parse_feedback({"feedback": [reordered]})[0]
    assert first.idempotency_key("svc") == second.idempotency_key("svc")
    assert first.canonical_json() == second.canonical_json()


def test_idempotency_key_changes_with_content_and_service() -> None:
    base = parse_feedback({"feedback": [overridden()]})[0]
    keys = {
        base.idempotency_key("svc"),
        base.idempotency_key("svc2"),
        parse_feedback({"feedback": [overridden(outcomeTimestamp="2021-12-11T10:05:32Z")]})[0].idempotency_key("svc"),
        parse_feedback({"feedback": [overridden(overrideReason={"userComment": "x"})]})[0].idempotency_key("svc"),
        parse_feedback({"feedback": [accepted()]})[0].idempotency_key("svc"),
    }
    assert len(keys) == 5
    assert all(len(key) == 64 for key in keys)


def test_feedback_item_is_frozen() -> None:
    (item,) = parse_feedback({"feedback": [accepted()]})
    assert isinstance(item, FeedbackItem)
    with pytest.raises(AttributeError):
        item.card = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2021-12-11T10:05:31Z", datetime(2021, 12, 11, 10, 5, 31, tzinfo=UTC)),
        ("2021-12-11t10:05:31z", datetime(2021, 12, 11, 10, 5, 31, tzinfo=UTC)),
        ("2021-12-11T10:05:31.5+02:00", datetime(2021, 12, 11, 8, 5, 31, 500000, tzinfo=UTC)),
        ("2021-12-11T10:05:31.123456789-05:30", datetime(2021, 12, 11, 15, 35, 31, 123456, tzinfo=UTC)),
        ("2016-12-31T23:59:60Z", datetime(2016, 12, 31, 23, 59, 59, tzinfo=UTC)),
        ("2021-12-11 10:05:31Z", None),
        ("2021-12-11T10:05Z", None),
        ("2021-13-01T10:05:31Z", None),
        ("2021-12-11T24:05:31Z", None),
        ("2021-12-11T10:05:31+24:00", None),
        ("20211211T100531Z", None),
        ("", None),
    ],
)
def test_parse_rfc3339(text: str, expected: datetime | None) -> None:
    assert parse_rfc3339(text) == expected


def test_offsets_are_normalised_to_utc() -> None:
    moment = parse_rfc3339("2021-12-11T10:05:31+01:00")
    assert moment is not None
    assert moment.utcoffset() == timedelta(0)
    assert moment == datetime(2021, 12, 11, 10, 5, 31, tzinfo=timezone(timedelta(hours=1)))


def test_json_path_rendering() -> None:
    assert json_path([]) == "body"
    assert json_path(["feedback", 3, "acceptedSuggestions", 0, "id"]) == "feedback[3].acceptedSuggestions[0].id"
