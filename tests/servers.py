"""Run the real ``cds-service serve`` (gunicorn) for integration tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from support import free_port, wait_for_port


@dataclass
class RunningService:
    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    data_dir: Path
    port: int

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_records(self) -> list[dict[str, Any]]:
        """Every line the server wrote, parsed; fails the test on a line that is not a JSON object."""
        records = []
        for number, line in enumerate(self.log_text().splitlines(), 1):
            try:
                record = json.loads(line)
            except ValueError:
                raise AssertionError(f"log line {number} is not JSON: {line!r}") from None
            assert isinstance(record, dict), line
            records.append(record)
        return records


def cds_service_command() -> list[str]:
    """The installed console script next to this interpreter (as a user would run it)."""
    script = Path(sys.executable).with_name("cds-service")
    return [str(script)] if script.exists() else [sys.executable, "-m", "cds_service"]


@contextmanager
def running_service(
    env: Mapping[str, str] | None = None,
    workers: int = 2,
    extra_args: Sequence[str] = (),
    data_dir: Path | None = None,
) -> Iterator[RunningService]:
    """Start ``cds-service serve`` on a free loopback port; stop it (and its workers) afterwards.

    ``data_dir``: the service's CDS_DATA_DIR (default: a fresh temporary directory). Waits until the
    service answers GET /healthz, so that every worker has its application loaded.
    """
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="cds-serve-") as tmp:
        data_dir = data_dir or Path(tmp) / "data"
        log_path = Path(tmp) / "server.log"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
        full_env.update({"CDS_DATA_DIR": str(data_dir)})
        full_env.update(env or {})
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [*cds_service_command(), "serve", "--port", str(port), "--workers", str(workers), *extra_args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
                start_new_session=True,
            )
            try:
                wait_for_port(port, timeout=30)
                service = RunningService(f"http://127.0.0.1:{port}", process, log_path, data_dir, port)
                wait_until_healthy(service)
                yield service
            finally:
                stop_process_group(process)


def stop_process_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM a server started in its own session (SIGKILL after 15 s); never let one of its workers outlive it."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    else:
        # A killed master leaves workers behind for a moment: they notice and exit, but never let one outlive the test.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def wait_until_healthy(service: RunningService, timeout: float = 30.0) -> None:
    """Wait until GET /healthz answers 200 (a worker has loaded the application)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise AssertionError(f"cds-service exited with {service.process.returncode}:\n{service.log_text()}")
        try:
            if requests.get(f"{service.base_url}/healthz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"cds-service not healthy after {timeout} s:\n{service.log_text()}")


def worker_pids(master_pid: int) -> list[int]:
    """The gunicorn worker processes of a master (children in /proc)."""
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children")
    try:
        return [int(pid) for pid in children.read_text().split()]
    except OSError:  # the master is gone
        return []


def wait_for_workers(service: RunningService, count: int, exclude: Sequence[int] = (),
                     timeout: float = 30.0) -> list[int]:
    """Wait until the master has ``count`` workers, none of them in ``exclude``, each answering."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = worker_pids(service.process.pid)
        if len(pids) == count and not set(pids) & set(exclude):
            wait_until_healthy(service)
            return pids
        time.sleep(0.05)
    raise TimeoutError(f"the master did not get {count} new workers within {timeout} s")


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
