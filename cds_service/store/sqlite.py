"""SQLite store: the embedded default (one file in the data directory).

WAL mode lets readers run beside the one writer; ``BEGIN IMMEDIATE`` plus a busy timeout queues
writers from several gunicorn worker processes instead of failing them. Feedback commits use
``synchronous=FULL`` (the WAL is fsync'ed before COMMIT returns, so an acknowledged item survives
a killed process or a power cut); the audit writer's own connection uses ``NORMAL``, which in WAL
mode is still crash-safe for the process but may lose the newest audit rows on power loss.

One connection per thread: sqlite3 connections are not meant to be shared between threads, and a
connection must not cross a fork, so a forked child starts with none.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from cds_service.feedback import FeedbackItem, format_timestamp, parse_feedback
from cds_service.store.audit import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_QUEUE_CAPACITY,
    DEFAULT_RETRY_WINDOW_S,
    AuditWriter,
    QueuedAuditMixin,
    reset_after_fork,
)
from cds_service.store.base import (
    SCHEMA_VERSION,
    DecisionAudit,
    DropCallback,
    StoredFeedback,
    StoreUnavailable,
    ratings_from_json,
)

log = logging.getLogger(__name__)

DEFAULT_BUSY_TIMEOUT_S: Final = 10.0

_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS schema_version (
        version INTEGER NOT NULL PRIMARY KEY,
        applied_at TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS feedback (
        id INTEGER PRIMARY KEY,
        idempotency_key TEXT NOT NULL UNIQUE,
        service_id TEXT NOT NULL,
        card TEXT NOT NULL,
        outcome TEXT NOT NULL,
        outcome_timestamp TEXT NOT NULL,
        override_system TEXT,
        override_code TEXT,
        client_iss TEXT,
        item_json TEXT NOT NULL,
        received_at TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS feedback_card ON feedback (card)",
    "CREATE INDEX IF NOT EXISTS feedback_service_time ON feedback (service_id, outcome_timestamp)",
    """CREATE TABLE IF NOT EXISTS decision_audit (
        id INTEGER PRIMARY KEY,
        hook_instance TEXT NOT NULL,
        service_id TEXT NOT NULL,
        hook TEXT NOT NULL,
        client_iss TEXT,
        evaluated_at TEXT NOT NULL,
        ratings_json TEXT NOT NULL,
        card_ids_json TEXT NOT NULL,
        card_indicators_json TEXT NOT NULL,
        duration_ms REAL NOT NULL,
        recorded_at TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS decision_audit_hook_instance ON decision_audit (hook_instance)",
    "CREATE INDEX IF NOT EXISTS decision_audit_evaluated_at ON decision_audit (evaluated_at)",
)

_INSERT_FEEDBACK: Final = """
    INSERT INTO feedback (idempotency_key, service_id, card, outcome, outcome_timestamp,
                          override_system, override_code, client_iss, item_json, received_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (idempotency_key) DO NOTHING
"""

