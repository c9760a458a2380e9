"""How ``cds-service serve`` runs gunicorn: the worker, its settings, JSON logs and the metrics directory.

The worker is gunicorn's threaded worker with two changes (see :class:`BufferingThreadWorker`):

* **Requests are read whole before a thread takes them.** gunicorn's own threaded worker hands a
  connection to a thread as soon as its first byte arrives, and the thread then waits for the rest:
  fifty clients sending their headers a byte a second held every thread of two workers, and normal
  requests waited for as long as they trickled. Here the worker's event loop collects each request
  (head and body) without blocking, and a thread only ever runs a request that is already complete.
  Threads (not gevent greenlets) stay the execution model: with keep-alive connections pinned to the
  worker that accepted them, greenlets served the connections of a busy worker far behind those of
  an idle one (p99 several times higher at ten clients), while threads share a worker evenly.
* **SIGTERM drains before it closes the listening socket.** Closing it resets every connection the
  kernel has already accepted into its backlog; the worker therefore keeps accepting and answering
  (with ``Connection: close``) until it is idle and the backlog is empty, within a bound.

It relies on gunicorn's ``ThreadWorker`` internals; ``constraints.txt`` pins the gunicorn version it
was written and tested against (tests/test_operations.py reproduces both problems against it).
"""

from __future__ import annotations

import errno
import fcntl
import io
import logging
import select
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from gunicorn import glogging
from gunicorn.workers.gthread import _DEFER, STOP_KEEPALIVE_LINGER, ThreadWorker

from cds_service.logs import JsonFormatter, RedactingFilter

log = logging.getLogger("cds_service.serving")

WORKER_CLASS: Final = "cds_service.serving.BufferingThreadWorker"
THREADS: Final = 4
KEEPALIVE_S: Final = 5
GRACEFUL_TIMEOUT_S: Final = 10
# A connection must deliver a whole request within this time of being accepted (or of its previous
# response); then it is closed. Bounds what a trickling client holds: one socket and its buffer.
REQUEST_READ_TIMEOUT_S: Final = 30.0
# A request head larger than this without its blank line is handed to gunicorn's parser, which refuses it.
MAX_HEAD_BYTES: Final = 64 * 1024
# A body declared larger than this is not buffered: the service refuses it (413) from its Content-Length.
MAX_BUFFERED_BODY_BYTES: Final = 16 * 1024 * 1024
_RECV_BYTES: Final = 256 * 1024
# While a request's bytes keep coming, a thread waits this long for the next ones, and this long in all.
_FLOW_WAIT_S: Final = 0.005
_FLOW_BUDGET_S: Final = 0.1
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"


def gunicorn_options(host: str, port: int, workers: int, threads: int = THREADS,
                     metrics_port: int | None = None) -> dict[str, Any]:
    """The gunicorn settings of ``cds-service serve`` (bench/run.py runs its ceiling app under the same)."""
    binds = [_bind(host, port)]
    if metrics_port is not None:
        binds.append(_bind(host, metrics_port))
    return {
        "bind": binds,
        "workers": workers,
        "worker_class": WORKER_CLASS,
        "threads": threads,
        "keepalive": KEEPALIVE_S,
        "timeout": 30,
        "graceful_timeout": GRACEFUL_TIMEOUT_S,
        # gunicorn >= 25.1 opens a control socket in $XDG_RUNTIME_DIR or ~/.gunicorn by default: one path
        # shared by every instance of a user, and an error line when the home directory is not writable.
        "control_socket_disable": True,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "warning",
        "logger_class": JsonGunicornLogger,
    }


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- the worker ------------------------------------------------------------------------------------


