"""Run the real ``cds-service serve`` (gunicorn) for integration tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from support import free_port, wait_for_port


@dataclass
class RunningService:
    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    data_dir: Path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def cds_service_command() -> list[str]:
    """The installed console script next to this interpreter (as a user would run it)."""
    script = Path(sys.executable).with_name("cds-service")
    return [str(script)] if script.exists() else [sys.executable, "-m", "cds_service"]


@contextmanager
def running_service(env: Mapping[str, str] | None = None, workers: int = 2) -> Iterator[RunningService]:
    """Start ``cds-service serve`` on a free loopback port; stop it (and its workers) afterwards."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="cds-serve-") as tmp:
        data_dir = Path(tmp) / "data"
        log_path = Path(tmp) / "server.log"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
        full_env.update({"CDS_DATA_DIR": str(data_dir)})
        full_env.update(env or {})
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [*cds_service_command(), "serve", "--port", str(port), "--workers", str(workers)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
                start_new_session=True,
            )
            try:
                wait_for_port(port, timeout=30)
                yield RunningService(f"http://127.0.0.1:{port}", process, log_path, data_dir)
            finally:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGTERM)
                    try:
                        process.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        os.killpg(process.pid, signal.SIGKILL)
                        process.wait()


def worker_pids(master_pid: int) -> list[int]:
    """The gunicorn worker processes of a master (children in /proc)."""
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children")
    return [int(pid) for pid in children.read_text().split()] if children.exists() else []
