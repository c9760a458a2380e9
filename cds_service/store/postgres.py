"""PostgreSQL store: shared by every replica (README.md, 'Deployment').

psycopg 3 with a small thread-safe connection pool of our own (``psycopg_pool`` is not a
dependency). Feedback commits with ``synchronous_commit = on`` whatever the server default, so an
acknowledged item is on disk; audit batches use ``off`` (faster, and losing the newest audit rows
in a server crash is acceptable). Inserts use ``ON CONFLICT DO NOTHING`` on the idempotency key,
so concurrent replicas storing the same retry race harmlessly.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Final, TypeVar

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.types.json import Jsonb

from cds_service.feedback import FeedbackItem, parse_feedback
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

DEFAULT_CONNECT_TIMEOUT_S: Final = 2
PING_TIMEOUT_S: Final = 1
# A server that vanishes from the network (no FIN, no RST) must not hold a worker for TCP's minutes: libpq's
# keepalives and TCP_USER_TIMEOUT make the kernel give up within about ten seconds.
TCP_PARAMS: Final = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
                     "tcp_user_timeout": 10_000}
DEFAULT_POOL_SIZE: Final = 4
# A statement that waits longer than this (a lock, an overloaded server) fails instead of hanging a worker.
STATEMENT_TIMEOUT: Final = "5s"
# Serialises schema creation across replicas starting together (CREATE TABLE IF NOT EXISTS can race).
_SCHEMA_LOCK_KEY: Final = 0x6364_7373_746F_7265  # "cdsstore"

_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS schema_version (
        version integer PRIMARY KEY,
        applied_at timestamptz NOT NULL DEFAULT now()
    )""",
    """CREATE TABLE IF NOT EXISTS feedback (
        id bigserial PRIMARY KEY,
        idempotency_key text NOT NULL UNIQUE,
        service_id text NOT NULL,
        card text NOT NULL,
        outcome text NOT NULL,
        outcome_timestamp timestamptz NOT NULL,
        override_system text,
        override_code text,
        client_iss text,
        item jsonb NOT NULL,
        received_at timestamptz NOT NULL DEFAULT now()
    )""",
    "CREATE INDEX IF NOT EXISTS feedback_card ON feedback (card)",
    "CREATE INDEX IF NOT EXISTS feedback_service_time ON feedback (service_id, outcome_timestamp)",
    """CREATE TABLE IF NOT EXISTS decision_audit (
        id bigserial PRIMARY KEY,
        hook_instance text NOT NULL,
        service_id text NOT NULL,
        hook text NOT NULL,
        client_iss text,
        evaluated_at timestamptz NOT NULL,
        ratings jsonb NOT NULL,
        card_ids jsonb NOT NULL,
        card_indicators jsonb NOT NULL,
        duration_ms double precision NOT NULL,
        recorded_at timestamptz NOT NULL DEFAULT now()
    )""",
    "CREATE INDEX IF NOT EXISTS decision_audit_hook_instance ON decision_audit (hook_instance)",
    "CREATE INDEX IF NOT EXISTS decision_audit_evaluated_at ON decision_audit (evaluated_at)",
)

_INSERT_FEEDBACK: Final = """
    INSERT INTO feedback (idempotency_key, service_id, card, outcome, outcome_timestamp,
                          override_system, override_code, client_iss, item)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
    ON CONFLICT (idempotency_key) DO NOTHING
"""

_INSERT_DECISION: Final = """
    INSERT INTO decision_audit (hook_instance, service_id, hook, client_iss, evaluated_at, ratings,
                                card_ids, card_indicators, duration_ms)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
"""

T = TypeVar("T")


