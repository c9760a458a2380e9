"""The benchmark's request generator is deterministic and produces the advertised sizes (bench/generate.py)."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest
from support import load_bench_module

REPO = Path(__file__).resolve().parent.parent


generate = load_bench_module("generate")


@pytest.mark.parametrize("size_name", ["typical", "medium", "large"])
def test_same_arguments_give_the_same_bytes(size_name: str) -> None:
    size = generate.SIZES[size_name]
    first = generate.encode(generate.build_request(size, seed=7, variant=1))
    second = generate.encode(generate.build_request(size, seed=7, variant=1))
    assert first == second


def test_seed_and_variant_change_the_record() -> None:
    base = generate.encode(generate.build_request(200, seed=7))
    assert generate.encode(generate.build_request(200, seed=8)) != base
    assert generate.encode(generate.build_request(200, seed=7, variant=2)) != base


@pytest.mark.parametrize(("size_name", "expected"), [("typical", 50), ("medium", 200), ("large", 2000)])
def test_prefetch_holds_exactly_the_advertised_number_of_resources(size_name: str, expected: int) -> None:
    assert generate.SIZES[size_name] == expected
    request = generate.build_request(expected)
    assert generate.prefetch_resource_count(request) == expected
    bundles = [value for value in request["prefetch"].values() if value["resourceType"] == "Bundle"]
    assert all(bundle["total"] == len(bundle.get("entry", [])) for bundle in bundles)


def test_large_record_is_mostly_observations_like_a_real_chart() -> None:
    record = generate.build_record(2000)
    assert len(record["Observation"]) > 1000
    assert len(record["Condition"]) > 20 and len(record["MedicationRequest"]) > 20


def test_prefetch_keys_are_those_of_the_service_definitions() -> None:
    for path in sorted((REPO / "hooks").glob("*.json")):
        definition = json.loads(path.read_text())
        assert set(definition["prefetch"]) == set(generate.PREFETCH_TYPES), path.name
    request = generate.build_request(50)
    assert set(request["prefetch"]) == set(generate.PREFETCH_TYPES)
    for key, value in request["prefetch"].items():
        resource_types = (
            {entry["resource"]["resourceType"] for entry in value.get("entry", [])}
            if value["resourceType"] == "Bundle"
            else {value["resourceType"]}
        )
        assert resource_types <= {generate.PREFETCH_TYPES[key]}, key


def test_request_is_an_order_select_for_a_selected_draft_lumbar_imaging_order() -> None:
    for variant, cpt in ((0, "72131"), (1, "72148")):
        request = generate.build_request(50, variant=variant)
        assert request["hook"] == "order-select"
        assert "fhirServer" not in request and "fhirAuthorization" not in request
        [entry] = request["context"]["draftOrders"]["entry"]
        order = entry["resource"]
        assert order["status"] == "draft"
        assert request["context"]["selections"] == [f"ServiceRequest/{order['id']}"]
        assert cpt in {coding["code"] for coding in order["code"]["coding"]}
        assert request["context"]["patientId"] == request["prefetch"]["patient"]["id"]


def test_episode_is_anchored_on_the_given_date() -> None:
    record = generate.build_record(50, anchor=date(2030, 3, 1))
    back_pain = record["Condition"][0]
    assert back_pain["code"]["coding"][0]["code"] == "M54.50"
    assert back_pain["onsetDateTime"].startswith("2029-12-21")  # ten weeks before the anchor


def test_hook_instance_placeholder_appears_once_for_the_load_generator() -> None:
    body = generate.encode(generate.build_request(200))
    assert body.count(generate.HOOK_INSTANCE_PLACEHOLDER.encode()) == 1
    loadgen = load_bench_module("loadgen")
    payload = loadgen.Payload.from_bodies("/cds-services/x", [body], 200)
    assert payload.body(0, generate.HOOK_INSTANCE_PLACEHOLDER.encode()) == body
    fresh = b"11111111-2222-4333-8444-555555555555"
    assert json.loads(payload.body(0, fresh))["hookInstance"] == fresh.decode()


def test_a_fresh_patient_request_is_a_new_patient_every_time() -> None:
    body = generate.encode(generate.build_request(50, fresh_patient=True))
    loadgen = load_bench_module("loadgen")
    payload = loadgen.Payload.from_bodies("/cds-services/x", [body], 50)
    first, second = (json.loads(payload.body(0, fresh)) for fresh in (b"a" * 36, b"b" * 36))
    assert first["hookInstance"] == "a" * 36 and first["context"]["patientId"].endswith("a" * 36)
    assert second["context"]["patientId"].endswith("b" * 36)
    # Every resource of the record names the patient, so no two requests share a resource's content.
    conditions = first["prefetch"]["conditions"]["entry"]
    assert all(entry["resource"]["subject"]["reference"].endswith("a" * 36) for entry in conditions)
    assert first["prefetch"]["patient"]["id"] == first["context"]["patientId"]


@pytest.mark.parametrize("size_name", ["typical", "medium"])
def test_every_resource_is_valid_fhir_r4(size_name: str) -> None:
    from fhir.resources.R4B.bundle import Bundle
    from fhir.resources.R4B.patient import Patient

    request = generate.build_request(generate.SIZES[size_name], variant=1)
    for value in request["prefetch"].values():
        (Bundle if value["resourceType"] == "Bundle" else Patient).model_validate(value)
    Bundle.model_validate(request["context"]["draftOrders"])


def test_too_small_a_size_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 20"):
        generate.build_record(10)
