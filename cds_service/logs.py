"""Structured (JSON-lines) logging with redaction and the request's ``hookInstance``.

Log lines carry ``hookInstance``, the service, timings and outcomes. They never carry tokens,
patient identifiers or names: the code logs none, and a filter also masks anything that looks
like a bearer token or a JWT, in case a library message includes one.

``hookInstance`` is bound once per service call (:func:`bind_hook_instance`) in a context variable;
:class:`HookInstanceFilter` stamps it on every line logged while it is bound, including lines from
the FHIR fetch threads, which run each fetch in a copy of the caller's context.
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

_SECRET_PATTERNS = (
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"),
    re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"),  # a JWT (header starts with {")
    re.compile(r'(?i)("?access_token"?\s*[:=]\s*"?)[^",\s}]+'),
)


# Client-sent hookInstance values are UUIDs; anything else that looks like a plain identifier is logged too, but
# never a long or odd string (it is client input and goes into every line of the request).
_HOOK_INSTANCE_SHAPE = re.compile(r"[A-Za-z0-9._:-]{1,100}")
# A FHIR reference "Type/id": ids are patient-linked, so log lines keep the type only.
_REFERENCE = re.compile(r"\b([A-Z][A-Za-z]+)/[A-Za-z0-9\-.]{1,64}")

# The member as it appears in a raw request body, searched before the body is parsed (see peek_hook_instance).
_HOOK_INSTANCE_MEMBER = re.compile(rb'"hookInstance"\s*:\s*"([A-Za-z0-9._:-]{1,100})"')
# Clients put hookInstance near the top (after "hook"); a body that puts it after the prefetch costs a scan of this
# many bytes only (about 1 us), and its authentication lines go without it.
_PEEK_BYTES = 4 * 1024

_hook_instance: contextvars.ContextVar[str | None] = contextvars.ContextVar("cds_hook_instance", default=None)


def bind_hook_instance(value: object) -> None:
    """Stamp ``value`` (the request's hookInstance) on the following log lines of this context.

    A value that is not a plain identifier string is bound as ``"(invalid)"``: the line still says it
    belongs to a request whose hookInstance could not be logged.
    """
    if value is None:
        _hook_instance.set(None)
    elif isinstance(value, str) and _HOOK_INSTANCE_SHAPE.fullmatch(value):
        _hook_instance.set(value)
    else:
        _hook_instance.set("(invalid)")


def peek_hook_instance(raw: bytes) -> str | None:
    """The hookInstance of a raw request body, found without parsing it (in its first 4 KiB).

    For the lines written before the body is parsed and validated (client authentication, a 401): the
    value is only a log correlation key, so a body that is malformed, or a member that appears twice,
    costs nothing but a missing or misleading key on those lines.
    """
    match = _HOOK_INSTANCE_MEMBER.search(raw, 0, _PEEK_BYTES)
    return match.group(1).decode("ascii") if match else None


def clear_hook_instance() -> None:
    """Forget the bound hookInstance (at the start of every HTTP request: server threads are reused)."""
    _hook_instance.set(None)


def current_hook_instance() -> str | None:
    return _hook_instance.get()


def without_resource_ids(text: str) -> str:
    """``"Condition/c9 skipped: ..."`` -> ``"Condition skipped: ..."``: resource ids stay out of the logs."""
    return _REFERENCE.sub(r"\1", text)


def redact(text: str) -> str:
    """Mask bearer tokens, JWTs and access_token values in a string."""
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + "[REDACTED]", text)
    return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line; structured fields come from ``extra={"fields": {...}}``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(entry, default=str).decode()


class HookInstanceFilter(logging.Filter):
    """Adds the bound hookInstance to a record's structured fields (unless the line already names one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        hook_instance = _hook_instance.get()
        if hook_instance is None:
            return True
        fields = getattr(record, "fields", None)
        if not isinstance(fields, dict):
            record.fields = {"hookInstance": hook_instance}
        elif "hookInstance" not in fields:
            record.fields = {"hookInstance": hook_instance, **fields}
        return True


class RedactingFilter(logging.Filter):
    """Applied to every handler we install, so third-party messages are masked too."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.msg = redact(record.getMessage())
            record.args = None
        elif isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


def configure_logging(level: str = "INFO") -> None:
    """Install one JSON handler on the ``cds_service`` logger (idempotent)."""
    logger = logging.getLogger("cds_service")
    logger.setLevel(level)
    # urllib3 logs request lines at DEBUG, and FHIR search URLs carry patient ids: keep it quiet whatever our level.
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    if not any(getattr(h, "_cds_handler", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        handler.addFilter(HookInstanceFilter())
        handler.addFilter(RedactingFilter())
        handler._cds_handler = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