class ConnectionPool:
    """At most ``max_size`` autocommit connections, created on demand and reused LIFO.

    A connection that comes back broken or inside a transaction is closed, not reused. After a
    fork the child forgets the parent's connections (psycopg only closes a connection in the
    process that opened it, so forgetting is safe) and starts empty.
    """

    def __init__(self, conninfo: str, max_size: int = DEFAULT_POOL_SIZE, acquire_timeout_s: float = 5.0) -> None:
        self._conninfo = conninfo
        self._max_size = max_size
        self._acquire_timeout_s = acquire_timeout_s
        self._init_process_state()
        reset_after_fork(self)

    def _init_process_state(self) -> None:
        self._idle: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self._max_size)
        self._closed = False

    def after_fork_in_child(self) -> None:
        """Drop the parent's connections without touching them."""
        self._orphans = self._idle  # kept referenced so that they are never finalised in the child
        self._init_process_state()

    @contextmanager
    def connection(self) -> Iterator[tuple[psycopg.Connection[Any], bool]]:
        """Yield (connection, reused): ``reused`` is True when it came from the idle list (it may be stale)."""
        if self._closed:
            raise StoreUnavailable("store is closed")
        if not self._slots.acquire(timeout=self._acquire_timeout_s):
            raise StoreUnavailable(f"no database connection free within {self._acquire_timeout_s} s")
        try:
            with self._lock:
                connection = self._idle.pop() if self._idle else None
            reused = connection is not None
            if connection is None:
                connection = psycopg.connect(self._conninfo, autocommit=True)
            healthy = False
            try:
                yield connection, reused
                healthy = True
            finally:
                returned = False
                if healthy and not connection.broken and connection.info.transaction_status == TransactionStatus.IDLE:
                    with self._lock:
                        if not self._closed:
                            self._idle.append(connection)
                            returned = True
                if not returned:
                    connection.close()
        finally:
            self._slots.release()

    def close_idle(self) -> None:
        """Close the idle connections but keep the pool open."""
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def close(self) -> None:
        """Close idle connections; connections in use are closed when they come back."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


class PostgresStore(QueuedAuditMixin):
    """The :class:`~cds_service.store.base.Store` on PostgreSQL."""

    def __init__(
        self,
        conninfo: str,
        *,
        pool_size: int = DEFAULT_POOL_SIZE,
        audit_capacity: int = DEFAULT_QUEUE_CAPACITY,
        audit_batch_size: int = DEFAULT_BATCH_SIZE,
        on_audit_drop: DropCallback | None = None,
        audit_retry_window: float = DEFAULT_RETRY_WINDOW_S,
    ) -> None:
        self._conninfo = conninfo
        self._pool = ConnectionPool(conninfo, max_size=pool_size)
        self._schema_ready = False
        self._schema_lock = threading.Lock()
        self._audit = AuditWriter(
            self._write_decisions,
            capacity=audit_capacity,
            batch_size=audit_batch_size,
            on_drop=on_audit_drop,
            retry_window=audit_retry_window,
        )
        try:
            self._ensure_schema()
        except StoreUnavailable as error:
            # The service still starts and serves cards; /readyz reports the store, and the schema is
            # created on first successful use.
            log.warning("PostgreSQL store not reachable at start-up: %s", error.detail)
        # open_store often runs in a gunicorn master that only forks workers: don't keep a session open there.
        self._pool.close_idle()

    def _run(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run ``work`` on a pooled connection; retry once on a fresh connection if a reused one was stale."""
        for attempt in range(2):
            try:
                with self._pool.connection() as (connection, reused):
                    try:
                        return work(connection)
                    except psycopg.OperationalError:
                        if reused and attempt == 0 and connection.broken:
                            raise _StaleConnection() from None
                        raise
            except _StaleConnection:
                continue
            except psycopg.Error as error:
                raise StoreUnavailable(f"{type(error).__name__}: {error}") from error
        raise StoreUnavailable("database connection failed twice")

    def _ensure_schema(self) -> None:
        if self._schema_ready:
            return
        with self._schema_lock:
            if self._schema_ready:
                return

            def create(connection: psycopg.Connection[Any]) -> None:
                with connection.transaction():
                    connection.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_KEY,))
                    for statement in _SCHEMA:
                        connection.execute(statement)
                    connection.execute(
                        "INSERT INTO schema_version (version) VALUES (%s) ON CONFLICT DO NOTHING", (SCHEMA_VERSION,)
                    )

            self._run(create)
            self._schema_ready = True

    def record_feedback(self, service_id: str, items: Sequence[FeedbackItem], client_iss: str | None) -> int:
        """Insert the items in one committed transaction; return how many were new."""
        if not items:
            return 0
        self._ensure_schema()
        rows = [
            (
                item.idempotency_key(service_id),
                service_id,
                item.card,
                item.outcome,
                item.outcome_timestamp,
                item.override_reason.reason.system if item.override_reason and item.override_reason.reason else None,
                item.override_reason.reason.code if item.override_reason and item.override_reason.reason else None,
                client_iss,
                Jsonb(item.to_json()),
            )
            for item in items
        ]

        def insert(connection: psycopg.Connection[Any]) -> int:
            with connection.transaction(), connection.cursor() as cursor:
                cursor.execute("SET LOCAL synchronous_commit = on")
                cursor.execute(f"SET LOCAL statement_timeout = '{STATEMENT_TIMEOUT}'")
                cursor.executemany(_INSERT_FEEDBACK, rows)
                return max(cursor.rowcount, 0)

        return self._run(insert)

    def _write_decisions(self, records: Sequence[DecisionAudit]) -> None:
        self._ensure_schema()
        rows = [
            (
                record.hook_instance,
                record.service_id,
                record.hook,
                record.client_iss,
                record.evaluated_at,
                Jsonb(record.ratings_json()),
                Jsonb(list(record.card_ids)),
                Jsonb(list(record.card_indicators)),
                record.duration_ms,
            )
            for record in records
        ]

        def insert(connection: psycopg.Connection[Any]) -> None:
            with connection.transaction(), connection.cursor() as cursor:
                cursor.execute("SET LOCAL synchronous_commit = off")
                cursor.execute(f"SET LOCAL statement_timeout = '{STATEMENT_TIMEOUT}'")
                cursor.executemany(_INSERT_DECISION, rows)

        self._run(insert)

    def ping(self) -> bool:
        """True when the server answers ``SELECT 1`` on a new connection, within about ``PING_TIMEOUT_S``.

        Not through the pool: a pooled connection whose server vanished from the network could wait for
        TCP to give up, and every pooled connection may be busy with requests; a readiness probe must
        get its answer in time whatever the store does.
        """
        try:
            with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=PING_TIMEOUT_S) as connection:
                connection.execute(f"SET statement_timeout = {PING_TIMEOUT_S * 1000}")
                connection.execute("SELECT 1").fetchone()
        except psycopg.Error:
            return False
        return True

    def close(self) -> None:
        """Flush the audit queue, then close pooled connections."""
        self._audit.close()
        self._pool.close()

    def recent_feedback(self, limit: int = 100) -> list[StoredFeedback]:
        """The most recently received feedback, newest first."""
        self._ensure_schema()
        rows = self._run(
            lambda connection: connection.execute(
                "SELECT service_id, client_iss, received_at, item FROM feedback ORDER BY id DESC LIMIT %s", (limit,)
            ).fetchall()
        )
        return [
            StoredFeedback(
                service_id=service_id,
                client_iss=client_iss,
                received_at=received_at,
                item=parse_feedback({"feedback": [item]})[0],
            )
            for service_id, client_iss, received_at, item in rows
        ]

    def recent_decisions(self, limit: int = 100) -> list[DecisionAudit]:
        """The most recently written audit records, newest first."""
        self._ensure_schema()
        rows = self._run(
            lambda connection: connection.execute(
                """SELECT hook_instance, service_id, hook, client_iss, evaluated_at, ratings, card_ids,
                          card_indicators, duration_ms
                   FROM decision_audit ORDER BY id DESC LIMIT %s""",
                (limit,),
            ).fetchall()
        )
        return [_decision_from_row(row) for row in rows]


class _StaleConnection(Exception):
    """Internal: a pooled connection turned out to be dead; retry on a new one."""


def _decision_from_row(row: Sequence[Any]) -> DecisionAudit:
    hook_instance, service_id, hook, client_iss, evaluated_at, ratings, card_ids, indicators, duration_ms = row
    evaluated: datetime = evaluated_at
    return DecisionAudit(
        hook_instance=hook_instance,
        service_id=service_id,
        hook=hook,
        client_iss=client_iss,
        evaluated_at=evaluated,
        ratings=ratings_from_json(ratings),
        card_ids=tuple(card_ids),
        card_indicators=tuple(indicators),
        duration_ms=float(duration_ms),
    )
