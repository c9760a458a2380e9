"""The ``cds-service`` command: ``serve``, ``demo``, ``evaluate`` and ``check-config``."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cds_service import __version__
from cds_service.errors import CdsError, ConfigurationError
from cds_service.urls import is_loopback_host

log = logging.getLogger("cds_service.cli")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cds-service", description="CDS Hooks service for lumbar imaging orders")
    parser.add_argument("--version", action="version", version=f"cds-service {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the production server (gunicorn)")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    serve.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    serve.add_argument("--threads", type=int, default=4, help="threads per worker (default 4)")
    serve.add_argument(
        "--metrics-port",
        type=int,
        help="serve GET /metrics on this port only (and nothing else there); default: on --port",
    )

    demo = commands.add_parser(
        "demo", help="run the service with the order-entry demo page at http://127.0.0.1:8080/demo/"
    )
    demo.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    demo.add_argument("--port", type=int, default=8080, help="port (default 8080)")

    evaluate = commands.add_parser("evaluate", help="evaluate one CDS Hooks request offline and print the response")
    evaluate.add_argument("request", help="request JSON file, or - for standard input")
    evaluate.add_argument(
        "--now", help="evaluation time, ISO 8601 (default: the current time; the HTTP service always uses the clock)"
    )
    evaluate.add_argument("--service", help="service id (default: the service answering the request's hook)")

    check = commands.add_parser("check-config", help="validate definitions, knowledge base and settings")
    check.add_argument(
        "--connect",
        action="store_true",
        help="also reach the database, Redis and every trusted client's jwks_url, and say which one failed",
    )

    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args.host, args.port, args.workers, args.threads, args.metrics_port)
        if args.command == "demo":
            return _serve(args.host, args.port, workers=1, threads=8, metrics_port=None, demo=True)
        if args.command == "evaluate":
            return _evaluate(args.request, args.now, args.service)
        return _check_config(connect=args.connect)
    except ConfigurationError as exc:
        print(f"cds-service: configuration error: {exc}", file=sys.stderr)
        return 2


def gunicorn_options(host: str, port: int, workers: int) -> dict[str, Any]:
    """The gunicorn settings of ``serve`` (bench/run.py starts its ceiling app with the same ones)."""
    from cds_service.serving import gunicorn_options as options

    return options(host, port, workers)


def _serve(host: str, port: int, workers: int, threads: int, metrics_port: int | None, demo: bool = False) -> int:
    from cds_service.settings import settings_from_env

    settings = settings_from_env()
    if demo and not settings.open_mode:
        # The page is a browser client without a signing key: it could not call an authenticated service.
        print(
            "cds-service: demo ignores CDS_TRUSTED_CLIENTS (the page calls the service without a JWT)", file=sys.stderr
        )
        settings = settings.with_overrides({"trusted_clients_path": None})
    if settings.open_mode and not is_loopback_host(host) and not settings.allow_open:
        print(
            f"cds-service: refusing to bind {host}: no trusted clients are configured (CDS_TRUSTED_CLIENTS), so "
            "anyone who can reach the port could send patient data and make the service call FHIR servers. "
            "Configure CDS_TRUSTED_CLIENTS, bind 127.0.0.1, or set CDS_ALLOW_OPEN=1 to accept this.",
            file=sys.stderr,
        )
        return 2
    if metrics_port is not None and metrics_port == port:
        print("cds-service: --metrics-port must differ from --port", file=sys.stderr)
        return 2

    # Logging first (JSON from the first line), but nothing that imports prometheus_client yet: the
    # multi-process mode must be chosen before it is imported anywhere.
    from cds_service.serving import (
        configure_process_logging,
        create_metrics_directory,
        data_directory_problem,
        gunicorn_options,
        metrics_directory_candidates,
        split_metrics_port,
    )

    configure_process_logging(settings.log_level)
    problem = data_directory_problem(settings.data_dir)
    if problem is not None:
        # Cards do not need the data directory; feedback (SQLite store) answers 503 until it is fixed.
        log.error(
            "%s; the service starts, cards are answered, and feedback stored in it answers 503 until it is fixed",
            problem,
            extra={"fields": {"event": "startup-problem", "dataDir": settings.data_dir}},
        )

    def metrics_dir_problem(base: Path, reason: str) -> None:
        log.warning("metrics files cannot go in %s: %s", base, reason,
                    extra={"fields": {"event": "startup-warning"}})

    metrics_dir = create_metrics_directory(metrics_directory_candidates(settings.data_dir), metrics_dir_problem)
    if metrics_dir is not None:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir.path)
    else:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        log.error("no writable directory for metrics files: /metrics shows one worker's counters only",
                  extra={"fields": {"event": "startup-problem"}})

    from gunicorn.app.base import BaseApplication

    from cds_service import metrics
    from cds_service.app import create_app

    metrics.set_server_pid(os.getpid())
    create_app(settings, demo=demo)  # fail fast in the master on any configuration problem, before forking workers
    if not settings.open_mode and settings.redis_url is None and workers > 1:
        # Each worker process keeps its own jti cache: a replay that lands on another worker would pass.
        log.warning(
            "trusted clients with %s workers and no CDS_REDIS_URL: JWT replay protection is per worker process; "
            "set CDS_REDIS_URL (or run one worker) for full replay protection",
            workers,
            extra={"fields": {"event": "startup-warning"}},
        )
    mode = "authenticated (trusted clients)" if not settings.open_mode else "OPEN (no client authentication)"
    log.info(
        "starting on %s:%s with %s workers; mode: %s",
        host,
        port,
        workers,
        mode,
        extra={
            "fields": {
                "event": "startup",
                "mode": "trusted" if not settings.open_mode else "open",
                "metricsPort": metrics_port,
                "metricsDir": str(metrics_dir.path) if metrics_dir else None,
            }
        },
    )
    if demo:
        shown_host = f"[{host}]" if ":" in host else host
        print(f"cds-service demo: open http://{shown_host}:{port}/demo/ (Ctrl-C stops)", file=sys.stderr, flush=True)

    shm = Path("/dev/shm")

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            options = gunicorn_options(host, port, workers, threads, metrics_port)
            options.update(
                {
                    "child_exit": _child_exit,
                    "post_fork": _post_fork,
                    # gunicorn's worker heartbeat files: on the memory filesystem too, when there is one.
                    "worker_tmp_dir": str(shm) if metrics_dir and metrics_dir.path.parent == shm else None,
                }
            )
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            app = create_app(settings, demo=demo)
            tune_gc_for_serving()
            return split_metrics_port(app, metrics_port) if metrics_port is not None else app

    def _post_fork(server: Any, worker: Any) -> None:
        configure_process_logging(settings.log_level)

    master_pid = os.getpid()
    try:
        Server().run()
    finally:
        # Workers are forked inside run() and leave it by SystemExit: only the master removes the directory.
        if metrics_dir is not None and os.getpid() == master_pid:
            metrics_dir.remove()
    return 0


def tune_gc_for_serving() -> None:
    """Call once the app is built: what was built at start-up is frozen, and the collector runs less often.

    Everything built at start-up (knowledge, models, schemas) lives as long as the worker: it is moved
    out of the collector's sight. Each request allocates many short-lived objects (a 2,000-resource
    body alone is some 100,000 dicts and lists), and with the default thresholds the collector would
    run dozens of times per large request, re-scanning what the request still holds.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def _child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def _evaluate(path: str, now_text: str | None, service_id: str | None) -> int:
    from cds_service.offline import evaluate_request
    from cds_service.protocol.validation import decode_json
    from cds_service.settings import DEFAULT_MAX_JSON_DEPTH

    try:
        raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        print(f"cds-service: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return 2
    now = datetime.now(UTC)
    if now_text:
        try:
            now = datetime.fromisoformat(now_text.replace("Z", "+00:00"))
        except ValueError:
            print(f"cds-service: --now {now_text!r} is not an ISO 8601 date-time", file=sys.stderr)
            return 2
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
    try:
        body = decode_json(raw, max_depth=DEFAULT_MAX_JSON_DEPTH)
        response = evaluate_request(body, now=now, service_id=service_id)
    except CdsError as exc:
        print(json.dumps(exc.to_operation_outcome(), indent=2))
        print(f"cds-service: {exc.status}: {exc.message}", file=sys.stderr)
        return 1
    print(json.dumps(response, indent=2, ensure_ascii=False))
    return 0


def _check_config(*, connect: bool = False) -> int:
    from cds_service.knowledge import check_knowledge, load_knowledge
    from cds_service.registry import load_registry
    from cds_service.service import build_engine
    from cds_service.settings import settings_from_env

    problems: list[str] = []
    settings = settings_from_env()
    print("settings: ok")
    registry = load_registry(settings.hooks_dir)
    print(f"service definitions: ok ({', '.join(d.id for d in registry)})")
    knowledge = load_knowledge()
    problems.extend(check_knowledge())
    print(f"knowledge base: version {knowledge.version}")
    for definition in registry:
        build_engine(definition, settings.hooks_dir)  # a bad _config names its definition file
    print("clinical engines: ok")
    clients: tuple[Any, ...] = ()
    if settings.trusted_clients_path:
        from cds_service.security import load_trusted_clients

        clients = load_trusted_clients(settings.trusted_clients_path)
        print(f"trusted clients: ok ({len(clients)})")
        problems.extend(_fhir_server_problems(settings.trusted_clients_path))
    else:
        print("trusted clients: none (open mode; serve binds only to loopback unless CDS_ALLOW_OPEN=1)")
    if connect:
        problems.extend(_connection_problems(settings, clients))
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    return 1 if problems else 0


def _fhir_server_problems(trusted_clients_path: str) -> list[str]:
    """A trusted client without "fhir_servers" gets no patient data the EHR did not prefetch: say so.

    The key missing is reported as a problem (most likely forgotten); an explicit empty list is a choice (a client
    that always sends complete prefetch) and gets a note only.
    """
    try:
        entries = json.loads(Path(trusted_clients_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []  # load_trusted_clients has already accepted the file; nothing more to say
    problems = []
    for index, entry in enumerate(entries if isinstance(entries, list) else []):
        if not isinstance(entry, dict):
            continue
        where = f"{trusted_clients_path}: client {entry.get('iss', f'#{index}')}"
        if "fhir_servers" not in entry:
            problems.append(
                f"{where}: no \"fhir_servers\": the service will call no FHIR server for this client, so data its "
                'requests do not prefetch is never obtained (list its FHIR base URLs, or set "fhir_servers": [] if '
                "it always sends complete prefetch)"
            )
        elif entry["fhir_servers"] == []:
            print(f"note: {where}: \"fhir_servers\" is empty: data it does not prefetch is never fetched")
    return problems


def _connection_problems(settings: Any, clients: tuple[Any, ...]) -> list[str]:
    """Reach the database, Redis and every jwks_url; one line each, and a problem naming each one that failed."""
    from functools import partial

    checks: list[tuple[str, Callable[[], str] | None]] = [
        (_database_label(settings.database_url, settings.data_dir), partial(_reach_database, settings))
    ]
    if settings.redis_url:
        checks.append((f"Redis {_without_password(settings.redis_url)}", partial(_reach_redis, settings.redis_url)))
    else:
        checks.append(("Redis: not configured (JWT replay cache in-process)", None))
    for client in clients:
        if client.jwks_url:
            label = f"jwks_url {client.jwks_url} (trusted client {client.iss})"
            checks.append((label, partial(_reach_jwks, client.jwks_url)))
    problems = []
    for label, check in checks:
        if check is None:
            print(f"connect: {label}")
            continue
        try:
            detail = check()
        except Exception as error:  # noqa: BLE001 - any failure is this target's problem, reported by name
            reason = _short(str(error)) or type(error).__name__
            print(f"connect: {label}: FAILED: {reason}")
            problems.append(f"cannot reach {label}: {reason}")
        else:
            print(f"connect: {label}: ok{f' ({detail})' if detail else ''}")
    return problems


def _database_label(database_url: str | None, data_dir: str) -> str:
    if not database_url:
        return f"database (SQLite in {data_dir})"
    return f"database {_without_password(database_url)}"


def _reach_database(settings: Any) -> str:
    from cds_service.store import open_store

    store = open_store(settings.database_url, settings.data_dir)
    try:
        if store.ping():
            return ""
    finally:
        store.close()
    url = settings.database_url or ""
    if url.startswith(("postgresql:", "postgres:")):
        # ping() says only no; a direct connection says why (refused, unknown database, authentication ...).
        import psycopg

        with psycopg.connect(url, connect_timeout=5) as connection:
            connection.execute("SELECT 1")
    raise RuntimeError("the database did not answer a query")


def _reach_redis(redis_url: str) -> str:
    import redis

    client = redis.Redis.from_url(redis_url, socket_connect_timeout=5, socket_timeout=5)
    try:
        client.ping()
    finally:
        client.close()
    return ""


def _reach_jwks(url: str) -> str:
    import requests

    from cds_service.security.keys import parse_jwks

    # As the service fetches it: no redirect (the configured URL is the only source of keys), bounded size.
    response = requests.get(url, timeout=5, allow_redirects=False, headers={"Accept": "application/json"})
    if response.status_code != 200:
        raise RuntimeError(f"HTTP {response.status_code}")
    if len(response.content) > 1024 * 1024:
        raise RuntimeError("the JWK Set is larger than 1 MiB")
    try:
        document = response.json()
    except ValueError:
        raise RuntimeError("the answer is not JSON") from None
    keys = parse_jwks(document, source=url)
    return f"{len(keys)} key{'s' if len(keys) != 1 else ''}"


def _without_password(url: str) -> str:
    """A connection URL as it may be printed: the password replaced."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _short(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= 300 else line[:297] + "..."


if __name__ == "__main__":
    sys.exit(main())
