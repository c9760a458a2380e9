"""A private PostgreSQL server that a test can stop and start: initdb in a temporary directory, loopback, a free port.

The shared test database (127.0.0.1:5432) cannot be stopped by one test while others use it, so an
outage test runs its own. PostgreSQL refuses to run as root: when the tests run as root, the server
runs as the ``postgres`` system user (its directory is handed to that user).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from support import free_port, services_required


def postgres_bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin directory (Debian layout, or initdb on the PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PrivatePostgres:
    def __init__(self, bin_dir: Path, directory: Path, run_as: pwd.struct_passwd | None) -> None:
        self.bin_dir = bin_dir
        self.data = directory / "data"
        self.socket_dir = directory / "socket"
        self.log = directory / "postgres.log"
        self.port = free_port()
        self.run_as = run_as
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60) -> None:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self.run_as is not None:
            command = ["setpriv", f"--reuid={self.run_as.pw_uid}", f"--regid={self.run_as.pw_gid}", "--clear-groups",
                       *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {result.stdout}{result.stderr}")

    def init(self) -> None:
        self._run("initdb", "--pgdata", str(self.data), "--username", "postgres", "--auth", "trust",
                  "--no-sync", "--encoding", "UTF8", "--no-instructions")

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c full_page_writes=off -c max_connections=40")
        self._run("pg_ctl", "--pgdata", str(self.data), "--log", str(self.log), "--options", options, "--wait",
                  "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "--pgdata", str(self.data), "--mode", mode, "--wait", "stop")


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A running private PostgreSQL (stopped and removed afterwards); skipped (failed in CI) without binaries."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        message = "PostgreSQL server binaries (initdb, pg_ctl) are not installed"
        if services_required():
            pytest.fail(message + " (required in CI)")
        pytest.skip(message)
    run_as = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
    with tempfile.TemporaryDirectory(prefix="cds-pg-") as tmp:
        directory = Path(tmp)
        (directory / "socket").mkdir()
        if run_as is not None:
            for path in (directory, directory / "socket"):
                os.chown(path, run_as.pw_uid, run_as.pw_gid)
        server = PrivatePostgres(bin_dir, directory, run_as)
        server.init()
        server.start()
        try:
            yield server
        finally:
            try:
                server.stop("immediate")
            except RuntimeError:
                pass  # already stopped
