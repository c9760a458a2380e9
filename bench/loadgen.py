"""A small closed-loop HTTP load generator: stdlib only, one OS process per client.

Each client process keeps one persistent ``http.client`` connection per target (keep-alive), and
reconnects when the server closes it (gunicorn's ``sync`` worker closes after every response; the
reconnect is then part of the next request's latency, as it would be for a real client). Clients
are separate processes so that the generator's own GIL never becomes the bottleneck being measured.

A *round* sends the same work to ``concurrency`` clients for ``duration`` seconds against one
target; ``bench/run.py`` alternates rounds between the service and the ceiling.
"""

from __future__ import annotations

import http.client
import multiprocessing
import multiprocessing.connection
import time
import uuid
from array import array
from dataclasses import dataclass, field
from typing import Any

HOOK_INSTANCE_PLACEHOLDER = b"00000000-0000-4000-8000-000000000000"


@dataclass(frozen=True)
class Payload:
    """A request body split around its hookInstance so that every request carries a fresh one cheaply."""

    path: str
    # Each request variant's body split at every placeholder: the fresh uuid is joined in wherever it stood
    # (the hookInstance; with ``fresh_patient`` bodies, the patient id too).
    parts: tuple[tuple[bytes, ...], ...]
    resources: int  # prefetch resources per request (for the cost-per-resource figures)

    @classmethod
    def from_bodies(cls, path: str, bodies: list[bytes], resources: int) -> Payload:
        """Split each body at its hookInstance placeholder (and wherever else the placeholder stands)."""
        parts = []
        for body in bodies:
            segments = tuple(body.split(HOOK_INSTANCE_PLACEHOLDER))
            if len(segments) < 2:
                raise ValueError("each body must contain the hookInstance placeholder")
            parts.append(segments)
        return cls(path=path, parts=tuple(parts), resources=resources)

    def body(self, variant: int, fresh: bytes) -> bytes:
        """Request variant ``variant`` (modulo the variants) with ``fresh`` in place of the placeholder."""
        return fresh.join(self.parts[variant % len(self.parts)])


@dataclass
class RoundResult:
    """What one round measured: latencies in nanoseconds of completed requests, and the failures."""

    latencies_ns: array[int] = field(default_factory=lambda: array("q"))
    # Per client: when its timed requests began (after any warm-up) and when each one completed (monotonic s).
    timed_from: float = 0.0
    completions: array[float] = field(default_factory=lambda: array("d"))
    # Set by LoadGenerator.run_round once every client has reported; summed over rounds by merge().
    completed_in_window: int = 0
    window_seconds: float = 0.0
    errors: int = 0
    first_error: str | None = None

    def merge(self, other: RoundResult) -> None:
        """Add another round's figures to this one (throughput = completed_in_window / window_seconds)."""
        self.latencies_ns.extend(other.latencies_ns)
        self.completed_in_window += other.completed_in_window
        self.window_seconds += other.window_seconds
        self.errors += other.errors
        self.first_error = self.first_error or other.first_error


def _connect(port: int) -> http.client.HTTPConnection:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.connect()
    return connection


# Longer idle than this and a kept-alive connection is closed before the next round: servers drop idle
# connections after their keep-alive timeout (gunicorn: 2 to 5 s), and a client would not reuse it either.
IDLE_RECONNECT_SECONDS = 1.0


def _post(connections: dict[int, http.client.HTTPConnection], port: int, path: str, body: bytes,
          headers: dict[str, str]) -> tuple[int, int]:
    """POST on the kept-alive connection to ``port`` (opened when needed); (status, start time in ns).

    A reused connection that the server closed meanwhile fails before any response: like every HTTP
    client, reconnect and send again once, and time the request from the new connection.
    """
    reused = port in connections
    began = time.perf_counter_ns()
    for attempt in (1, 2):
        connection = connections.get(port) or _connect(port)
        connections[port] = connection
        try:
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            response.read()
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            connections.pop(port, None)
            connection.close()
            if not reused or attempt == 2:
                raise
            began = time.perf_counter_ns()
            continue
        except (OSError, http.client.HTTPException):
            connections.pop(port, None)
            connection.close()
            raise
        if response.will_close:
            connection.close()
            del connections[port]
        return response.status, began
    raise AssertionError("unreachable")


