"""The Store contract, run against SQLite (a file in tmp_path) and the real PostgreSQL.

Every test here runs twice through the parametrised ``target`` fixture. PostgreSQL tests use a
fresh schema per test (search_path set through the URL's ``options``), dropped afterwards.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cds_service.feedback import FeedbackItem, parse_feedback
from cds_service.store import DecisionAudit, DropReason, RatingAudit, Store, open_store

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVICE = "lumbar-imaging-order-select"


@dataclass
class Target:
    """Where a store lives: enough to open it here and in a child process."""

    kind: str
    url: str
    data_dir: str

    def open(self, **options: Any) -> Store:
        return open_store(self.url, self.data_dir, **options)


def with_search_path(url: str, schema: str) -> str:
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options=-csearch_path%3D{schema}"


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    if request.param == "sqlite":
        yield Target("sqlite", f"sqlite:///{tmp_path}/store.sqlite3", str(tmp_path))
        return
    base_url: str = request.getfixturevalue("postgres_url")
    schema = f"cds_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base_url, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield Target("postgresql", with_search_path(base_url, schema), str(tmp_path))
    finally:
        with psycopg.connect(base_url, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def store(target: Target) -> Iterator[Store]:
    opened = target.open()
    try:
        yield opened
    finally:
        opened.close()


def item(card: str = "card-1", outcome: str = "overridden", second: int = 31, **extra: Any) -> FeedbackItem:
    body: dict[str, Any] = {"card": card, "outcome": outcome, "outcomeTimestamp": f"2026-11-27T01:02:{second:02d}Z"}
    if outcome == "accepted":
        body["acceptedSuggestions"] = [{"id": "suggestion-1"}]
    else:
        body["overrideReason"] = {"reason": {"system": "http://example.org/override", "code": "proceed"}}
    body.update(extra)
    return parse_feedback({"feedback": [body]})[0]


def decision(n: int) -> DecisionAudit:
    return DecisionAudit(
        hook_instance=f"hook-instance-{n}",
        service_id=SERVICE,
        hook="order-select",
        client_iss="https://sandbox.cds-hooks.org",
        evaluated_at=datetime(2026, 11, 27, 1, 2, 3, n % 1000, tzinfo=UTC),
        ratings=(
            RatingAudit("ServiceRequest/sr-1", "mri_lumbar_without", "appropriate", f"urn:uuid:{uuid.UUID(int=n)}"),
            RatingAudit("ServiceRequest/sr-2", "ct_lumbar_with", None, None),
        ),
        card_ids=(f"card-{n}",),
        card_indicators=("warning",),
        duration_ms=1.25,
    )


# -- feedback ----------------------------------------------------------------------------------------


def test_repeated_feedback_is_stored_once(store: Store) -> None:
    batch = [item("card-1"), item("card-2", outcome="accepted")]
    assert store.record_feedback(SERVICE, batch, "https://ehr.example.org") == 2
    assert store.record_feedback(SERVICE, batch, "https://ehr.example.org") == 0  # the client's retry
    stored = store.recent_feedback()
    assert sorted(s.item.card for s in stored) == ["card-1", "card-2"]
    assert {s.client_iss for s in stored} == {"https://ehr.example.org"}
    assert {s.service_id for s in stored} == {SERVICE}


def test_a_different_outcome_is_new_feedback(store: Store) -> None:
    assert store.record_feedback(SERVICE, [item("card-1", outcome="overridden")], None) == 1
    assert store.record_feedback(SERVICE, [item("card-1", outcome="accepted")], None) == 1
    assert store.record_feedback(SERVICE, [item("card-1", second=32)], None) == 1  # feedback again, later
    assert store.record_feedback("lumbar-imaging-order-sign", [item("card-1")], None) == 1  # another service
    assert len(store.recent_feedback()) == 4


def test_duplicates_inside_one_post_count_once(store: Store) -> None:
    assert store.record_feedback(SERVICE, [item("card-1"), item("card-1")], None) == 1


def test_nothing_to_store(store: Store) -> None:
    assert store.record_feedback(SERVICE, [], None) == 0


def test_stored_feedback_reads_back_equal(store: Store) -> None:
    original = item("card-9", extension={"com.example.note": {"n": 1}})
    store.record_feedback(SERVICE, [original], None)
    (stored,) = store.recent_feedback()
    assert stored.item == original
    assert stored.received_at.tzinfo is not None
    assert abs((datetime.now(UTC) - stored.received_at).total_seconds()) < 60


def test_concurrent_threads_store_everything(store: Store) -> None:
    errors: list[BaseException] = []

    def write(thread_no: int) -> None:
        try:
            for n in range(25):
                store.record_feedback(SERVICE, [item(f"thread-{thread_no}-{n}")], None)
        except BaseException as error:  # reported below; a thread's exception would otherwise vanish
            errors.append(error)

    threads = [threading.Thread(target=write, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(store.recent_feedback(limit=1000)) == 200


def test_ping(store: Store) -> None:
    assert store.ping() is True


# -- across processes ----------------------------------------------------------------------------------

CHILD = """
import sys
from cds_service.feedback import parse_feedback
from datetime import UTC, datetime
from cds_service.store import DecisionAudit, open_store

