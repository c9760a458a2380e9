"""Structured (JSON-lines) logging with redaction.

Log lines carry ``hookInstance``, the service, timings and outcomes. They never carry tokens,
patient identifiers or names: the code logs none, and a filter also masks anything that looks
like a bearer token or a JWT, in case a library message includes one.
"""

from __future__ import annotations

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
        handler.addFilter(RedactingFilter())
        handler._cds_handler = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
