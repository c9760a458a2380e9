"""The ``cds-service`` command: ``serve``, ``evaluate`` and ``check-config`` (PRODUCT.md §2.2)."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cds_service.errors import CdsError, ConfigurationError
from cds_service.urls import is_loopback_host

log = logging.getLogger("cds_service.cli")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cds-service", description="CDS Hooks service for lumbar imaging orders")
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

    evaluate = commands.add_parser("evaluate", help="evaluate one CDS Hooks request offline and print the response")
    evaluate.add_argument("request", help="request JSON file, or - for standard input")
    evaluate.add_argument("--now", help="evaluation time, ISO 8601 (default: the current time)")
    evaluate.add_argument("--service", help="service id (default: the service answering the request's hook)")

    commands.add_parser("check-config", help="validate definitions, knowledge base and settings")

    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args.host, args.port, args.workers, args.threads, args.metrics_port)
        if args.command == "evaluate":
            return _evaluate(args.request, args.now, args.service)
        return _check_config()
    except ConfigurationError as exc:
        print(f"cds-service: configuration error: {exc}", file=sys.stderr)
        return 2


def gunicorn_options(host: str, port: int, workers: int) -> dict[str, Any]:
    """The gunicorn settings of ``serve`` (bench/run.py starts its ceiling app with the same ones)."""
    from cds_service.serving import gunicorn_options as options

    return options(host, port, workers)


def _serve(host: str, port: int, workers: int, threads: int, metrics_port: int | None) -> int:
    from cds_service.settings import settings_from_env

    settings = settings_from_env()
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
    create_app(settings)  # fail fast in the master on any configuration problem, before forking workers
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
            app = create_app(settings)
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


def _check_config() -> int:
    from cds_service.clinical import ClinicalEngine
    from cds_service.knowledge import check_knowledge, load_knowledge
    from cds_service.registry import load_registry
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
        ClinicalEngine.from_config(definition.config)
    print("clinical engines: ok")
    if settings.trusted_clients_path:
        from cds_service.security import load_trusted_clients

        clients = load_trusted_clients(settings.trusted_clients_path)
        print(f"trusted clients: ok ({len(clients)})")
    else:
        print("trusted clients: none (open mode; serve binds only to loopback unless CDS_ALLOW_OPEN=1)")
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