class BufferingThreadWorker(ThreadWorker):  # type: ignore[misc]
    """gunicorn's threaded worker; a thread never waits for a client's bytes.

    A thread that takes a connection reads what has arrived without blocking. When the request is not
    complete yet, it keeps the bytes with the connection and gives the connection back to the event
    loop (gunicorn's own "defer" path for idle connections), and takes it up again when more bytes
    arrive. Normal requests, which arrive whole, cost nothing more than before: the same thread, the
    same reads. Reading in the event loop instead (the main thread) was tried: every extra system call
    there waits for the GIL behind busy request threads, and throughput fell by half.
    """

    alive: bool
    nr_conns: int

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._drain_started: float | None = None
        # How long a connection may wait for its (next) bytes; gunicorn uses the keep-alive timeout, which a
        # drain sets to 0 (for the responses), and a connection deferred then must not be closed at once.
        self._idle_s = float(self.cfg.keepalive) or 5.0

    def handle(self, conn: Any) -> Any:
        """Runs in a thread: serve the request if it has arrived whole, else give the connection back."""
        if self.cfg.is_ssl or conn.is_http2:
            return super().handle(conn)
        partial = conn.__dict__.get("cds_partial")
        if partial is None:
            partial = conn.cds_partial = PartialRequest(time.monotonic() + REQUEST_READ_TIMEOUT_S)
            if conn.parser is not None:  # bytes a previous request read ahead (pipelining)
                partial.add(conn.parser.unreader.take_buffered())
        try:
            conn.sock.setblocking(False)
            if not self._read_available(conn.sock, partial):
                return False  # closed by the client before a whole request
        except OSError:
            return False
        state = partial.state()
        if state != "ready":
            if time.monotonic() > partial.deadline:
                return False  # too slow: the connection is closed
            if state == "continue" and not partial.sent_continue:
                # The client waits for this before sending its body, which is then collected the same way.
                partial.sent_continue = True
                try:
                    conn.sock.send(_CONTINUE)
                except OSError:
                    return False
            conn.data_ready = False
            return _DEFER  # the event loop waits for more bytes; no thread waits
        del conn.cds_partial
        conn.sock.setblocking(True)
        conn.data_ready = True
        conn.init()
        prebuffered = _Prebuffered.install(conn.parser.unreader, partial.chunks)
        try:
            return super().handle(conn)
        finally:
            # Bytes of a next (pipelined) request go back to the parser's read-ahead, where gunicorn looks for
            # them before it waits on the socket.
            prebuffered.spill()

    @staticmethod
    def _read_available(sock: Any, partial: PartialRequest) -> bool:
        """Read what has arrived, without blocking; False when the client closed the connection.

        A request whose bytes are flowing (a large body on its way over loopback or a fast network) is worth
        a few milliseconds of this thread, within a small budget: giving it back to the event loop after
        every short read costs a round trip through the main thread each time. A trickle is not worth it.
        """
        waited_until = time.monotonic() + _FLOW_BUDGET_S
        while True:
            try:
                chunk = sock.recv(_RECV_BYTES)
            except (BlockingIOError, InterruptedError):
                if (partial.size and time.monotonic() < waited_until and partial.state() == "partial"
                        and select.select([sock], [], [], _FLOW_WAIT_S)[0]):
                    continue
                return True
            if not chunk:
                return False
            partial.add(chunk)

    def finish_request(self, conn: Any, fs: Any) -> None:
        super().finish_request(conn, fs)
        if self.pending_conns and self.pending_conns[-1] is conn:  # just deferred: waits for more bytes
            conn.timeout = time.monotonic() + self._idle_s  # the same for every deferral: the deque stays sorted

    def murder_pending(self) -> None:
        """Called on every turn of the event loop: end a drain when it is done."""
        super().murder_pending()
        if self._drain_started is not None and self.alive:
            idle = self.nr_conns == 0 and not _backlog_waiting(self.sockets)
            if idle or time.monotonic() - self._drain_started > _drain_limit(self.cfg.graceful_timeout):
                self.alive = False  # gunicorn's own shutdown follows: nothing in flight, listener closed

    # -- shutdown --

    def handle_exit(self, sig: int, frame: Any) -> None:
        """SIGTERM: drain instead of stopping at once (the signal handler only queues the work)."""
        if self._drain_started is None and self.alive:
            self._drain_started = time.monotonic()
            self.method_queue.defer(self._begin_drain)

    def _begin_drain(self) -> None:
        # Every response from now on closes its connection, and idle kept-alive connections get a short
        # linger (a request already on its way on one is still answered), as gunicorn does when it stops.
        self.cfg.set("keepalive", 0)
        self._cap_keepalive(time.monotonic() + STOP_KEEPALIVE_LINGER)


class _Prebuffered:
    """Hands gunicorn's parser the bytes the worker collected, as the pieces it received them in.

    Putting them all in the parser's read-ahead buffer instead works, but its head parsing copies that whole
    buffer several times: milliseconds for a 2 MB body. Once they are used up, reads go to the socket.
    """

    def __init__(self, unreader: Any, chunks: list[bytes]) -> None:
        self._unreader = unreader
        self._chunks = chunks
        self._next = 0

    @classmethod
    def install(cls, unreader: Any, chunks: list[bytes]) -> _Prebuffered:
        unreader.__dict__.pop("chunk", None)
        unreader.chunk = prebuffered = cls(unreader, chunks)
        return prebuffered

    def spill(self) -> None:
        """Put what the parser has not taken into its read-ahead buffer, and read from the socket again."""
        if self._unreader.__dict__.get("chunk") is self:
            del self._unreader.chunk
        rest = self._chunks[self._next:]
        self._next = len(self._chunks)
        if rest:
            buffer = self._unreader.buf
            buffer.seek(0, io.SEEK_END)
            buffer.write(b"".join(rest))

    def __call__(self, size_hint: int | None = None) -> bytes:
        if self._next >= len(self._chunks):
            del self._unreader.chunk  # used up: the socket again (gunicorn's own method)
            return bytes(self._unreader.chunk(size_hint))
        self._next += 1
        return self._chunks[self._next - 1]


