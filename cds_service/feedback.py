"""Validation of a CDS Hooks 2.0 feedback body (``POST /cds-services/{id}/feedback``).

:func:`parse_feedback` checks the body against ``schemas/feedback.schema.json`` (compiled once,
at import) and turns it into frozen :class:`FeedbackItem` objects. The first problem found, in
document order, becomes a :class:`~cds_service.errors.BadRequest` whose message starts with the
JSON path of the offending member, e.g. ``feedback[0].outcome: 'maybe' is not one of [...]``.

Each item also has a canonical JSON form; the store derives its idempotency key from it, so the
same feedback posted twice (a client retry) is recorded once.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any, Final, Literal

from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError

from cds_service.errors import BadRequest

Outcome = Literal["accepted", "overridden"]

# Members of an item that FeedbackItem models; everything else (extension, vendor members) is kept verbatim.
_KNOWN_ITEM_MEMBERS: Final = frozenset({"card", "outcome", "acceptedSuggestions", "overrideReason", "outcomeTimestamp"})
# Unknown members are allowed by the spec, but they end up in the store: bound what one item may carry.
MAX_EXTRA_JSON_CHARS: Final = 16_384
# Messages echo client input; keep them short enough for a log line and an OperationOutcome.
_MAX_MESSAGE_CHARS: Final = 300

# RFC 3339 §5.6 date-time: full date, "T" (RFC 3339 also allows "t"), time with an optional fraction and a
# mandatory offset. datetime.fromisoformat alone is laxer (no offset, week dates, a space separator), so the
# shape is checked first and the calendar afterwards.
_RFC3339_DATE_TIME: Final = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
)


def parse_rfc3339(text: str) -> datetime | None:
    """An RFC 3339 date-time as an aware UTC datetime, or None when ``text`` is not one.

    A leap second (``:60``) is accepted and folded onto ``:59``, as Python cannot represent it.
    """
    match = _RFC3339_DATE_TIME.match(text)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(part) for part in match.group(1, 2, 3, 4, 5, 6))
    fraction, offset = match.group(7), match.group(8)
    microsecond = int((fraction[1:] + "000000")[:6]) if fraction else 0
    try:
        naive = datetime(year, month, day, hour, minute, min(second, 59), microsecond)
        if offset in ("Z", "z"):
            return naive.replace(tzinfo=UTC)
        offset_hours, offset_minutes = int(offset[1:3]), int(offset[4:6])
        if offset_hours > 23 or offset_minutes > 59:
            return None
        return datetime.fromisoformat(naive.isoformat() + offset).astimezone(UTC)
    except ValueError:  # month 13, 30 February, hour 25 ...
        return None


def _build_validator() -> Draft202012Validator:
    schema_text = resources.files("cds_service").joinpath("schemas/feedback.schema.json").read_text("utf-8")
    schema = json.loads(schema_text)
    Draft202012Validator.check_schema(schema)
    # Our own checker: jsonschema only checks "date-time" when the optional rfc3339-validator package is
    # installed, and silently passes everything otherwise.
    format_checker = FormatChecker(formats=())
    format_checker.checks("date-time")(lambda value: not isinstance(value, str) or parse_rfc3339(value) is not None)
    return Draft202012Validator(schema, format_checker=format_checker)


_VALIDATOR: Final = _build_validator()


@dataclass(frozen=True)
class ReasonCoding:
    """The override reason the clinician chose. Clients often omit ``display`` and some omit ``system``."""

    code: str
    system: str | None = None
    display: str | None = None


@dataclass(frozen=True)
class OverrideReason:
    """``overrideReason``: a reason from the card's list, a free-text comment, or both (cds-fb-3)."""

    reason: ReasonCoding | None = None
    user_comment: str | None = None


@dataclass(frozen=True)
class FeedbackItem:
    """One validated feedback item.

    ``outcome_timestamp`` is normalised to UTC. ``extra_json`` holds the members this class does not
    model (``extension`` and vendor members) as canonical JSON, so nothing the client sent is lost.
    """

    card: str
    outcome: Outcome
    outcome_timestamp: datetime
    accepted_suggestions: tuple[str, ...] = ()
    override_reason: OverrideReason | None = None
    extra_json: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The item in CDS Hooks member names, with the timestamp in canonical UTC form."""
        item: dict[str, Any] = {"card": self.card, "outcome": self.outcome}
        if self.accepted_suggestions:
            item["acceptedSuggestions"] = [{"id": suggestion} for suggestion in self.accepted_suggestions]
        if self.override_reason is not None:
            override: dict[str, Any] = {}
            if (reason := self.override_reason.reason) is not None:
                coding = {"system": reason.system, "code": reason.code, "display": reason.display}
                override["reason"] = {key: value for key, value in coding.items() if value is not None}
            if self.override_reason.user_comment is not None:
                override["userComment"] = self.override_reason.user_comment
            item["overrideReason"] = override
        item["outcomeTimestamp"] = format_timestamp(self.outcome_timestamp)
        if self.extra_json is not None:
            item.update(json.loads(self.extra_json))
        return item

    def canonical_json(self) -> str:
        """Sorted keys, no whitespace, UTF-8 text: equal items give equal strings."""
        return canonical_json(self.to_json())

    def idempotency_key(self, service_id: str) -> str:
        """sha256 hex over the service id and the canonical item: a repeated POST maps to the same key."""
        digest = hashlib.sha256()
        digest.update(service_id.encode("utf-8"))
        digest.update(b"\x00")  # separator: ("ab", "c...") and ("a", "bc...") must not collide
        digest.update(self.canonical_json().encode("utf-8"))
        return digest.hexdigest()


def canonical_json(value: object) -> str:
    """JSON with sorted keys and no insignificant whitespace."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def format_timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with a ``Z`` suffix; microseconds only when present."""
    utc = moment.astimezone(UTC)
    text = utc.strftime("%Y-%m-%dT%H:%M:%S")
    if utc.microsecond:
        text += f".{utc.microsecond:06d}".rstrip("0")
    return text + "Z"


