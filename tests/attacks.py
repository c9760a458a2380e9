"""Client behaviours that hurt servers, bounded in count and time, on loopback only.

Used by tests/test_operations.py, and runnable by hand against any local server to get the figures::

    python tests/attacks.py slow-clients PORT      # 50 connections trickling headers, 5 normal requests
    python tests/attacks.py shutdown PID PORT      # SIGTERM to PID while new connections keep coming
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from test_protocol_validation import minimal_request

SELECT = "/cds-services/lumbar-imaging-order-select"


def order_select_body(**context: Any) -> bytes:
    """A small valid order-select request (no patient data: the service answers from the draft order)."""
    request = minimal_request()
    request["context"]["selections"] = ["ServiceRequest/sr1"]
    request.update(context)
    return json.dumps(request).encode()


@dataclass
class Outcome:
    """What happened to one request: ``answered`` (with ``status``), ``refused``, ``reset`` or ``timeout``."""

    kind: str
    status: int | None = None
    seconds: float = 0.0
    detail: str = ""


def post(port: int, body: bytes, timeout: float, path: str = SELECT,
         connection: http.client.HTTPConnection | None = None) -> Outcome:
    """One POST on a new connection (or on ``connection``), classified."""
    started = time.monotonic()
    conn = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        try:
            if conn.sock is None:
                conn.connect()
        except ConnectionRefusedError:
            return Outcome("refused", seconds=time.monotonic() - started)
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        return Outcome("answered", response.status, time.monotonic() - started)
    except TimeoutError:
        return Outcome("timeout", seconds=time.monotonic() - started)
    except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected) as error:
        # The connection was accepted (connect succeeded) and then dropped without an answer.
        return Outcome("reset", seconds=time.monotonic() - started, detail=type(error).__name__)
    finally:
        if connection is None:
            conn.close()


def post_in_two_parts(port: int, body: bytes, pause: float, timeout: float = 10.0) -> Outcome:
    """A POST whose head arrives ``pause`` seconds before its body (as over a slow link), classified."""
    started = time.monotonic()
    head = (f"POST {SELECT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except ConnectionRefusedError:
        return Outcome("refused", seconds=time.monotonic() - started)
    try:
        sock.sendall(head)
        time.sleep(pause)
        sock.sendall(body)
        answer = sock.recv(65536)
        if not answer:
            return Outcome("reset", seconds=time.monotonic() - started, detail="closed without an answer")
        return Outcome("answered", int(answer.split(b" ", 2)[1]), time.monotonic() - started)
    except TimeoutError:
        return Outcome("timeout", seconds=time.monotonic() - started)
    except (ConnectionResetError, BrokenPipeError) as error:
        return Outcome("reset", seconds=time.monotonic() - started, detail=type(error).__name__)
    finally:
        sock.close()


@dataclass
class SlowClients:
    """Connections that send a request head one byte per ``interval`` (a "slowloris")."""

    port: int
    count: int
    interval: float = 1.0
    sockets: list[socket.socket] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def open_count(self) -> int:
        """How many of the connections the server still keeps open."""
        still_open = 0
        for sock in self.sockets:
            try:
                sock.setblocking(False)
                still_open += sock.recv(1, socket.MSG_PEEK) != b""
            except BlockingIOError:
                still_open += 1
            except OSError:
                pass
            finally:
                sock.setblocking(True)
        return still_open

    def _trickle(self, head: bytes) -> None:
        position = 0
        while not self._stop.wait(self.interval if position else 0):
            for sock in self.sockets:
                try:
                    sock.send(head[position:position + 1])
                except OSError:
                    pass
            position = (position + 1) % len(head)


@contextmanager
def slow_clients(port: int, count: int = 50, interval: float = 1.0) -> Iterator[SlowClients]:
    """``count`` connections trickling a request head at one byte per ``interval`` until the block ends."""
    head = (f"POST {SELECT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"X-Padding: {'a' * 400}\r\n").encode()
    clients = SlowClients(port, count, interval)
    try:
        for _ in range(count):
            clients.sockets.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        thread = threading.Thread(target=clients._trickle, args=(head,), daemon=True)
        thread.start()
        yield clients
    finally:
        clients._stop.set()
        for sock in clients.sockets:
            sock.close()


def normal_requests_during_slow_clients(port: int, slow: int = 50, normal: int = 5,
                                        timeout: float = 3.0) -> tuple[list[Outcome], int]:
    """``normal`` order-selects, one after the other, while ``slow`` connections trickle; and how many of
    the slow connections were still open at the end (a server that drops them is not buffering them)."""
    with slow_clients(port, slow) as clients:
        time.sleep(1.5)  # every slow connection has sent its first bytes and been taken up by the server
        outcomes = []
        for _ in range(normal):
            outcomes.append(post(port, order_select_body(), timeout))
            time.sleep(0.3)
        return outcomes, clients.open_count()


def new_connections_around_sigterm(pid: int, port: int, clients: int = 12, spacing: float = 0.1,
                                   timeout: float = 15.0) -> list[Outcome]:
    """SIGTERM ``pid``, then open ``clients`` new connections ``spacing`` seconds apart, each sending a request."""
    outcomes: list[Outcome] = []
    threads = []

    def one() -> None:
        outcomes.append(post(port, order_select_body(), timeout))

    os.kill(pid, signal.SIGTERM)
    for _ in range(clients):
        thread = threading.Thread(target=one)
        thread.start()
        threads.append(thread)
        time.sleep(spacing)
    for thread in threads:
        thread.join(timeout + 5)
    return outcomes


def _main(argv: list[str]) -> int:
    if argv[:1] == ["slow-clients"]:
        outcomes, still_open = normal_requests_during_slow_clients(int(argv[1]))
        ok = sum(o.kind == "answered" and o.status == 200 for o in outcomes)
        print(json.dumps({"normal_answered_200": ok, "normal_sent": len(outcomes), "slow_still_open": still_open,
                          "outcomes": [o.__dict__ for o in outcomes]}))
        return 0
    if argv[:1] == ["shutdown"]:
        outcomes = new_connections_around_sigterm(int(argv[1]), int(argv[2]))
        print(json.dumps({"kinds": Counter(o.kind for o in outcomes), "outcomes": [o.__dict__ for o in outcomes]}))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
