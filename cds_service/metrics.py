"""Prometheus metrics (``GET /metrics``).

Under gunicorn each worker is a process, so ``cds-service serve`` sets ``PROMETHEUS_MULTIPROC_DIR``
before this module is imported and ``/metrics`` aggregates every worker's samples; without it
(tests, ``flask run``) the default in-process registry is used.

prometheus_client's own process metrics (CPU, memory) describe only the process that renders them,
and are not available in multi-process mode at all: :class:`ServerProcessCollector` reports the same
``process_*`` names for the whole server instead (the gunicorn master and all its workers), which is
what a pod's or a container's figures mean to an operator.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

REQUESTS = Counter(
    "cds_requests_total", "HTTP requests by endpoint kind, service and status", ["endpoint", "service", "status"]
)
LATENCY = Histogram(
    "cds_request_duration_seconds",
    "Time to answer a CDS service call, by service",
    ["service"],
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
CARDS = Counter("cds_cards_total", "Cards returned, by service and indicator", ["service", "indicator"])
RATINGS = Counter("cds_ratings_total", "Orders rated, by service and rating", ["service", "rating"])
FHIR_FETCHES = Counter("cds_fhir_fetch_total", "Fallback FHIR fetches by outcome", ["outcome"])
FEEDBACK = Counter(
    "cds_feedback_items_total",
    "Feedback items received, by service and outcome (a repeated POST counts again; see cds_feedback_stored_total)",
    ["service", "outcome"],
)
FEEDBACK_STORED = Counter(
    "cds_feedback_stored_total",
    "Feedback items newly stored, by service: the sum of the replies' 'stored' (a repeated item is stored once)",
    ["service"],
)
AUTH_FAILURES = Counter("cds_auth_failures_total", "Requests refused with 401")
STORE_ERRORS = Counter("cds_store_errors_total", "Store operations that failed", ["operation"])
AUDIT_DROPPED = Counter("cds_audit_dropped_total", "Audit records not written, by reason", ["reason"])
STORE_UP = Gauge(
    "cds_store_up",
    "1 when the feedback and audit store answered its last check, 0 when it did not (cards do not depend on it)",
    multiprocess_mode="livemostrecent",
)

_server_pid: int | None = None


def set_server_pid(pid: int) -> None:
    """Record the gunicorn master's pid (called in the master before it forks its workers)."""
    global _server_pid
    _server_pid = pid


def render_metrics() -> tuple[bytes, str]:
    """The exposition text for every worker process (multi-process mode) or this process."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        registry.register(ServerProcessCollector(_server_pid or os.getpid()))
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


class ServerProcessCollector:
    """``process_*`` metrics summed over a process and its children (read from ``/proc``; Linux only)."""

    def __init__(self, root_pid: int, proc: Path = Path("/proc")) -> None:
        self._root = root_pid
        self._proc = proc
        self._ticks = os.sysconf("SC_CLK_TCK")
        self._page = os.sysconf("SC_PAGESIZE")
        self._boot_time = _boot_time(proc)

    def pids(self) -> list[int]:
        """The root and its children (the gunicorn master and its workers)."""
        children = self._proc / str(self._root) / "task" / str(self._root) / "children"
        try:
            return [self._root, *(int(pid) for pid in children.read_text().split())]
        except OSError:
            return [self._root]

    def collect(self) -> Iterator[Metric]:
        cpu = 0.0
        rss = 0
        fds = 0
        processes = 0
        start: float | None = None
        for pid in self.pids():
            base = self._proc / str(pid)
            try:
                fields = (base / "stat").read_text().rsplit(")", 1)[1].split()
                fd_count = len(os.listdir(base / "fd"))
            except OSError:
                continue  # it exited meanwhile
            processes += 1
            cpu += (int(fields[11]) + int(fields[12])) / self._ticks
            rss += int(fields[21]) * self._page
            fds += fd_count
            if pid == self._root and self._boot_time is not None:
                start = self._boot_time + int(fields[19]) / self._ticks
        if not processes:
            return
        yield CounterMetricFamily(
            "process_cpu_seconds", "User and system CPU time of the server's processes (master and workers)", cpu
        )
        yield GaugeMetricFamily(
            "process_resident_memory_bytes", "Resident memory of the server's processes (master and workers)", rss
        )
        yield GaugeMetricFamily("process_open_fds", "Open file descriptors of the server's processes", fds)
        if start is not None:
            yield GaugeMetricFamily("process_start_time_seconds", "Start time of the server, in Unix seconds", start)
        yield GaugeMetricFamily("cds_server_processes", "Processes of the server (master and workers)", processes)


def _boot_time(proc: Path) -> float | None:
    try:
        for line in (proc / "stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except OSError:
        return None
    return time.time() - time.monotonic()
