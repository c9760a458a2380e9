"""Background writer for decision audit records, and fork hygiene shared by the stores.

Audit records must never delay or fail a response, so the request thread only
does a non-blocking ``put`` on a bounded queue; one daemon thread per process drains it in batches.
A batch the database refuses (it is down, restarting, or its disk is full) is retried with growing
pauses for up to ``retry_window`` seconds and only then dropped; every dropped record is counted.
While a batch waits, new records wait in the queue (bounded: beyond it they are dropped and counted).
The thread starts lazily on first use: gunicorn with ``--preload`` builds the app (and the store)
in the master and forks workers afterwards, and threads do not survive a fork.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Final, Protocol

from cds_service.store.base import DecisionAudit, DropCallback, DropReason

log = logging.getLogger(__name__)

DEFAULT_QUEUE_CAPACITY: Final = 10_000
DEFAULT_BATCH_SIZE: Final = 200
# Seconds a batch waits for more records before it is written.
DEFAULT_LINGER_S: Final = 0.05
# How long a batch the database refused is retried (a PostgreSQL restart or fail-over takes seconds to a
# minute), and the pauses between attempts.
DEFAULT_RETRY_WINDOW_S: Final = 60.0
RETRY_FIRST_PAUSE_S: Final = 0.5
RETRY_MAX_PAUSE_S: Final = 5.0
# Log a failing audit database at most this often: the writer may fail for every batch while it is down.
_FAILURE_LOG_INTERVAL_S: Final = 60.0


class ForkAware(Protocol):
    def after_fork_in_child(self) -> None: ...


_fork_aware: weakref.WeakSet[ForkAware] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # Runs in the only thread of a freshly forked child, before any other code: no locking races.
    for obj in list(_fork_aware):
        obj.after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)

# Writers of this process, for the flush at interpreter exit.
_writers: weakref.WeakSet[AuditWriter] = weakref.WeakSet()
EXIT_FLUSH_TIMEOUT_S: Final = 2.0


@atexit.register
def _flush_writers_at_exit() -> None:
    # A gunicorn worker that exits normally (max_requests, SIGTERM, scale-down) without the app calling
    # close() would otherwise lose its queued audit records with the daemon thread. Bounded: exit stays fast.
    for writer in list(_writers):
        writer.close(timeout=EXIT_FLUSH_TIMEOUT_S)


def reset_after_fork(obj: ForkAware) -> None:
    """Have ``obj.after_fork_in_child()`` called in every forked child (weakly referenced)."""
    _fork_aware.add(obj)


class _Stop:
    """Queue sentinel that tells the writer thread to finish."""


_STOP: Final = _Stop()


class AuditWriter:
    """A bounded queue of :class:`DecisionAudit` records and the daemon thread that writes them in batches."""

    def __init__(
        self,
        write_batch: Callable[[Sequence[DecisionAudit]], None],
        *,
        capacity: int = DEFAULT_QUEUE_CAPACITY,
        batch_size: int = DEFAULT_BATCH_SIZE,
        linger: float = DEFAULT_LINGER_S,
        on_drop: DropCallback | None = None,
        retry_window: float = DEFAULT_RETRY_WINDOW_S,
        name: str = "cds-audit-writer",
    ) -> None:
        self._write_batch = write_batch
        self._retry_window = retry_window
        self._capacity = capacity
        self._batch_size = batch_size
        self._linger = linger
        self._on_drop = on_drop
        self._name = name
        self._init_process_state()
        reset_after_fork(self)
        _writers.add(self)

    def _init_process_state(self) -> None:
        self._queue: queue.Queue[DecisionAudit | _Stop] = queue.Queue(maxsize=self._capacity)
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._closing = threading.Event()  # set by close(): no more retries, no more pauses
        self._dropped = 0
        self._written = 0
        self._last_failure_log = 0.0

    def after_fork_in_child(self) -> None:
        """A forked child has no writer thread and must not share the parent's queue or counters."""
        self._init_process_state()

    def submit(self, record: DecisionAudit) -> None:
        """Enqueue without blocking; a full queue (or a closed writer) drops the record and counts it."""
        if self._closed:
            self._drop("closed", 1)
            return
        if self._thread is None:
            self._start()
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._drop("queue_full", 1)

    def dropped_total(self) -> int:
        """Records lost in this process."""
        return self._dropped

    def written_total(self) -> int:
        """Records written in this process."""
        return self._written

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued record is written or dropped (retries included); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._queue.all_tasks_done.wait(remaining)
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting records, write what is queued (one attempt each, bounded wait), stop the thread."""
        self._closed = True
        self._closing.set()
        thread = self._thread
        if thread is None or not thread.is_alive():  # never started, or already stopped by an earlier close()
            return
        deadline = time.monotonic() + timeout
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            log.warning("audit writer did not drain its queue within %.1f s at close", timeout)
            return
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            log.warning("audit writer still busy after %.1f s at close; pending records are lost", timeout)

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                thread.start()
                self._thread = thread

    def _drop(self, reason: DropReason, count: int) -> None:
        self._dropped += count  # a lost increment under a race only makes a counter low by one
        if self._on_drop is not None:
            try:
                self._on_drop(reason, count)
            except Exception:  # a metrics callback must not break the caller
                log.exception("audit drop callback failed")

    def _run(self) -> None:
        batch: list[DecisionAudit] = []
        taken = 0  # queue items behind `batch` (records and a stop marker): marked done once their fate is known
        stopping = False
        failing_since: float | None = None
        attempts = 0
        while True:
            if not batch and not stopping:
                item = self._queue.get()
                taken += 1
                if isinstance(item, _Stop):
                    stopping = True
                else:
                    batch.append(item)
                # Gather for a short while: one transaction per batch instead of one per record. The thread
                # sleeps through the linger and then takes what has come, rather than waiting on the queue: a
                # waiting thread would be woken by every record, and each wake-up costs the request threads the
                # GIL (about a tenth of a request's CPU under load). The linger bounds what a crash can lose to a
                # few tens of milliseconds of audit; a backlog of a full batch or more is written without sleeping.
                if not stopping and self._linger > 0 and self._queue.qsize() < self._batch_size:
                    time.sleep(self._linger)
            while not stopping and len(batch) < self._batch_size:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                taken += 1
                if isinstance(item, _Stop):
                    stopping = True
                else:
                    batch.append(item)
            if batch:
                try:
                    self._write_batch(batch)
                except Exception as error:
                    attempts += 1
                    now = time.monotonic()
                    failing_since = now if failing_since is None else failing_since
                    self._log_failure(len(batch), error, retrying=not self._closing.is_set())
                    if not self._closing.is_set() and now - failing_since < self._retry_window:
                        pause = min(RETRY_FIRST_PAUSE_S * 2 ** (attempts - 1), RETRY_MAX_PAUSE_S)
                        self._closing.wait(pause)
                        continue  # the same batch again (topped up with what arrived meanwhile)
                    self._drop("write_failed", len(batch))
                else:
                    self._written += len(batch)
                batch = []
                failing_since = None
                attempts = 0
            for _ in range(taken):
                self._queue.task_done()
            taken = 0
            if stopping:
                return

    def _log_failure(self, size: int, error: Exception, *, retrying: bool) -> None:
        now = time.monotonic()
        if now - self._last_failure_log < _FAILURE_LOG_INTERVAL_S:
            return
        self._last_failure_log = now
        # Audit records hold codes and ids only, so the driver's message is safe to log.
        log.warning(
            "audit batch of %d records not written (%s): %s: %s",
            size,
            f"retrying for up to {self._retry_window:g} s" if retrying else "dropped",
            type(error).__name__,
            error,
        )


class QueuedAuditMixin:
    """The audit half of a store, shared by every backend: decisions go to the store's :class:`AuditWriter`."""

    _audit: AuditWriter

    def record_decision(self, record: DecisionAudit) -> None:
        """Queue the audit record for the background writer."""
        self._audit.submit(record)

    def audit_dropped_total(self) -> int:
        """Audit records lost in this process."""
        return self._audit.dropped_total()

    def flush_audit(self, timeout: float = 5.0) -> bool:
        """Wait until queued audit records are written or dropped."""
        return self._audit.flush(timeout)
