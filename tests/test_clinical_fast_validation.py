"""The quick check of plain resource shapes: whatever it accepts, fhir.resources accepts too.

It may only ever say "valid" (anything else goes to fhir.resources), so the property that matters is
one-sided: no resource that fhir.resources refuses is ever accepted quickly. It is checked on every
resource the benchmark generator and the golden fixtures hold, and on many thousands of seeded random
mutations of them (nulls, wrong JSON types, bad dates and codes, unknown elements, extensions, two
values of one choice element, missing required elements ...).
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import load_bench_module

from cds_service.clinical.fast_validation import QuickAcceptor
from cds_service.clinical.record_reader import _MODELS, _validated_part, _validation_error, quick_acceptor

REPO = Path(__file__).resolve().parent.parent
generate = load_bench_module("generate")

Part = tuple[str, dict[str, Any]]


def _fixture_parts() -> Iterator[Part]:
    for path in sorted((REPO / "fixtures").glob("*/request.json")):
        body = json.loads(path.read_text())
        for value in (body.get("prefetch") or {}).values():
            if not isinstance(value, dict):
                continue
            entries = value.get("entry", []) if value.get("resourceType") == "Bundle" else [{"resource": value}]
            for entry in entries:
                resource = entry.get("resource")
                if isinstance(resource, dict) and resource.get("resourceType") in _MODELS:
                    yield resource["resourceType"], dict(_validated_part(resource))
        for entry in ((body.get("context") or {}).get("draftOrders") or {}).get("entry", []):
            resource = entry.get("resource")
            if isinstance(resource, dict) and resource.get("resourceType") in _MODELS:
                yield resource["resourceType"], resource  # drafts are validated whole


def _generated_parts() -> Iterator[Part]:
    for size, variant in ((200, 0), (200, 1), (50, 2)):
        for resource_type, resources in generate.build_record(size, variant=variant).items():
            for resource in resources:
                yield resource_type, dict(_validated_part(resource))
        yield "ServiceRequest", generate.draft_order(variant, "patient-1", generate.DEFAULT_ANCHOR)


PARTS: list[Part] = [*_generated_parts(), *_fixture_parts()]

# Values that are wrong somewhere and right elsewhere; member names that exist somewhere (or nowhere).
ODD_VALUES: list[Any] = [
    None, "", " ", "x y", " leading", "trailing ", "2019-02-30", "2019-13-01", "2019-02-03T10:00:00",
    "2019-02-03T24:00:00Z", "2019", "2019-02", "10:00:00", "25:00:00", 5, 5.5, -1, 0, 10**20, True, False, [], {},
    [None], [{}], {"x": 1}, "a" * 70, "Patient/1", "http://x y", "é", "\t", "mo", "wk", "xyz", "mon", "funday",
    [{"url": "http://example.org/x", "valueString": "v"}],
]  # fmt: skip
MEMBER_NAMES: list[str] = [
    "extension", "modifierExtension", "foo", "_code", "_onsetDateTime", "id", "text", "display", "code", "system",
    "valueString", "onsetString", "onsetAge", "abatementDateTime", "unit", "comparator", "value", "start", "end",
    "type", "identifier", "userSelected", "version", "periodUnit", "period", "frequency", "boundsDuration",
    "boundsPeriod", "boundsRange", "count", "dayOfWeek", "timeOfDay", "when", "asNeededBoolean", "sequence",
    "doseAndRate", "low", "high", "numerator", "fhir_comments", "resourceType",
]  # fmt: skip


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if prefix:
        yield prefix
    if isinstance(value, dict):
        for key, member in value.items():
            yield from _paths(member, (*prefix, key))
    elif isinstance(value, list):
        for index, member in enumerate(value):
            yield from _paths(member, (*prefix, index))


def _odd(rng: random.Random, *more: Any) -> Any:
    return copy.deepcopy(rng.choice([*ODD_VALUES, *more]))  # a fresh copy: mutants must never share a list


def _mutated(part: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    mutant = copy.deepcopy(part)
    for _ in range(rng.randint(1, 3)):
        paths = list(_paths(mutant))
        path = rng.choice(paths)
        parent: Any = mutant
        for step in path[:-1]:
            parent = parent[step]
        choice = rng.random()
        if choice < 0.45:
            parent[path[-1]] = _odd(rng)
        elif choice < 0.65 and isinstance(parent, dict):
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[rng.choice(MEMBER_NAMES)] = _odd(rng, "2020-01-01", "abc", "d")
        else:
            parent.append(copy.deepcopy(rng.choice(parent)) if parent and rng.random() < 0.5 else _odd(rng))
    return mutant


def test_every_plain_resource_of_the_benchmark_and_the_fixtures_is_accepted_quickly() -> None:
    # The point of the quick check: a first-seen patient's record should (almost) never need fhir.resources.
    acceptor = quick_acceptor()
    slow = [(resource_type, part) for resource_type, part in PARTS if not acceptor.accepts(resource_type, part)]
    valid_but_slow = [item for item in slow if _validation_error(_MODELS[item[0]], item[1]) is None]
    assert len(valid_but_slow) <= len(PARTS) // 100, valid_but_slow[:3]
    assert len(PARTS) > 500


def test_what_is_accepted_quickly_is_valid_for_fhir_resources() -> None:
    acceptor = QuickAcceptor(_MODELS)  # its own memo of primitive verdicts
    rng = random.Random(20261127)
    accepted = 0
    for _ in range(30_000):
        resource_type, part = rng.choice(PARTS)
        mutant = _mutated(part, rng)
        if acceptor.accepts(resource_type, mutant):
            accepted += 1
            assert _validation_error(_MODELS[resource_type], mutant) is None, (resource_type, mutant)
    assert accepted > 1_000  # the mutations that keep a resource valid and plain are exercised too


@pytest.mark.parametrize(
    ("resource_type", "change"),
    [
        ("Condition", {"subject": None}),  # a null goes to fhir.resources
        ("Condition", {"onsetDateTime": "2019-02-30"}),  # not a calendar date
        ("Condition", {"onsetDateTime": "2019-02-03T10:00:00"}),  # a time without a zone
        ("Condition", {"onsetString": "last spring"}),  # a second value of the onset[x] choice
        ("Condition", {"code": {"coding": [{"code": " M54.50"}]}}),  # a code with leading space
        ("Condition", {"code": {"text": ""}}),  # an empty string
        ("Condition", {"note": [{"text": "a note"}]}),  # an element the rules do not read (never projected)
        ("Condition", {"extension": [{"url": "http://example.org/x", "valueString": "x"}]}),  # not modelled here
        ("Observation", {"status": None}),
        ("Procedure", {"resourceType": "Observation"}),
    ],
)
def test_anything_unusual_goes_to_fhir_resources(resource_type: str, change: dict[str, Any]) -> None:
    part = copy.deepcopy(next(part for kind, part in PARTS if kind == resource_type))
    part.update(change)
    assert not quick_acceptor().accepts(resource_type, part)


def test_a_missing_required_element_goes_to_fhir_resources() -> None:
    condition = copy.deepcopy(next(part for kind, part in PARTS if kind == "Condition"))
    del condition["subject"]
    assert not quick_acceptor().accepts("Condition", condition)
    assert _validation_error(_MODELS["Condition"], condition) == "subject: missing"


def test_long_strings_are_checked_every_time_and_never_kept() -> None:
    acceptor = QuickAcceptor(_MODELS)
    condition = copy.deepcopy(next(part for kind, part in PARTS if kind == "Condition"))
    condition["code"] = {"text": "low back pain " + "x" * 5_000}
    assert acceptor.accepts("Condition", condition)
    kept = list(acceptor._primitive_verdicts)
    assert kept and all(not isinstance(value, str) or len(value) <= 200 for _adapter, _type, value in kept)
