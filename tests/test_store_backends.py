"""open_store URL handling, backend specifics (SQLite pragmas, PostgreSQL outages) and the audit writer."""

from __future__ import annotations

import itertools
import sqlite3
import statistics
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from cds_service.errors import CdsError, ConfigurationError
from cds_service.feedback import parse_feedback
from cds_service.store import (
    DEFAULT_SQLITE_FILENAME,
    DecisionAudit,
    DropReason,
    PostgresStore,
    SqliteStore,
    StoreUnavailable,
    open_store,
)
from cds_service.store import audit as audit_module
from cds_service.store.audit import AuditWriter

UNREACHABLE_POSTGRES = "postgresql://postgres@127.0.0.1:1/test"


def decision(n: int) -> DecisionAudit:
    return DecisionAudit(
        hook_instance=f"hi-{n}",
        service_id="svc",
        hook="order-sign",
        client_iss=None,
        evaluated_at=datetime(2026, 11, 27, tzinfo=UTC),
        ratings=(),
        card_ids=(),
        card_indicators=(),
        duration_ms=0.5,
    )


FEEDBACK = parse_feedback(
    {
        "feedback": [
            {"card": "c", "outcome": "overridden", "outcomeTimestamp": "2026-11-27T00:00:00Z",
             "overrideReason": {"userComment": "x"}}
        ]
    }
)  # fmt: skip


# -- open_store -------------------------------------------------------------------------------------------


def test_default_is_sqlite_in_the_data_directory(tmp_path: Path) -> None:
    data_dir = tmp_path / "not" / "yet" / "there"
    store = open_store(None, str(data_dir))
    try:
        assert isinstance(store, SqliteStore)
        assert store.path == str(data_dir / DEFAULT_SQLITE_FILENAME)
        assert store.record_feedback("svc", FEEDBACK, None) == 1
    finally:
        store.close()
    assert (data_dir / DEFAULT_SQLITE_FILENAME).is_file()