_INSERT_DECISION: Final = """
    INSERT INTO decision_audit (hook_instance, service_id, hook, client_iss, evaluated_at, ratings_json,
                                card_ids_json, card_indicators_json, duration_ms, recorded_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""


def _now_text() -> str:
    return format_timestamp(datetime.now(UTC))


class SqliteStore(QueuedAuditMixin):
    """The :class:`~cds_service.store.base.Store` on a local SQLite file."""

    def __init__(
        self,
        path: str | Path,
        *,
        busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
        audit_capacity: int = DEFAULT_QUEUE_CAPACITY,
        audit_batch_size: int = DEFAULT_BATCH_SIZE,
        on_audit_drop: DropCallback | None = None,
        audit_retry_window: float = DEFAULT_RETRY_WINDOW_S,
    ) -> None:
        self.path = str(path)
        self._busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._closed = False
        self._schema_ready = False
        self._schema_lock = threading.Lock()
        self._audit = AuditWriter(
            self._write_decisions,
            capacity=audit_capacity,
            batch_size=audit_batch_size,
            on_drop=on_audit_drop,
            retry_window=audit_retry_window,
        )
        reset_after_fork(self)
        try:
            self._ensure_schema()
        except StoreUnavailable as error:
            # A read-only or full data directory: cards do not need it. Feedback answers 503 and ping() is
            # False until it is fixed; the schema is created on the first use that succeeds.
            log.warning("SQLite store not usable at start-up: %s", error.detail)

    # -- connections -------------------------------------------------------------------------------

    def _connect(self, synchronous: str) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; we issue BEGIN IMMEDIATE / COMMIT ourselves.
        # check_same_thread=False only so that close() may close every thread's connection.
        connection = sqlite3.connect(
            self.path, timeout=self._busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        connection.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_s * 1000)}")
        connection.execute(f"PRAGMA synchronous = {synchronous}")
        return connection

    def _connection(self, synchronous: str = "FULL") -> sqlite3.Connection:
        if self._closed:
            raise StoreUnavailable("store is closed")
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            try:
                connection = self._connect(synchronous)
            except sqlite3.Error as error:
                raise StoreUnavailable(f"cannot open {self.path}: {error}") from error
            self._local.connection = connection
            with self._connections_lock:
                self._connections.append(connection)
        return connection

    def after_fork_in_child(self) -> None:
        """Forget (never close or reuse) connections inherited from the parent process."""
        self._local = threading.local()
        self._connections = []
        self._connections_lock = threading.Lock()
        self._schema_lock = threading.Lock()

    def _ensure_schema(self) -> None:
        """Create the file and its schema once; StoreUnavailable while the directory cannot be written.

        A file that is not an SQLite database raises ``sqlite3.DatabaseError``: that is a configuration
        mistake, not an outage (``open_store`` names it).
        """
        if self._schema_ready:
            return
        with self._schema_lock:
            if self._schema_ready:
                return
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                self._create_schema()
            except OSError as error:
                raise StoreUnavailable(f"cannot create {Path(self.path).parent}: {error.strerror}") from error
            except sqlite3.OperationalError as error:  # read-only, disk full, cannot open
                raise StoreUnavailable(f"cannot open {self.path}: {error}") from error
            self._schema_ready = True

    def _create_schema(self) -> None:
        # Several processes (gunicorn workers, replicas on one volume) may open a new file at once; switching
        # it to WAL does not wait on SQLite's busy handler, so "database is locked" is retried here until the
        # busy timeout, as every other statement would be.
        deadline = time.monotonic() + self._busy_timeout_s
        attempt = 0
        while True:
            try:
                self._create_schema_once()
                return
            except sqlite3.OperationalError as error:
                attempt += 1
                if "locked" not in str(error) or time.monotonic() >= deadline:
                    raise
                time.sleep(min(0.02 * attempt, 0.2))

    def _create_schema_once(self) -> None:
        connection = self._connect("FULL")
        try:
            # WAL is a property of the file: set once, every later connection (any process) uses it.
            mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("SQLite store %s: journal_mode is %s, not wal", self.path, mode)
            connection.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                connection.execute(statement)
            connection.execute(
                "INSERT OR IGNORE INTO schema_version (version, applied_at) VALUES (?, ?)",
                (SCHEMA_VERSION, _now_text()),
            )
            connection.execute("COMMIT")
        finally:
            # Closed at once: open_store often runs in a gunicorn master that forks workers afterwards.
            connection.close()

    # -- Store -------------------------------------------------------------------------------------

    def record_feedback(self, service_id: str, items: Sequence[FeedbackItem], client_iss: str | None) -> int:
        """Insert the items in one committed transaction; return how many were new."""
        if not items:
            return 0
        received_at = _now_text()
        rows = [
            (
                item.idempotency_key(service_id),
                service_id,
                item.card,
                item.outcome,
                format_timestamp(item.outcome_timestamp),
                item.override_reason.reason.system if item.override_reason and item.override_reason.reason else None,
                item.override_reason.reason.code if item.override_reason and item.override_reason.reason else None,
                client_iss,
                item.canonical_json(),
                received_at,
            )
            for item in items
        ]
        try:
            self._ensure_schema()
        except sqlite3.Error as error:
            raise StoreUnavailable(f"SQLite store unusable: {error}") from error
        connection = self._connection()
        try:
            connection.execute("BEGIN IMMEDIATE")  # take the write lock now, waiting up to busy_timeout
            before = connection.total_changes
            connection.executemany(_INSERT_FEEDBACK, rows)
            inserted = connection.total_changes - before
            connection.execute("COMMIT")
        except sqlite3.Error as error:
            if connection.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    connection.execute("ROLLBACK")
            raise StoreUnavailable(f"SQLite write failed: {error}") from error
        return inserted

    def _write_decisions(self, records: Sequence[DecisionAudit]) -> None:
        self._ensure_schema()
        connection = self._connection(synchronous="NORMAL")
        recorded_at = _now_text()
        rows = [
            (
                record.hook_instance,
                record.service_id,
                record.hook,
                record.client_iss,
                format_timestamp(record.evaluated_at),
                json.dumps(record.ratings_json(), separators=(",", ":")),
                json.dumps(list(record.card_ids), separators=(",", ":")),
                json.dumps(list(record.card_indicators), separators=(",", ":")),
                record.duration_ms,
                recorded_at,
            )
            for record in records
        ]
        try:
            connection.execute("BEGIN IMMEDIATE")
            connection.executemany(_INSERT_DECISION, rows)
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    connection.execute("ROLLBACK")
            raise

    def ping(self) -> bool:
        """True when the file can be queried."""
        try:
            self._ensure_schema()
            self._connection().execute("SELECT version FROM schema_version LIMIT 1").fetchone()
        except (sqlite3.Error, StoreUnavailable):
            return False
        return True

    def close(self) -> None:
        """Flush the audit queue, then close every connection this process opened."""
        if self._closed:
            return
        self._audit.close()
        self._closed = True
        with self._connections_lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            try:
                connection.close()
            except sqlite3.Error:  # e.g. busy in another thread at shutdown; the OS reclaims it
                pass

    # -- reads -------------------------------------------------------------------------------------

    def recent_feedback(self, limit: int = 100) -> list[StoredFeedback]:
        """The most recently received feedback, newest first."""
        try:
            self._ensure_schema()
            rows = (
                self._connection()
                .execute(
                    "SELECT service_id, client_iss, received_at, item_json FROM feedback ORDER BY id DESC LIMIT ?",
                    (limit,),
                )
                .fetchall()
            )
        except sqlite3.Error as error:
            raise StoreUnavailable(f"SQLite read failed: {error}") from error
        return [
            StoredFeedback(
                service_id=service_id,
                client_iss=client_iss,
                received_at=datetime.fromisoformat(received_at),
                item=parse_feedback({"feedback": [json.loads(item_json)]})[0],
            )
            for service_id, client_iss, received_at, item_json in rows
        ]

    def recent_decisions(self, limit: int = 100) -> list[DecisionAudit]:
        """The most recently written audit records, newest first."""
        try:
            self._ensure_schema()
            rows = (
                self._connection()
                .execute(
                    """SELECT hook_instance, service_id, hook, client_iss, evaluated_at, ratings_json, card_ids_json,
                          card_indicators_json, duration_ms
                   FROM decision_audit ORDER BY id DESC LIMIT ?""",
                    (limit,),
                )
                .fetchall()
            )
        except sqlite3.Error as error:
            raise StoreUnavailable(f"SQLite read failed: {error}") from error
        return [_decision_from_row(row) for row in rows]


def _decision_from_row(row: Sequence[Any]) -> DecisionAudit:
    hook_instance, service_id, hook, client_iss, evaluated_at, ratings, card_ids, indicators, duration_ms = row
    return DecisionAudit(
        hook_instance=hook_instance,
        service_id=service_id,
        hook=hook,
        client_iss=client_iss,
        evaluated_at=datetime.fromisoformat(evaluated_at),
        ratings=ratings_from_json(json.loads(ratings)),
        card_ids=tuple(json.loads(card_ids)),
        card_indicators=tuple(json.loads(indicators)),
        duration_ms=float(duration_ms),
    )
