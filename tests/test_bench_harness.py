"""The benchmark harness (bench/run.py, bench/loadgen.py): budget arithmetic and a real load round."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from support import free_port, load_bench_module, wait_for_port

REPO = Path(__file__).resolve().parent.parent


run = load_bench_module("run")
# run.py puts bench/ on sys.path and imports its siblings by their plain names; use those modules, so that
# the load generator's spawned client processes can import what they run.
loadgen = sys.modules["loadgen"]
generate = sys.modules["generate"]


def _figures(
    *,
    typical_p50: float = 4.0,
    typical_10_p50: float = 8.0,
    typical_p99: float = 30.0,
    service_rps: float = 500.0,
    ceiling_rps: float = 1000.0,
    medium_p50: float = 7.0,
    large_p50: float = 60.0,
) -> list[Any]:
    def row(target: str, size: str, resources: int, clients: int, rps: float, p50: float, p99: float) -> Any:
        return run.CellFigures(
            target=target,
            size=size,
            resources=resources,
            clients=clients,
            requests=100,
            errors=0,
            throughput_rps=rps,
            p50_ms=p50,
            p99_ms=p99,
            mean_ms=p50,
            best_round_p50_ms=p50,
            cpu_ms_per_request=p50,  # the linearity figure reads CPU per request; here it equals the p50
        )

    return [
        row("service", "typical", 50, 1, 200.0, typical_p50, typical_p50 * 2),
        row("ceiling", "typical", 50, 1, 900.0, 1.0, 2.0),
        row("service", "typical", 50, 10, service_rps, typical_10_p50, typical_p99),
        row("ceiling", "typical", 50, 10, ceiling_rps, 3.0, 9.0),
        row("service", "medium", 200, 1, 100.0, medium_p50, medium_p50 * 2),
        row("ceiling", "medium", 200, 1, 500.0, 1.5, 3.0),
        row("service", "large", 2000, 1, 15.0, large_p50, large_p50 * 2),
        row("ceiling", "large", 2000, 1, 80.0, 10.0, 20.0),
    ]


def _failed(checks: list[Any]) -> set[str]:
    return {check.name for check in checks if not check.passed}


def test_cell_figures_merge_rounds_and_keep_the_best_round_p50() -> None:
    from array import array

    def round_of(latencies_ms: list[float], completed: int) -> Any:
        return loadgen.RoundResult(
            latencies_ns=array("q", [int(ms * 1e6) for ms in latencies_ms]),
            completed_in_window=completed,
            window_seconds=1.0,
        )

    figures = run.summarise("service", "typical", 50, 1, [round_of([4, 5, 6], 3), round_of([2, 3, 30], 3)], 0.012)
    assert figures.requests == 6 and figures.throughput_rps == 3.0
    assert figures.cpu_ms_per_request == pytest.approx(2.0)  # 12 ms of server CPU over six requests
    assert figures.p50_ms == 4.0  # nearest rank over all six: 2 3 4 5 6 30
    assert figures.best_round_p50_ms == 3.0
    assert figures.p99_ms == 30.0


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))
    assert run.percentile(values, 0.50) == 50
    assert run.percentile(values, 0.99) == 99
    assert run.percentile([7], 0.99) == 7


def test_short_mode_relaxes_every_budget_by_half_and_linearity_to_a_quadratic_guard() -> None:
    full, short = run.Budgets(), run.Budgets().relaxed()
    assert (short.typical_p50_ms, short.typical_p99_ms, short.large_p50_ms) == (20, 100, 300)
    assert short.throughput_ratio == pytest.approx(0.20)
    assert short.linearity == 4.0  # quadratic cost reads ~10 at ten times the resources
    assert (full.typical_p50_ms, full.typical_p99_ms, full.throughput_ratio, full.large_p50_ms, full.linearity) == (
        10,
        50,
        0.40,
        150,
        1.5,
    )


def test_figures_within_budget_pass() -> None:
    # own time (service - ceiling): typical 3, medium 5.5, large 50 ms;
    # per resource: medium (5.5 - 3) / 150 = 16.7 us, large (50 - 3) / 1950 = 24.1 us; ratio 1.45
    assert _failed(run.check_budgets(_figures(), run.Budgets())) == set()


@pytest.mark.parametrize(
    ("changes", "failing"),
    [
        ({"typical_p50": 12.0, "medium_p50": 15.0, "large_p50": 68.0}, "typical p50, 1 client (ms)"),
        ({"typical_10_p50": 11.0}, "typical p50, 10 clients (ms)"),
        ({"typical_p99": 51.0}, "typical p99, 10 clients (ms)"),
        ({"service_rps": 390.0}, "throughput / ceiling, typical, 10 clients"),
        ({"large_p50": 160.0, "medium_p50": 13.0}, "large p50, 1 client (ms)"),
        ({"large_p50": 80.0}, "time per resource 2,000 / 200"),  # 34 us vs 17 us per resource: super-linear
    ],
)
def test_each_budget_fails_on_its_own(changes: dict[str, float], failing: str) -> None:
    assert _failed(run.check_budgets(_figures(**changes), run.Budgets())) == {failing}


@pytest.mark.parametrize(
    ("medium_p50", "large_p50", "passes"),
    [
        (2.9, 5.0, True),  # own cost per resource: -0.7 us at 200 (noise), 1.0 us at 2,000: nothing super-linear
        (3.15, 6.9, True),  # 1.0 us at 200 reads as 2 us; 2.0 us at 2,000: ratio 1.0 (2.0 without the floor)
        (3.15, 12.0, False),  # 1.0 us at 200 reads as 2 us; 4.6 us at 2,000: ratio 2.3, super-linear
    ],
)
def test_a_per_resource_cost_below_the_resolution_counts_as_the_resolution(
    medium_p50: float, large_p50: float, passes: bool
) -> None:
    # The ceiling's own p50s (1.0, 1.5, 10 ms) are subtracted first: own(typical) = 4 - 1 = 3 ms.
    figures = _figures(medium_p50=medium_p50 + 1.5, large_p50=large_p50 + 10.0)
    failed = _failed(run.check_budgets(figures, run.Budgets()))
    assert ("time per resource 2,000 / 200" not in failed) is passes


def test_linearity_reads_cpu_per_request_not_latency() -> None:
    def scaled(figures: list[Any], **factors: float) -> list[Any]:
        return [
            dataclasses.replace(row, **{name: getattr(row, name) * factor for name, factor in factors.items()})
            if (row.target, row.size) == ("service", "large")
            else row
            for row in figures
        ]

    linearity = "time per resource 2,000 / 200"
    # A large request that waited three times longer for a core, at the same CPU cost: still linear.
    assert linearity not in _failed(run.check_budgets(scaled(_figures(), p50_ms=3, best_round_p50_ms=3), run.Budgets()))
    # Three times the CPU for the same latency: super-linear.
    assert linearity in _failed(run.check_budgets(scaled(_figures(), cpu_ms_per_request=3), run.Budgets()))


def test_server_cpu_is_read_from_proc() -> None:
    import os
    import time

    before = run.process_cpu_seconds(os.getpid())
    burn_until = time.process_time() + 0.05  # 50 ms of CPU: several clock ticks
    while time.process_time() < burn_until:
        pass
    assert run.process_cpu_seconds(os.getpid()) > before > 0
    assert run.process_cpu_seconds(2**22 + 12345) == 0.0  # no such process


def test_short_budgets_tolerate_what_full_budgets_refuse() -> None:
    figures = _figures(typical_p99=80.0, service_rps=300.0)
    assert _failed(run.check_budgets(figures, run.Budgets())) == {
        "typical p99, 10 clients (ms)",
        "throughput / ceiling, typical, 10 clients",
    }
    assert _failed(run.check_budgets(figures, run.Budgets().relaxed())) == set()


@contextmanager
def ceiling_server(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """The benchmark's ceiling app under real gunicorn (one gthread worker) on a free port: (port, process)."""
    port = free_port()
    settings = run.ServerSettings(workers=1, worker_class="gthread", threads=2, keepalive=5)
    command = [*run.gunicorn_base(settings, port), "--pythonpath", str(REPO / "bench"), "ceiling_app:create_app()"]
    server = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield port, server
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_a_round_against_a_real_gunicorn_ceiling(tmp_path: Path) -> None:
    with ceiling_server(tmp_path) as (port, server):
        bodies = [generate.encode(generate.build_request(50, variant=variant)) for variant in range(2)]
        payload = loadgen.Payload.from_bodies("/cds-services/lumbar-imaging-order-select", bodies, 50)
        with loadgen.LoadGenerator(2) as generator:
            # Long enough that a loaded machine's slow first (warm-up) request still leaves a window: the test checks
            # the harness works, not how fast anything is.
            result = generator.run_round(port, payload, 2, 2.0)
            assert result.errors == 0, result.first_error
            assert result.completed_in_window > 0
            assert len(result.latencies_ns) >= result.completed_in_window
            assert min(result.latencies_ns) > 0
            # A second round on the same keep-alive connections works as well.
            again = generator.run_round(port, payload, 1, 1.0)
            assert again.errors == 0 and again.completed_in_window > 0
        workers = [pid for pid, _ in run.descendants(server.pid)]
        assert workers and all((run.vm_hwm_kib(pid) or 0) > 1024 for pid in workers)


def test_a_round_counts_http_errors_instead_of_latencies(tmp_path: Path) -> None:
    with ceiling_server(tmp_path) as (port, _server):
        body = generate.encode(generate.build_request(50))
        payload = loadgen.Payload.from_bodies("/no-such-path", [body], 50)
        with loadgen.LoadGenerator(1) as generator:
            result = generator.run_round(port, payload, 1, 0.2)
        assert result.errors > 0 and result.first_error == "HTTP 404"
        assert result.completed_in_window == 0
