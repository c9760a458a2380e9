"""The durable feedback and audit store (``CDS_DATABASE_URL``; README.md, 'Settings').

Usage::

    store = open_store(settings.database_url, settings.data_dir, on_audit_drop=metrics_callback)
    new = store.record_feedback(service_id, parse_feedback(body), client_iss)  # committed on return
    store.record_decision(DecisionAudit(...))                                  # queued, never blocks
    store.ping()                                                               # /readyz
    store.close()                                                              # at shutdown

``record_feedback`` raises :class:`StoreUnavailable` (a ``CdsError`` with status 503) when the
database cannot be reached.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from cds_service.errors import ConfigurationError
from cds_service.store.audit import DEFAULT_RETRY_WINDOW_S
from cds_service.store.base import (
    DecisionAudit,
    DropCallback,
    DropReason,
    RatingAudit,
    Store,
    StoredFeedback,
    StoreUnavailable,
)
from cds_service.store.postgres import DEFAULT_CONNECT_TIMEOUT_S, TCP_PARAMS, PostgresStore
from cds_service.store.sqlite import SqliteStore

__all__ = [
    "DEFAULT_SQLITE_FILENAME",
    "DecisionAudit",
    "DropCallback",
    "DropReason",
    "PostgresStore",
    "RatingAudit",
    "SqliteStore",
    "Store",
    "StoreUnavailable",
    "StoredFeedback",
    "open_store",
]

DEFAULT_SQLITE_FILENAME: Final = "cds-service.sqlite3"


def open_store(
    database_url: str | None,
    data_dir: str,
    *,
    on_audit_drop: DropCallback | None = None,
    audit_capacity: int = 10_000,
    audit_retry_window: float = DEFAULT_RETRY_WINDOW_S,
) -> Store:
    """Open (and create the schema of) the store that ``CDS_DATABASE_URL`` names.

    * ``None`` or empty: SQLite file ``<data_dir>/cds-service.sqlite3`` (the directory is created);
    * ``sqlite:///abs/path`` (also ``sqlite:////abs/path``): that SQLite file;
    * ``postgresql://...`` or ``postgres://...``: PostgreSQL.

    A store that cannot be reached or written now (PostgreSQL down, a full or read-only data
    directory) is not an error here: ``ping()`` reports it, feedback raises :class:`StoreUnavailable`
    (503) until it recovers, and cards keep flowing meanwhile.

    Raises :class:`ConfigurationError` naming ``CDS_DATABASE_URL`` for a malformed URL or a file that
    is not an SQLite database. Messages never contain a password.
    """
    url = (database_url or "").strip()
    options: dict[str, Any] = {"on_audit_drop": on_audit_drop, "audit_capacity": audit_capacity,
               "audit_retry_window": audit_retry_window}
    if not url:
        return _open_sqlite(Path(data_dir) / DEFAULT_SQLITE_FILENAME, options)
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "sqlite":
        return _open_sqlite(_sqlite_path(url), options)
    if scheme in ("postgresql", "postgres"):
        params = _postgres_params(url)
        extra: dict[str, str | int] = {}
        if "application_name" not in params:  # lets a DBA see whose connections these are
            extra["application_name"] = "cds-service"
        if "connect_timeout" not in params:
            # Short: a store that does not answer must fail a feedback POST fast, not hang a worker.
            extra["connect_timeout"] = DEFAULT_CONNECT_TIMEOUT_S
        for name, value in TCP_PARAMS.items():
            if name not in params:
                extra[name] = value
        return PostgresStore(make_conninfo(url, **extra), **options)
    shown = repr(scheme) if scheme else "none"
    raise ConfigurationError(f"CDS_DATABASE_URL: expected sqlite:///path or postgresql://..., got scheme {shown}")


def _postgres_params(url: str) -> Mapping[str, object]:
    # libpq's own parser, so that every URL libpq accepts is accepted; its messages can quote the whole URL
    # (password included), so they are replaced by ours.
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        raise ConfigurationError("CDS_DATABASE_URL: not a valid postgresql:// URL") from None
    # libpq checks these only when connecting; a typo should stop start-up instead of failing every request.
    for name in ("port", "connect_timeout"):
        value = str(params.get(name, "0"))
        if not all(part.strip().isdigit() for part in value.split(",")):
            raise ConfigurationError(f"CDS_DATABASE_URL: {name} {value!r} is not a number")
    return params


def _sqlite_path(url: str) -> Path:
    parts = urlsplit(url)
    if parts.netloc or parts.query or parts.fragment:
        raise ConfigurationError("CDS_DATABASE_URL: an SQLite URL is sqlite:///absolute/path/to/file (no host)")
    path = unquote(parts.path)
    if path.startswith("//"):  # SQLAlchemy spelling of an absolute path: sqlite:////abs/path
        path = path[1:]
    if not path.startswith("/") or path.rstrip("/") == "" or path.endswith("/") or path == "/:memory:":
        raise ConfigurationError(
            f"CDS_DATABASE_URL: {url!r} does not name an SQLite file by absolute path (sqlite:///abs/path)"
        )
    return Path(path)


def _open_sqlite(path: Path, options: dict[str, Any]) -> SqliteStore:
    try:
        return SqliteStore(path, **options)
    except sqlite3.Error as error:  # not an SQLite file (a directory that cannot be written is not an error)
        raise ConfigurationError(f"CDS_DATABASE_URL: cannot open SQLite file {path}: {error}") from None