mode, url, data_dir, prefix, count = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
store = open_store(url, data_dir)
def item(n):
    body = {"card": f"{prefix}-{n}", "outcome": "overridden", "outcomeTimestamp": "2026-11-27T01:02:03Z",
            "overrideReason": {"userComment": "child"}}
    return parse_feedback({"feedback": [body]})[0]
if mode == "ack-then-hang":
    store.record_feedback("svc", [item(0)], None)
    print("acked", flush=True)
    import time
    time.sleep(60)
elif mode == "audit-then-exit":
    for n in range(count):
        record = DecisionAudit(f"{prefix}-{n}", "svc", "order-sign", None, datetime.now(UTC), (), (), (), 1.0)
        store.record_decision(record)
    print("queued", flush=True)  # then a normal interpreter exit, without close()
elif mode == "writer":
    print("ready", flush=True)
    sys.stdin.readline()  # wait for "go" so that both writers overlap
    for n in range(count):
        store.record_feedback("svc", [item(n)], None)
    store.close()
    print("done", flush=True)
"""


def spawn(target: Target, mode: str, prefix: str, count: int = 1) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, mode, target.url, target.data_dir, prefix, str(count)],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_acknowledged_feedback_survives_a_killed_worker(target: Target) -> None:
    child = spawn(target, "ack-then-hang", "killed")
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        # SIGKILL right after the acknowledgement: no atexit, no close(), no flush of anything in memory.
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        _, stderr = child.communicate(timeout=10)
    assert line == "acked\n", stderr
    assert child.returncode == -signal.SIGKILL
    reopened = target.open()
    try:
        assert [s.item.card for s in reopened.recent_feedback()] == ["killed-0"]
    finally:
        reopened.close()


def test_two_writer_processes_lose_nothing(target: Target) -> None:
    children = [spawn(target, "writer", f"proc{n}", count=200) for n in range(2)]
    try:
        for child in children:
            assert child.stdout is not None and child.stdout.readline() == "ready\n"
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        results = [child.communicate(timeout=120) for child in children]
    finally:
        for child in children:
            child.kill()
    for child, (stdout, stderr) in zip(children, results, strict=True):
        assert child.returncode == 0, stderr
        assert stdout == "done\n"
    reopened = target.open()
    try:
        cards = [s.item.card for s in reopened.recent_feedback(limit=1000)]
    finally:
        reopened.close()
    assert len(cards) == 400
    assert set(cards) == {f"proc{p}-{n}" for p in range(2) for n in range(200)}


def test_queued_decisions_are_written_when_a_worker_exits_without_close(target: Target) -> None:
    child = spawn(target, "audit-then-exit", "exiting", count=300)
    stdout, stderr = child.communicate(timeout=60)
    assert child.returncode == 0, stderr
    assert stdout == "queued\n"
    reopened = target.open()
    try:
        hook_instances = {d.hook_instance for d in reopened.recent_decisions(limit=1000)}
    finally:
        reopened.close()
    assert hook_instances == {f"exiting-{n}" for n in range(300)}


def test_a_forked_child_gets_its_own_connections_and_writer(target: Target) -> None:
    # gunicorn --preload: the store is opened (and used) in the master, then workers are forked.
    store = target.open()
    try:
        store.record_feedback(SERVICE, [item("parent-before-fork")], None)
        store.record_decision(decision(1))
        assert store.flush_audit(10)
        pid = os.fork()
        if pid == 0:  # child: must not reuse the parent's connection or wait on the parent's thread
            status = 1
            try:
                store.record_feedback(SERVICE, [item("child")], None)
                store.record_decision(decision(2))
                status = 0 if store.flush_audit(10) and store.audit_dropped_total() == 0 else 2
                store.close()
            finally:
                os._exit(status)
        _, wait_status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(wait_status) == 0
        store.record_feedback(SERVICE, [item("parent-after-fork")], None)  # the parent's connection still works
        assert sorted(s.item.card for s in store.recent_feedback()) == [
            "child",
            "parent-after-fork",
            "parent-before-fork",
        ]
        assert sorted(d.hook_instance for d in store.recent_decisions()) == ["hook-instance-1", "hook-instance-2"]
    finally:
        store.close()


# -- decision audit -------------------------------------------------------------------------------------


def test_decisions_are_written_and_read_back(store: Store) -> None:
    store.record_decision(decision(7))
    assert store.flush_audit(10)
    (written,) = store.recent_decisions()
    assert written == decision(7)
    assert store.audit_dropped_total() == 0


def test_close_flushes_queued_decisions(target: Target) -> None:
    store = target.open()
    for n in range(500):
        store.record_decision(decision(n))
    store.close()  # no flush_audit(): close() must write what is queued
    reopened = target.open()
    try:
        hook_instances = {d.hook_instance for d in reopened.recent_decisions(limit=1000)}
    finally:
        reopened.close()
    assert hook_instances == {f"hook-instance-{n}" for n in range(500)}


def test_decisions_are_written_in_batches(target: Target) -> None:
    store = target.open()
    try:
        for n in range(1000):
            store.record_decision(decision(n))
        assert store.flush_audit(20)
        assert len(store.recent_decisions(limit=2000)) == 1000
    finally:
        store.close()
    # Every batch is one transaction; its rows share one recorded_at (SQLite: one clock read per batch;
    # PostgreSQL: now() is the transaction start). Far fewer distinct values than rows means batching.
    assert 1 <= distinct_recorded_at(target) < 1000 / 5


def distinct_recorded_at(target: Target) -> int:
    if target.kind == "sqlite":
        with sqlite3.connect(target.url.removeprefix("sqlite://")) as connection:
            return int(connection.execute("SELECT count(DISTINCT recorded_at) FROM decision_audit").fetchone()[0])
    with psycopg.connect(target.url) as connection:
        row = connection.execute("SELECT count(DISTINCT recorded_at) FROM decision_audit").fetchone()
        assert row is not None
        return int(row[0])


def test_records_after_close_are_dropped_and_counted(target: Target) -> None:
    drops: list[tuple[DropReason, int]] = []
    store = target.open(on_audit_drop=lambda reason, count: drops.append((reason, count)))
    store.close()
    store.record_decision(decision(1))  # must neither raise nor block
    assert store.audit_dropped_total() == 1
    assert drops == [("closed", 1)]


def test_full_queue_drops_and_counts(target: Target) -> None:
    drops: list[tuple[DropReason, int]] = []
    store = target.open(audit_capacity=5, on_audit_drop=lambda reason, count: drops.append((reason, count)))
    try:
        # Hold the writer thread inside the database so the queue cannot drain while we fill it.
        with hold_write_lock(target):
            store.record_decision(decision(0))
            time.sleep(0.3)  # the writer takes record 0 and blocks on the lock
            for n in range(1, 21):
                store.record_decision(decision(n))
            queue_full = sum(count for reason, count in drops if reason == "queue_full")
            assert queue_full == 15  # 5 fit in the queue, 15 do not
        assert store.flush_audit(30)
        written = len(store.recent_decisions(limit=100))
        assert written + store.audit_dropped_total() == 21
        assert written >= 1
    finally:
        store.close()


@contextmanager
def hold_write_lock(target: Target) -> Iterator[None]:
    """Block writers to decision_audit from another connection for the duration of the block."""
    if target.kind == "sqlite":
        connection = sqlite3.connect(target.url.removeprefix("sqlite://"), isolation_level=None)
        connection.execute("BEGIN IMMEDIATE")  # the one SQLite writer lock
        try:
            yield
        finally:
            connection.execute("ROLLBACK")
            connection.close()
        return
    with psycopg.connect(target.url, autocommit=True) as pg:
        pg.execute("BEGIN")
        pg.execute("LOCK TABLE decision_audit IN ACCESS EXCLUSIVE MODE")
        try:
            yield
        finally:
            pg.execute("ROLLBACK")