class PartialRequest:
    """The bytes of one request as they arrive, and whether they make a whole request yet.

    The head is parsed once, when its blank line has arrived; after that, a body of known length is
    complete when enough bytes have come (no rescanning, no joining of what a large body arrives in).
    """

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.chunks: list[bytes] = []
        self.size = 0
        self.sent_continue = False
        self._body_start: int | None = None
        self._length: int | None = None  # body length; None: ready once the head is there, or chunked
        self._chunked = False
        self._expect_continue = False
        self._ready = False

    def add(self, data: bytes) -> None:
        if data:
            self.chunks.append(data)
            self.size += len(data)

    def _head_window(self) -> bytes:
        """The first chunks, joined into one, up to a little more than the longest head allowed.

        Only those: a large body that came with its head stays in the pieces it arrived in.
        """
        count = total = 0
        while count < len(self.chunks) and total <= MAX_HEAD_BYTES + 4:
            total += len(self.chunks[count])
            count += 1
        if count > 1:
            self.chunks[:count] = [b"".join(self.chunks[:count])]
        return self.chunks[0] if self.chunks else b""

    def _joined(self) -> bytes:
        if len(self.chunks) > 1:
            self.chunks[:] = [b"".join(self.chunks)]
        return self.chunks[0] if self.chunks else b""

    def state(self) -> str:
        """``ready`` (a whole request, or one gunicorn's parser will refuse: 400, 413, 431, as it always
        did), ``continue`` (head complete with ``Expect: 100-continue``, body to come) or ``partial``."""
        if self._ready:
            return "ready"
        if self._body_start is None:
            data = self._head_window()
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self._ready = len(data) > MAX_HEAD_BYTES
                return "ready" if self._ready else "partial"
            self._body_start = end + 4
            if not self._parse_head(data[:end]):
                self._ready = True
                return "ready"
        body = self.size - self._body_start
        if self._chunked:
            complete = _chunked_body_complete(self._joined(), self._body_start)
        else:
            complete = self._length is None or body >= self._length
        if complete or body > MAX_BUFFERED_BODY_BYTES:
            self._ready = True
            return "ready"
        return "continue" if self._expect_continue else "partial"

    def _parse_head(self, head: bytes) -> bool:
        """Read the framing headers; False when waiting for a body is pointless (malformed, too large)."""
        for line in head.split(b"\r\n")[1:]:
            name, colon, value = line.partition(b":")
            if not colon:
                continue
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                if not value.isdigit() or (self._length is not None and int(value) != self._length):
                    return False
                self._length = int(value)
            elif name == b"transfer-encoding":
                self._chunked = True
            elif name == b"expect" and value == b"100-continue":
                self._expect_continue = True
        return self._chunked or self._length is None or self._length <= MAX_BUFFERED_BODY_BYTES


def request_state(data: bytes) -> str:
    """The :meth:`PartialRequest.state` of ``data`` (for tests and tools)."""
    partial = PartialRequest(deadline=0.0)
    partial.add(data)
    return partial.state()


def _drain_limit(graceful_timeout: float) -> float:
    # Half the graceful timeout at most: what is in flight when the drain gives up still has the rest.
    return min(5.0, graceful_timeout / 2)


def _backlog_waiting(listeners: Iterable[Any]) -> bool:
    """True when a listening socket has a connection the kernel accepted and nobody took yet."""
    try:
        readable, _, _ = select.select(list(listeners), [], [], 0)
    except (OSError, ValueError):
        return False
    return bool(readable)


