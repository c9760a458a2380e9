"""Profile the service's request path in process with pyinstrument (no HTTP server, no load generator).

    python bench/profile_service.py                    # the large request, 50 times, through the Flask app
    python bench/profile_service.py --size typical -n 500
    python bench/profile_service.py --engine-only      # ClinicalEngine.evaluate alone (record already resolved)
    python bench/profile_service.py --html profile.html

The app is built once with ``cds_service.app.create_app`` (SQLite store in a temp directory), warmed up
with one request, then the request is posted ``-n`` times through ``app.test_client()``. Prints the
mean time per request, a per-stage split timed without the profiler (decode, schema, prefetch -> record,
engine, serialisation) and pyinstrument's call tree.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(1, str(BENCH_DIR.parent))

import generate  # noqa: E402

SERVICE_PATH = f"/cds-services/{generate.SERVICE_ID}"


def _engine_only(body: dict[str, Any], count: int, profiler: Any) -> float:
    """Time ``ClinicalEngine.evaluate`` alone, on a record resolved once; mean ms per call."""
    from cds_service.cli import tune_gc_for_serving
    from cds_service.clinical import ClinicalEngine
    from cds_service.data_source import FhirDataSource
    from cds_service.protocol.request import hook_request_from_json
    from cds_service.registry import load_registry

    definition = next(d for d in load_registry(None) if d.id == generate.SERVICE_ID)
    engine = ClinicalEngine.from_config(definition.config)
    request = hook_request_from_json(definition.id, body)
    record = FhirDataSource(total_timeout=2.5).resolve(definition.prefetch, request, ())
    now = datetime.now(UTC)
    engine.evaluate(request, record, now=now)
    tune_gc_for_serving()
    profiler.start()
    started = time.perf_counter()
    for _ in range(count):
        engine.evaluate(request, record, now=now)
    elapsed = time.perf_counter() - started
    profiler.stop()
    return elapsed * 1000 / count


def _through_app(raw: bytes, count: int, profiler: Any, scratch: Path) -> float:
    """Post the request through the Flask app ``count`` times; mean ms per request."""
    from cds_service.app import create_app
    from cds_service.cli import tune_gc_for_serving
    from cds_service.settings import Settings

    settings = Settings(data_dir=str(scratch), database_url=f"sqlite:///{scratch / 'store.sqlite3'}")
    app = create_app(settings)
    tune_gc_for_serving()  # as in a served worker: the figures would otherwise include collections it does not run
    client = app.test_client()
    headers = {"Content-Type": "application/json"}
    bodies = [raw.replace(generate.HOOK_INSTANCE_PLACEHOLDER.encode(),
                          f"00000000-0000-4000-8000-{index:012d}".encode()) for index in range(2 * count + 1)]
    warm = client.post(SERVICE_PATH, data=bodies[0], headers=headers)
    if warm.status_code != 200:
        raise SystemExit(f"the service answered {warm.status_code}: {warm.get_data(as_text=True)[:2000]}")
    cards = warm.get_json()["cards"]
    print(f"service answer: {len(cards)} card(s) {[card.get('summary') for card in cards]}")
    started = time.perf_counter()
    for body in bodies[1:count + 1]:
        client.post(SERVICE_PATH, data=body, headers=headers)
    print(f"POST through app.test_client(), without the profiler: mean "
          f"{(time.perf_counter() - started) * 1000 / count:.2f} ms per call")
    profiler.start()
    started = time.perf_counter()
    for body in bodies[count + 1:]:
        client.post(SERVICE_PATH, data=body, headers=headers)
    elapsed = time.perf_counter() - started
    profiler.stop()
    return elapsed * 1000 / count


def stage_split(raw: bytes, count: int) -> dict[str, float]:
    """Mean ms per stage of the request path, timed without the profiler (each stage run ``count`` times)."""
    from cds_service.clinical import ClinicalEngine
    from cds_service.data_source import FhirDataSource
    from cds_service.protocol.request import hook_request_from_json
    from cds_service.protocol.response import SystemActionsLocation, response_to_json
    from cds_service.protocol.validation import decode_json, validate_hook_request
    from cds_service.registry import load_registry

    definition = next(d for d in load_registry(None) if d.id == generate.SERVICE_ID)
    engine = ClinicalEngine.from_config(definition.config)
    data_source = FhirDataSource(total_timeout=2.5)
    now = datetime.now(UTC)
    body = decode_json(raw, max_depth=64)
    request = hook_request_from_json(definition.id, body)
    record = data_source.resolve(definition.prefetch, request, ())
    evaluation = engine.evaluate(request, record, now=now)
    stages: dict[str, Callable[[], object]] = {
        "decode_json (orjson + depth check)": lambda: decode_json(raw, max_depth=64),
        "validate_hook_request (JSON Schema)": lambda: validate_hook_request(
            body, service_id=definition.id, expected_hook=definition.hook),
        "FhirDataSource.resolve (prefetch -> record)": lambda: data_source.resolve(definition.prefetch, request, ()),
        "ClinicalEngine.evaluate": lambda: engine.evaluate(request, record, now=now),
        "response_to_json": lambda: response_to_json(evaluation.response, SystemActionsLocation.BOTH),
    }
    split: dict[str, float] = {}
    for name, stage in stages.items():
        stage()
        started = time.perf_counter()
        for _ in range(count):
            stage()
        split[name] = (time.perf_counter() - started) * 1000 / count
    return split


def main(argv: list[str] | None = None) -> int:
    """Run the profile and print the results."""
    from pyinstrument import Profiler

    parser = argparse.ArgumentParser(description="Profile the request path with pyinstrument.")
    parser.add_argument("--size", default="large", help="typical | medium | large | a number of resources")
    parser.add_argument("-n", "--count", type=int, default=50, help="requests to profile (default 50)")
    parser.add_argument("--variant", type=int, default=0, help="even: CT lumbar order; odd: MRI lumbar order")
    parser.add_argument("--engine-only", action="store_true", help="profile ClinicalEngine.evaluate alone")
    parser.add_argument("--html", type=Path, help="also write pyinstrument's HTML report here")
    parser.add_argument("--interval", type=float, default=0.0005, help="sampling interval in seconds")
    args = parser.parse_args(argv)

    size = generate.SIZES[args.size] if args.size in generate.SIZES else int(args.size)
    request = generate.build_request(size, variant=args.variant, anchor=datetime.now(UTC).date())
    profiler = Profiler(interval=args.interval)
    with tempfile.TemporaryDirectory(prefix="cds-profile-") as scratch:
        if args.engine_only:
            mean_ms = _engine_only(request, args.count, profiler)
        else:
            mean_ms = _through_app(generate.encode(request), args.count, profiler, Path(scratch))
    what = "ClinicalEngine.evaluate" if args.engine_only else "POST through app.test_client()"
    print(f"{what}: {size} resources, {args.count} calls, mean {mean_ms:.2f} ms per call (under the profiler)")
    print("stages, timed without the profiler (mean ms per call):")
    for name, stage_ms in stage_split(generate.encode(request), args.count).items():
        print(f"  {stage_ms:9.3f}  {name}")
    print(profiler.output_text(unicode=True, color=False, show_all=False))
    if args.html:
        args.html.write_text(profiler.output_html())
        print(f"HTML report: {args.html}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
