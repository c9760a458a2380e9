"""The parts of ``cds-service serve`` that need no server: request completeness, the metrics directory, the
data-directory check, /metrics routing, and the server-wide process metrics."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cds_service.serving import (
    MAX_BUFFERED_BODY_BYTES,
    MAX_HEAD_BYTES,
    METRICS_DIR_PREFIX,
    PartialRequest,
    create_metrics_directory,
    data_directory_problem,
    remove_stale_metrics_directories,
    request_state,
    split_metrics_port,
)

HEAD = b"POST /cds-services/x HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n"


@pytest.mark.parametrize(
    ("data", "state"),
    [
        (b"", "partial"),
        (b"POST /cds-services/x HTTP/1.1\r\nHost: h\r\n", "partial"),
        (b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n", "ready"),
        (HEAD + b"Content-Length: 4\r\n\r\n{}", "partial"),
        (HEAD + b"Content-Length: 4\r\n\r\n{\"\"}", "ready"),
        (HEAD + b"content-length: 2\r\n\r\n{}GET / HTTP/1.1\r\n", "ready"),  # the next (pipelined) one is extra
        (HEAD + b"Content-Length: 4\r\nExpect: 100-continue\r\n\r\n", "continue"),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n", "partial"),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n2;ext=1\r\n{}\r\n0\r\n", "partial"),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", "ready"),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nX-Trailer: 1\r\n\r\n", "ready"),
        # Malformed or too large: gunicorn's parser refuses it at once, there is nothing to wait for.
        (HEAD + b"Content-Length: nope\r\n\r\n", "ready"),
        (HEAD + b"Content-Length: 4\r\nContent-Length: 5\r\n\r\n", "ready"),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", "ready"),
        (HEAD + f"Content-Length: {MAX_BUFFERED_BODY_BYTES + 1}\r\n\r\n".encode(), "ready"),
        (b"GET /" + b"a" * (MAX_HEAD_BYTES + 10), "ready"),
    ],
)
def test_request_state(data: bytes, state: str) -> None:
    assert request_state(data) == state


def test_a_request_trickling_in_byte_by_byte_becomes_ready_exactly_at_its_last_byte() -> None:
    request = HEAD + b"Content-Length: 2\r\n\r\n{}"
    partial = PartialRequest(deadline=0.0)
    for index, byte in enumerate(request):
        partial.add(bytes([byte]))
        assert partial.state() == ("ready" if index == len(request) - 1 else "partial"), index
    assert b"".join(partial.chunks) == request


def test_a_large_body_stays_in_the_pieces_it_arrived_in() -> None:
    body = b"x" * 3_000_000
    pieces = [HEAD + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:100_000]]
    pieces += [body[offset:offset + 262_144] for offset in range(100_000, len(body), 262_144)]
    partial = PartialRequest(deadline=0.0)
    for piece in pieces[:-1]:
        partial.add(piece)
        assert partial.state() == "partial"
    partial.add(pieces[-1])
    assert partial.state() == "ready"
    assert len(partial.chunks) == len(pieces)  # nothing joined beyond the head's window
    assert b"".join(partial.chunks) == b"".join(pieces)


# --- the metrics directory --------------------------------------------------------------------------


def test_metrics_directory_is_created_locked_and_removed(tmp_path: Path) -> None:
    directory = create_metrics_directory([tmp_path / "missing", tmp_path])
    assert directory is not None
    assert directory.path.parent == tmp_path and directory.path.name.startswith(METRICS_DIR_PREFIX)
    # A second server on the machine must not take it for a dead one's.
    assert remove_stale_metrics_directories(tmp_path) == []
    assert directory.path.is_dir()
    directory.remove()
    assert not directory.path.exists()


def test_directories_of_dead_servers_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    dead = tmp_path / f"{METRICS_DIR_PREFIX}dead"
    dead.mkdir()
    (dead / ".owner.lock").touch()
    (dead / "counter_123.db").write_bytes(b"\0" * 16)
    live = tmp_path / f"{METRICS_DIR_PREFIX}live"
    live.mkdir()
    # Another process (a server's master) holds the lock of the live one.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
         "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(30)", str(live / ".owner.lock")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        unrelated = tmp_path / "something-else"
        unrelated.mkdir()
        assert remove_stale_metrics_directories(tmp_path) == [dead]
        assert live.is_dir() and unrelated.is_dir() and not dead.exists()
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    assert remove_stale_metrics_directories(tmp_path) == [live]  # its server is gone now


def test_no_usable_directory_is_reported_not_raised(tmp_path: Path) -> None:
    problems: list[tuple[Path, str]] = []
    a_file = tmp_path / "file"
    a_file.write_text("")
    assert create_metrics_directory([tmp_path / "missing", a_file], lambda base, why: problems.append((base, why))) \
        is None
    assert [base for base, _ in problems] == [tmp_path / "missing", a_file]


def test_the_lock_is_inherited_by_forked_workers(tmp_path: Path) -> None:
    directory = create_metrics_directory([tmp_path])
    assert directory is not None
    child = os.fork()
    if child == 0:  # a "worker": the master's lock lives on in it
        import time

        time.sleep(1.5)
        os._exit(0)
    try:
        directory._lock_file.close()  # the "master" is gone
        with (directory.path / ".owner.lock").open("a") as probe, pytest.raises(BlockingIOError):
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.waitpid(child, 0)
    assert remove_stale_metrics_directories(tmp_path) == [directory.path]


# --- the data directory -----------------------------------------------------------------------------


def test_data_directory_problems_are_named(tmp_path: Path) -> None:
    assert data_directory_problem(str(tmp_path / "new")) is None
    assert (tmp_path / "new").is_dir()
    a_file = tmp_path / "file"
    a_file.write_text("")
    problem = data_directory_problem(str(a_file / "below"))
    assert problem is not None and problem.startswith(f"the data directory {a_file / 'below'} cannot be created: ")
    full = data_directory_problem(str(tmp_path), min_free_bytes=2**62)
    assert full is not None and full.startswith(f"the data directory {tmp_path} is full (")


# --- /metrics on its own port -----------------------------------------------------------------------


def test_metrics_port_routing() -> None:
    calls: list[str] = []

    def app(environ: dict[str, str], start_response: object) -> list[bytes]:
        calls.append(environ["PATH_INFO"])
        return [b"app"]

    routed = split_metrics_port(app, 9090)
    statuses: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        statuses.append(status)

    assert routed({"SERVER_PORT": "9090", "PATH_INFO": "/metrics"}, start_response) == [b"app"]
    assert routed({"SERVER_PORT": "8080", "PATH_INFO": "/cds-services"}, start_response) == [b"app"]
    body = routed({"SERVER_PORT": "8080", "PATH_INFO": "/metrics"}, start_response)
    assert b"OperationOutcome" in body[0] and b"no such endpoint: /metrics" in body[0]
    assert b"OperationOutcome" in routed({"SERVER_PORT": "9090", "PATH_INFO": "/readyz"}, start_response)[0]
    assert calls == ["/metrics", "/cds-services"]
    assert statuses == ["404 NOT FOUND", "404 NOT FOUND"]


# --- process metrics --------------------------------------------------------------------------------


def test_server_process_metrics_sum_the_process_and_its_children() -> None:
    from cds_service.metrics import ServerProcessCollector

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(20)"])
    try:
        collector = ServerProcessCollector(os.getpid())
        assert child.pid in collector.pids()
        samples = {metric.name: metric.samples[0].value for metric in collector.collect()}
    finally:
        child.kill()
        child.wait()
    assert samples["cds_server_processes"] >= 2
    assert samples["process_cpu_seconds"] > 0
    assert samples["process_resident_memory_bytes"] > 10 * 1024 * 1024
    assert samples["process_open_fds"] > 3
    assert samples["process_start_time_seconds"] > 1_600_000_000


def test_collected_bytes_are_handed_to_the_parser_and_the_rest_goes_back_to_its_read_ahead() -> None:
    import socket

    from gunicorn.http.unreader import SocketUnreader

    from cds_service.serving import _Prebuffered

    left, right = socket.socketpair()
    try:
        unreader = SocketUnreader(left)
        prebuffered = _Prebuffered.install(unreader, [b"request one", b"request two"])
        assert unreader.read() == b"request one"  # the parser's first read: the collected bytes, not the socket
        prebuffered.spill()  # the response is sent: what the parser did not take is read-ahead for the next one
        assert unreader.take_buffered() == b"request two"
        right.sendall(b"from the socket")
        assert unreader.read() == b"from the socket"
    finally:
        left.close()
        right.close()