@pytest.mark.parametrize("spelling", ["sqlite:///{path}", "sqlite:////{path_without_slash}", " sqlite:///{path} "])
def test_sqlite_url_spellings(tmp_path: Path, spelling: str) -> None:
    path = tmp_path / "sub" / "feedback.db"
    url = spelling.format(path=path, path_without_slash=str(path).lstrip("/"))
    store = open_store(url, str(tmp_path / "unused"))
    try:
        assert isinstance(store, SqliteStore)
        assert Path(store.path) == path
    finally:
        store.close()
    assert not (tmp_path / "unused").exists()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://db/x", "CDS_DATABASE_URL: expected sqlite:///path or postgresql://..., got scheme 'mysql'"),
        ("/var/lib/x.db", "CDS_DATABASE_URL: expected sqlite:///path or postgresql://..., got scheme none"),
        ("sqlite://host/x.db", "CDS_DATABASE_URL: an SQLite URL is sqlite:///absolute/path/to/file (no host)"),
        (
            "sqlite:///",
            "CDS_DATABASE_URL: 'sqlite:///' does not name an SQLite file by absolute path (sqlite:///abs/path)",
        ),
        (
            "sqlite:///:memory:",
            "CDS_DATABASE_URL: 'sqlite:///:memory:' does not name an SQLite file by absolute path (sqlite:///abs/path)",
        ),
        ("postgresql://user:s3cret@host:notaport/db", "CDS_DATABASE_URL: port 'notaport' is not a number"),
        ("postgresql://user:s3cret@[::1/db", "CDS_DATABASE_URL: not a valid postgresql:// URL"),
        ("postgres://user:s3cret@h/db?bogus=1", "CDS_DATABASE_URL: not a valid postgresql:// URL"),
        ("postgresql://h/db?connect_timeout=2s", "CDS_DATABASE_URL: connect_timeout '2s' is not a number"),
    ],
)
def test_bad_urls_are_configuration_errors(url: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as raised:
        open_store(url, str(tmp_path))
    assert str(raised.value) == message
    assert "s3cret" not in str(raised.value)


def test_unwritable_sqlite_file_is_a_configuration_error(tmp_path: Path) -> None:
    not_a_database = tmp_path / "garbage.db"
    not_a_database.write_bytes(b"this is not an sqlite file" * 100)
    with pytest.raises(ConfigurationError) as raised:
        open_store(f"sqlite:///{not_a_database}", str(tmp_path))
    assert str(raised.value).startswith(f"CDS_DATABASE_URL: cannot open SQLite file {not_a_database}: ")


# -- SQLite specifics ----------------------------------------------------------------------------------------


def test_sqlite_uses_wal_and_full_sync_for_feedback(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    try:
        store.record_feedback("svc", FEEDBACK, None)
        connection = store._connection()  # the connection feedback was committed on (this thread's)
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert connection.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert connection.execute("PRAGMA busy_timeout").fetchone()[0] == 10_000
        assert connection.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
    finally:
        store.close()


def test_sqlite_reopen_keeps_data_and_schema_version(tmp_path: Path) -> None:
    first = SqliteStore(tmp_path / "s.db")
    first.record_feedback("svc", FEEDBACK, None)
    first.close()
    second = SqliteStore(tmp_path / "s.db")
    try:
        assert second.record_feedback("svc", FEEDBACK, None) == 0
        assert len(second.recent_feedback()) == 1
        rows = second._connection().execute("SELECT version FROM schema_version").fetchall()
        assert rows == [(1,)]
    finally:
        second.close()


def test_sqlite_locked_beyond_busy_timeout_is_unavailable(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db", busy_timeout_s=0.2)
    blocker = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as raised:
            store.record_feedback("svc", FEEDBACK, None)
        assert time.monotonic() - started < 2
        assert "locked" in raised.value.detail
        blocker.execute("ROLLBACK")
        assert store.record_feedback("svc", FEEDBACK, None) == 1  # the store recovers once the lock is gone
    finally:
        blocker.close()
        store.close()


def test_store_unavailable_is_a_503_without_details() -> None:
    error = StoreUnavailable("connection to server at 127.0.0.1 failed")
    assert isinstance(error, CdsError)
    assert error.status == 503
    outcome = error.to_operation_outcome()
    assert outcome["issue"][0]["code"] == "transient"
    assert "127.0.0.1" not in str(outcome)


def test_closed_store_refuses_feedback_and_fails_ping(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    store.close()
    assert store.ping() is False
    with pytest.raises(StoreUnavailable):
        store.record_feedback("svc", FEEDBACK, None)


# -- PostgreSQL outages -----------------------------------------------------------------------------------------


def test_unreachable_postgres_opens_but_pings_false_quickly(tmp_path: Path) -> None:
    started = time.monotonic()
    store = open_store(UNREACHABLE_POSTGRES, str(tmp_path))
    try:
        assert isinstance(store, PostgresStore)
        assert store.ping() is False
        with pytest.raises(StoreUnavailable):
            store.record_feedback("svc", FEEDBACK, None)
    finally:
        store.close()
    assert time.monotonic() - started < 3


def test_blackholed_postgres_respects_the_connect_timeout(tmp_path: Path) -> None:
    # 192.0.2.1 (TEST-NET-1) is never routed: the connect attempt hangs until connect_timeout, or fails at once
    # when the sandbox has no route at all. Either way well under 3 s per call; never minutes.
    store = open_store("postgresql://postgres@192.0.2.1:5432/test?connect_timeout=1", str(tmp_path))
    try:
        started = time.monotonic()
        assert store.ping() is False
        assert time.monotonic() - started < 3
    finally:
        store.close()


def test_unreachable_postgres_counts_audit_write_failures(tmp_path: Path) -> None:
    drops: list[tuple[DropReason, int]] = []
    store = open_store(UNREACHABLE_POSTGRES, str(tmp_path), on_audit_drop=lambda r, c: drops.append((r, c)),
                       audit_retry_window=1.0)
    try:
        started = time.monotonic()
        for n in range(10):
            store.record_decision(decision(n))
        assert time.monotonic() - started < 0.1  # enqueueing never waits for the database
        assert store.flush_audit(20)  # retried for the window, then dropped
        assert time.monotonic() - started >= 1.0
        assert store.audit_dropped_total() == 10
        assert {reason for reason, _ in drops} == {"write_failed"}
        assert sum(count for _, count in drops) == 10
    finally:
        store.close()


@pytest.fixture
def pg_schema_url(postgres_url: str) -> Iterator[str]:
    schema = f"cds_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{postgres_url}?options=-csearch_path%3D{schema}&application_name={schema}"
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


def test_postgres_recovers_from_a_killed_pooled_connection(
    pg_schema_url: str, postgres_url: str, tmp_path: Path
) -> None:
    store = open_store(pg_schema_url, str(tmp_path))
    try:
        assert store.record_feedback("svc", FEEDBACK, None) == 1
        application_name = pg_schema_url.rsplit("application_name=", 1)[1]
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = %s",
                (application_name,),
            ).fetchone()
        assert killed is not None and killed[0] >= 1
        time.sleep(0.2)
        # The pooled connection is dead; the store notices and retries once on a fresh one.
        other = parse_feedback(
            {"feedback": [{"card": "d", "outcome": "accepted", "acceptedSuggestions": [{"id": "s"}],
                           "outcomeTimestamp": "2026-11-27T00:00:00Z"}]}
        )  # fmt: skip
        assert store.record_feedback("svc", other, None) == 1
        assert store.ping() is True
    finally:
        store.close()


def test_postgres_schema_is_created_once_by_concurrent_openers(pg_schema_url: str, tmp_path: Path) -> None:
    errors: list[BaseException] = []
    stores: list[object] = []

    def open_one() -> None:
        try:
            stores.append(open_store(pg_schema_url, str(tmp_path)))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        assert all(isinstance(s, PostgresStore) and s.ping() for s in stores)
        first = stores[0]
        assert isinstance(first, PostgresStore)
        assert first.record_feedback("svc", FEEDBACK, None) == 1
    finally:
        for s in stores:
            assert isinstance(s, PostgresStore)
            s.close()


# -- the audit writer on its own --------------------------------------------------------------------------------


class GatedSink:
    """A write_batch that records batch sizes and can be held shut."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, records: Sequence[DecisionAudit]) -> None:
        self.entered.set()
        assert self.gate.wait(10)
        self.batches.append([r.hook_instance for r in records])


def test_writer_batches_what_queued_while_it_was_busy() -> None:
    sink = GatedSink()
    sink.gate.clear()
    writer = AuditWriter(sink, batch_size=50)
    writer.submit(decision(0))
    assert sink.entered.wait(5)  # the writer holds record 0 and waits at the gate
    for n in range(1, 121):
        writer.submit(decision(n))
    sink.gate.set()
    assert writer.flush(5)
    assert [len(batch) for batch in sink.batches] == [1, 50, 50, 20]
    assert [h for batch in sink.batches for h in batch] == [f"hi-{n}" for n in range(121)]
    writer.close()


def test_writer_drops_when_full_and_reports_each_drop() -> None:
    sink = GatedSink()
    sink.gate.clear()
    drops: list[tuple[DropReason, int]] = []
    writer = AuditWriter(sink, capacity=3, on_drop=lambda reason, count: drops.append((reason, count)))
    writer.submit(decision(0))
    assert sink.entered.wait(5)
    for n in range(1, 11):
        writer.submit(decision(n))  # 3 fit, 7 are dropped
    assert writer.dropped_total() == 7
    assert drops == [("queue_full", 1)] * 7
    sink.gate.set()
    writer.close()
    assert [h for batch in sink.batches for h in batch] == ["hi-0", "hi-1", "hi-2", "hi-3"]
    assert writer.written_total() == 4


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_module, "RETRY_FIRST_PAUSE_S", 0.02)
    monkeypatch.setattr(audit_module, "RETRY_MAX_PAUSE_S", 0.05)


def test_writer_survives_a_failing_batch_and_a_failing_callback(quick_retries: None) -> None:
    calls: list[list[str]] = []

    def refuses_record_0(records: Sequence[DecisionAudit]) -> None:
        calls.append([r.hook_instance for r in records])
        if "hi-0" in calls[-1]:
            raise RuntimeError("database went away")

    def broken_callback(reason: DropReason, count: int) -> None:
        raise ValueError("metrics are broken too")

    writer = AuditWriter(refuses_record_0, on_drop=broken_callback, retry_window=0.3)
    writer.submit(decision(0))
    assert writer.flush(5)
    writer.submit(decision(1))
    assert writer.flush(5)
    writer.close()
    assert len(calls) >= 3 and all(batch == ["hi-0"] for batch in calls[:-1])  # retried, then given up
    assert calls[-1] == ["hi-1"]
    assert writer.dropped_total() == 1
    assert writer.written_total() == 1


def test_writer_retries_a_refused_batch_until_the_database_is_back(quick_retries: None) -> None:
    attempts: list[float] = []

    def down_for_three_attempts(records: Sequence[DecisionAudit]) -> None:
        attempts.append(time.monotonic())
        if len(attempts) <= 3:
            raise RuntimeError("connection refused")

    writer = AuditWriter(down_for_three_attempts)
    for n in range(5):
        writer.submit(decision(n))
    assert writer.flush(5)
    writer.close()
    assert len(attempts) == 4
    assert writer.written_total() == 5 and writer.dropped_total() == 0
    pauses = [later - earlier for earlier, later in itertools.pairwise(attempts)]
    assert pauses[0] >= 0.02 and pauses[-1] >= 0.04  # growing pauses, not a busy loop


def test_writer_drops_and_counts_after_the_retry_window(quick_retries: None) -> None:
    drops: list[tuple[DropReason, int]] = []
    attempts: list[int] = []

    def always_down(records: Sequence[DecisionAudit]) -> None:
        attempts.append(len(records))
        raise RuntimeError("disk full")

    writer = AuditWriter(always_down, retry_window=0.3, on_drop=lambda reason, count: drops.append((reason, count)))
    started = time.monotonic()
    for n in range(3):
        writer.submit(decision(n))
    assert writer.flush(5)
    assert 0.3 <= time.monotonic() - started < 3
    assert drops == [("write_failed", 3)]
    assert len(attempts) > 2
    writer.close()


def test_close_stops_retrying_at_once() -> None:
    writer = AuditWriter(lambda records: (_ for _ in ()).throw(RuntimeError("down")), retry_window=600)
    writer.submit(decision(0))
    time.sleep(0.2)  # the writer has failed once and pauses before its retry
    started = time.monotonic()
    writer.close(timeout=5)
    assert time.monotonic() - started < 1
    assert writer.dropped_total() == 1


def test_writer_thread_starts_lazily_and_is_a_daemon() -> None:
    writer = AuditWriter(lambda records: None)
    assert writer._thread is None
    writer.submit(decision(0))
    assert writer._thread is not None and writer._thread.daemon
    writer.close()
    assert not writer._thread.is_alive()


def test_enqueue_cost_is_microseconds(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    try:
        record = decision(0)
        store.record_decision(record)  # starts the writer
        timings = []
        for _ in range(1000):
            started = time.perf_counter()
            store.record_decision(record)
            timings.append(time.perf_counter() - started)
        # A generous bound (budget of a whole request is 10 ms); the measured median is a few microseconds.
        assert statistics.median(timings) < 100e-6
        assert store.flush_audit(10)
    finally:
        store.close()


def test_processes_opening_a_new_sqlite_file_at_once_all_succeed(tmp_path: Path) -> None:
    # Switching a new file to WAL does not wait on SQLite's busy handler: gunicorn workers starting together
    # used to fail with "database is locked" (seen 7 times in 30 pairs before the retry).
    import subprocess
    import sys

    # Each child imports everything first and waits for "go": the opens then start together.
    script = (
        "import sys\nfrom cds_service.store import open_store\n"
        "sys.stdin.readline()\nopen_store(sys.argv[1], sys.argv[2]).close()\n"
    )
    for round_ in range(5):
        url = f"sqlite:///{tmp_path}/race-{round_}.sqlite3"
        children = [
            subprocess.Popen(
                [sys.executable, "-c", script, url, str(tmp_path)],
                stdin=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        time.sleep(1.0)  # let every child finish its imports
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        for child in children:
            _, stderr = child.communicate(timeout=60)
            assert child.returncode == 0, stderr