def _client_loop(client_id: int, pipe: multiprocessing.connection.Connection) -> None:
    """Serve jobs from the parent until it sends ``None``: one job is one round for this client."""
    connections: dict[int, http.client.HTTPConnection] = {}
    payloads: dict[str, Payload] = {}  # sent once per client, not once per round
    warmed: set[tuple[int, str]] = set()
    last_used: dict[int, float] = {}
    counter = 0
    while True:
        job = pipe.recv()
        if job is None:
            break
        port, payload_key, new_payload, start_at, end_at = job
        if new_payload is not None:
            payloads[payload_key] = new_payload
        payload = payloads[payload_key]
        result = RoundResult()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        variant = client_id  # clients start on different variants so that they do not move in lockstep
        warm = (port, payload_key) in warmed
        if port in connections and time.monotonic() - last_used.get(port, 0.0) > IDLE_RECONNECT_SECONDS:
            connections.pop(port).close()
        if warm:
            delay = start_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            result.timed_from = time.monotonic()
        while True:
            now = time.monotonic()
            if warm and now >= end_at:
                break
            counter += 1
            body = payload.body(variant, str(uuid.UUID(int=(client_id << 64) | counter, version=4)).encode())
            variant += 1
            try:
                status, began = _post(connections, port, payload.path, body, headers)
            except (OSError, http.client.HTTPException) as error:
                result.errors += 1
                result.first_error = result.first_error or f"{type(error).__name__}: {error}"
                time.sleep(0.01)
                continue
            finished = time.perf_counter_ns()
            if not warm:
                # The first request of a client on a target warms the connection and the worker: untimed,
                # and sent before the round's start so that it never overlaps another target's round.
                warm = True
                warmed.add((port, payload_key))
                if status != 200:
                    result.errors += 1
                    result.first_error = result.first_error or f"HTTP {status}"
                delay = start_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                result.timed_from = time.monotonic()
                continue
            if status != 200:
                result.errors += 1
                result.first_error = result.first_error or f"HTTP {status}"
                continue
            result.latencies_ns.append(finished - began)
            result.completions.append(time.monotonic())
        last_used[port] = time.monotonic()
        pipe.send(result)
    for connection in connections.values():
        connection.close()


class LoadGenerator:
    """A pool of client processes; use as a context manager and call :meth:`run_round`."""

    def __init__(self, clients: int) -> None:
        # spawn, not fork: forking a process that runs threads (a test session, an app) is unsafe, and
        # Python 3.12+ warns about it. The clients import only this module.
        context = multiprocessing.get_context("spawn")
        self._pipes: list[multiprocessing.connection.Connection] = []
        self._processes: list[Any] = []
        self._known_payloads: list[set[str]] = [set() for _ in range(clients)]
        for client_id in range(clients):
            parent_end, child_end = context.Pipe()
            process = context.Process(target=_client_loop, args=(client_id, child_end), daemon=True)
            process.start()
            self._pipes.append(parent_end)
            self._processes.append(process)

    def __enter__(self) -> LoadGenerator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every client process."""
        for pipe in self._pipes:
            try:
                pipe.send(None)
            except OSError:
                pass
        for process in self._processes:
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()

    def run_round(self, port: int, payload: Payload, concurrency: int, duration: float) -> RoundResult:
        """``concurrency`` clients send requests back to back for ``duration`` seconds; merged results."""
        if concurrency > len(self._pipes):
            raise ValueError(f"{concurrency} clients requested, the pool has {len(self._pipes)}")
        # Leave time for first-contact warm-up requests (a large request can take a while).
        start_at = time.monotonic() + 0.05 + (0.3 if payload.resources >= 1000 else 0.0)
        end_at = start_at + duration
        payload_key = f"{payload.path}:{payload.resources}:{id(payload)}"
        for client_id, pipe in enumerate(self._pipes[:concurrency]):
            known = self._known_payloads[client_id]
            pipe.send((port, payload_key, None if payload_key in known else payload, start_at, end_at))
            known.add(payload_key)
        clients = [pipe.recv() for pipe in self._pipes[:concurrency]]
        # The window opens when the last client has started timing (a slow warm-up delays a client), so that
        # throughput is never computed over a period when fewer clients than advertised were sending.
        window_start = max([start_at, *(client.timed_from for client in clients)])
        merged = RoundResult(window_seconds=max(end_at - window_start, 0.0))
        for client in clients:
            merged.merge(client)
            merged.completed_in_window += sum(1 for done in client.completions if window_start <= done <= end_at)
        merged.window_seconds = max(end_at - window_start, 0.0)
        return merged