def parse_feedback(body: object) -> tuple[FeedbackItem, ...]:
    """Validate a feedback request body and return its items in order.

    Raises :class:`BadRequest` naming the JSON path of the first problem in document order.
    """
    errors = list(_VALIDATOR.iter_errors(body))
    if errors:
        first = min(enumerate(errors), key=lambda pair: (_document_position(body, pair[1].absolute_path), pair[0]))[1]
        path = json_path(first.absolute_path)
        message = f"{path}: {_describe(first)}"
        if len(message) > _MAX_MESSAGE_CHARS:
            message = message[: _MAX_MESSAGE_CHARS - 3] + "..."
        raise BadRequest(message, expression=path)
    assert isinstance(body, Mapping)  # guaranteed by the schema; narrows the type for mypy
    return tuple(_item_from_json(index, item) for index, item in enumerate(body["feedback"]))


def json_path(path: Iterable[str | int]) -> str:
    """``["feedback", 0, "outcome"]`` -> ``feedback[0].outcome``; the empty path is ``body``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text or "body"


def _document_position(document: object, path: Sequence[str | int]) -> tuple[int, ...]:
    """Where ``path`` lies in the document: list indexes and key positions, for a 'first problem' ordering."""
    position: list[int] = []
    node = document
    for part in path:
        if isinstance(node, Mapping) and isinstance(part, str):
            keys = list(node)
            position.append(keys.index(part) if part in node else len(keys))
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            position.append(part)
            node = node[part]
        else:
            break
    return tuple(position)


def _describe(error: ValidationError) -> str:
    """A short message for one schema error, without echoing long client input."""
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    if error.validator in ("anyOf", "oneOf") and "x-message" in schema:
        return str(schema["x-message"])
    if error.validator == "maxLength":
        return f"is longer than {error.validator_value} characters"
    if error.validator == "maxItems":
        return f"has more than {error.validator_value} items"
    if error.validator == "minItems":
        return f"needs at least {error.validator_value} item" + ("s" if error.validator_value != 1 else "")
    if error.validator == "format" and error.validator_value == "date-time":
        return f"{_short_repr(error.instance)} is not an RFC 3339 date-time (e.g. 2021-12-11T10:05:31Z)"
    if error.validator == "type":
        return f"{_short_repr(error.instance)} is not of type {error.validator_value!r}"
    return str(error.message)


def _short_repr(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _item_from_json(index: int, item: Mapping[str, Any]) -> FeedbackItem:
    timestamp = parse_rfc3339(item["outcomeTimestamp"])
    assert timestamp is not None  # the schema's format check ran the same parser
    override_reason = None
    if (override := item.get("overrideReason")) is not None:
        reason = None
        if (coding := override.get("reason")) is not None:
            reason = ReasonCoding(
                code=coding["code"], system=coding.get("system") or None, display=coding.get("display") or None
            )
        # Clients send "userComment": "" when the clinician typed nothing; that is no comment.
        comment = override.get("userComment") or None
        if reason is not None or comment is not None:
            override_reason = OverrideReason(reason=reason, user_comment=comment)
    extras = {key: value for key, value in item.items() if key not in _KNOWN_ITEM_MEMBERS}
    extra_json = None
    if extras:
        try:
            extra_json = canonical_json(extras)
        except ValueError as error:  # NaN or Infinity smuggled in by a lenient JSON parser
            raise BadRequest(f"feedback[{index}]: {error}", expression=f"feedback[{index}]") from None
        if len(extra_json) > MAX_EXTRA_JSON_CHARS:
            raise BadRequest(
                f"feedback[{index}]: extension members are longer than {MAX_EXTRA_JSON_CHARS} characters",
                expression=f"feedback[{index}]",
            )
    return FeedbackItem(
        card=item["card"],
        outcome=item["outcome"],
        outcome_timestamp=timestamp,
        accepted_suggestions=tuple(suggestion["id"] for suggestion in item.get("acceptedSuggestions", ())),
        override_reason=override_reason,
        extra_json=extra_json,
    )