def _chunked_body_complete(data: bytes | bytearray, position: int) -> bool:
    """True when the chunked body starting at ``position`` has its last chunk and trailer section (or is bad)."""
    while True:
        line_end = data.find(b"\r\n", position)
        if line_end < 0:
            return False
        size_text = bytes(data[position:line_end]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            return True  # malformed: the parser refuses it
        if size == 0:
            return data.find(b"\r\n\r\n", line_end) >= 0
        position = line_end + 2 + size + 2
        if position > len(data):
            return False


# --- logs: every line the server writes is JSON ----------------------------------------------------


class JsonGunicornLogger(glogging.Logger):  # type: ignore[misc]
    """gunicorn's logger with the service's JSON formatter (gunicorn's own lines are plain text)."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for handler in [*self.error_log.handlers, *self.access_log.handlers]:
            handler.setFormatter(JsonFormatter())
            handler.addFilter(RedactingFilter())


def configure_process_logging(level: str) -> None:
    """JSON for what other libraries, warnings and crashed threads would print as plain text."""
    from cds_service.logs import configure_logging

    configure_logging(level)
    root = logging.getLogger()
    if not any(getattr(handler, "_cds_handler", False) for handler in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        handler.addFilter(RedactingFilter())
        handler.setLevel(logging.WARNING)
        handler._cds_handler = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    logging.captureWarnings(True)
    threading.excepthook = _log_thread_exception


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    log.error("uncaught exception in thread %s", name,
              exc_info=(args.exc_type, args.exc_value, args.exc_traceback))  # type: ignore[arg-type]


# --- the Prometheus multi-process directory --------------------------------------------------------

METRICS_DIR_PREFIX: Final = "cds-service-metrics-"
_LOCK_NAME: Final = ".owner.lock"


@dataclass
class MetricsDirectory:
    """A private directory for ``PROMETHEUS_MULTIPROC_DIR``, held by a lock for as long as the server lives.

    The lock (``flock`` on a file inside) is inherited by the workers, so it is released only when
    the master and every worker are gone, however they ended: the next start removes a directory
    whose lock it can take, which cleans up after a master killed with SIGKILL.
    """

    path: Path
    _lock_file: io.TextIOWrapper = field(repr=False)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        self._lock_file.close()


def metrics_directory_candidates(data_dir: str) -> list[Path]:
    """Where metrics files may go, best first: memory filesystems, then the temp directory, last the data dir.

    A memory filesystem matters: prometheus_client writes its files through ``mmap``, and a write to a
    mapped page of a full disk is a SIGBUS that kills the worker mid-request.
    """
    candidates = [Path("/dev/shm"), Path(tempfile.gettempdir()), Path(data_dir)]
    unique: list[Path] = []
    for candidate in candidates:
        if candidate not in unique:
            unique.append(candidate)
    return unique


def create_metrics_directory(candidates: Iterable[Path],
                             on_problem: Callable[[Path, str], None] | None = None) -> MetricsDirectory | None:
    """Remove stale directories of dead servers and create this server's, in the first usable candidate."""
    for base in candidates:
        try:
            if not base.is_dir():
                raise OSError(errno.ENOENT, "no such directory")
            remove_stale_metrics_directories(base)
            path = Path(tempfile.mkdtemp(prefix=METRICS_DIR_PREFIX, dir=base))
            lock_file = (path / _LOCK_NAME).open("w")
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return MetricsDirectory(path, lock_file)
        except OSError as error:
            if on_problem is not None:
                on_problem(base, error.strerror or str(error))
    return None


def remove_stale_metrics_directories(base: Path) -> list[Path]:
    """Remove the metrics directories under ``base`` whose server is gone (their lock is free)."""
    removed: list[Path] = []
    for path in base.glob(f"{METRICS_DIR_PREFIX}*"):
        try:
            with (path / _LOCK_NAME).open("a") as lock_file:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        except BlockingIOError:
            continue  # a live server holds it
        except OSError:
            continue  # not ours to judge (another user's, or already gone)
    return removed


# --- the data directory ----------------------------------------------------------------------------


def data_directory_problem(data_dir: str, min_free_bytes: int = 1024 * 1024) -> str | None:
    """What is wrong with the data directory for writing, in words, or None when it is usable."""
    path = Path(data_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        return f"the data directory {path} cannot be created: {error.strerror}"
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        return f"the data directory {path} is not writable: {error.strerror}"
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return None
    if free < min_free_bytes:
        return f"the data directory {path} is full ({free} bytes free)"
    return None


# --- routing /metrics to its own port --------------------------------------------------------------


def split_metrics_port(app: Callable[..., Any], metrics_port: int) -> Callable[..., Any]:
    """WSGI wrapper: ``/metrics`` only on ``metrics_port``, and only ``/metrics`` there.

    The service port is the one the load balancer and the EHRs reach; the metrics port is for the
    in-cluster Prometheus only and is not part of the Service (see deploy/README.md).
    """
    from cds_service.errors import NotFound

    def not_found(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        import orjson

        body = orjson.dumps(NotFound(f"no such endpoint: {environ.get('PATH_INFO', '')}").to_operation_outcome())
        start_response("404 NOT FOUND", [("Content-Type", "application/fhir+json"),
                                          ("Content-Length", str(len(body))), ("Cache-Control", "no-store")])
        return [body]

    wanted = str(metrics_port)

    def route(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        on_metrics_port = environ.get("SERVER_PORT") == wanted
        if on_metrics_port != (environ.get("PATH_INFO") == "/metrics"):
            return not_found(environ, start_response)
        return app(environ, start_response)

    return route
