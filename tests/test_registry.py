"""The service registry: one set of definitions feeds discovery and routing; bad files stop start-up."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cds_service.errors import ConfigurationError
from cds_service.registry import default_hooks_dir, load_registry, template_resource_type

SHIPPED = {"lumbar-imaging-order-select": "order-select", "lumbar-imaging-order-sign": "order-sign"}


def _valid(service_id: str = "svc") -> dict[str, Any]:
    return {
        "id": service_id,
        "hook": "order-select",
        "title": "A service",
        "description": "Does something useful.",
        "prefetch": {"patient": "Patient/{{context.patientId}}"},
        "_config": {"engine": "lumbar-imaging", "thresholds": {}},
    }


def _write(directory: Path, definition: Any, name: str | None = None) -> Path:
    path = directory / (name or f"{definition['id']}.json")
    path.write_text(json.dumps(definition) if not isinstance(definition, str) else definition)
    return path


def test_shipped_definitions_load_and_discovery_hides_private_settings() -> None:
    registry = load_registry()
    assert {d.id: d.hook for d in registry} == SHIPPED
    document = registry.discovery_document()
    assert [s["id"] for s in document["services"]] == sorted(SHIPPED)
    for service in document["services"]:
        assert "_config" not in service
        assert set(service) <= {"hook", "title", "description", "id", "prefetch", "usageRequirements", "extension"}
        assert service["prefetch"]["patient"] == "Patient/{{context.patientId}}"


def test_shipped_prefetch_templates_name_resource_types() -> None:
    definition = load_registry().get("lumbar-imaging-order-select")
    assert definition is not None
    types = {template_resource_type(t) for t in definition.prefetch.values()}
    assert {"Patient", "Condition", "MedicationStatement", "MedicationRequest", "Observation"} <= types


def test_default_hooks_dir_is_the_source_checkout_in_development() -> None:
    assert (default_hooks_dir() / "lumbar-imaging-order-select.json").is_file()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("description"), "svc.json: missing required field 'description' (a non-empty string)"),
        (lambda d: d.update(hook="patient-view"), "svc.json: hook 'patient-view' is not supported"),
        (lambda d: d.update(id="Svc_1"), "id 'Svc_1' must be lower-case letters, digits and hyphens"),
        (
            lambda d: d["prefetch"].update(drafts="ServiceRequest?_id={{context.draftOrders.id}}"),
            "svc.json: prefetch 'drafts' uses token {{context.draftOrders.id}}, which is not a CDS Hooks 2.0",
        ),
        (
            lambda d: d["prefetch"].update(abs="https://ehr.example.org/fhir/Patient/1"),
            "svc.json: prefetch 'abs' must be a relative FHIR URL",
        ),
        (lambda d: d.update(prefetch=["Patient"]), "svc.json: 'prefetch' must map keys to FHIR query template strings"),
        (lambda d: d.update(cards=[]), "svc.json: unknown field(s) cards"),
        (lambda d: d.update(_config=[]), "svc.json: _config: [] is not of type 'object'"),
    ],
)
def test_bad_definition_stops_startup_naming_file_and_problem(tmp_path: Path, mutate: Any, message: str) -> None:
    definition = _valid()
    mutate(definition)
    _write(tmp_path, definition, "svc.json")
    with pytest.raises(ConfigurationError) as caught:
        load_registry(tmp_path)
    assert message in str(caught.value)


def test_invalid_json_names_file_and_position(tmp_path: Path) -> None:
    _write(tmp_path, '{"id": "svc",\n  "hook": }', "svc.json")
    with pytest.raises(ConfigurationError, match=r"svc\.json: invalid JSON at line 2 column"):
        load_registry(tmp_path)


def test_file_name_must_be_the_service_id(tmp_path: Path) -> None:
    _write(tmp_path, _valid("svc"), "other.json")
    with pytest.raises(ConfigurationError, match=r"other\.json: the file name must be the service id \(svc\.json\)"):
        load_registry(tmp_path)


def test_empty_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="no service definitions"):
        load_registry(tmp_path)


def test_registry_is_read_only() -> None:
    definition = load_registry().get("lumbar-imaging-order-sign")
    assert definition is not None
    with pytest.raises(TypeError):
        definition.prefetch["x"] = "Patient/1"  # type: ignore[index]
    with pytest.raises(TypeError):
        definition.config["thresholds"] = {}  # type: ignore[index]


# ------------------------------------------------------------------------------- _config: one schema checks it
@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"engine": "lumbar-imaging", "threshold": {}}, "svc.json: _config: Additional properties are not allowed"),
        ({"thresholds": {}}, "svc.json: _config: 'engine' is a required property"),
        ({"engine": "spine-ai"}, "svc.json: _config.engine: 'spine-ai' is not one of ['lumbar-imaging']"),
        ({"engine": "lumbar-imaging", "thresholds": {"symptom_weekz": 4}}, "svc.json: _config.thresholds:"),
        (
            {"engine": "lumbar-imaging", "thresholds": {"symptom_weeks": "six"}},
            "svc.json: _config.thresholds.symptom_weeks: 'six' is not of type 'integer'",
        ),
        (
            {"engine": "lumbar-imaging", "thresholds": {"symptom_weeks": 4.5}},
            "svc.json: _config.thresholds.symptom_weeks: 4.5 is not of type 'integer'",
        ),
        (
            {"engine": "lumbar-imaging", "thresholds": {"symptom_weeks": True}},
            "svc.json: _config.thresholds.symptom_weeks: True is not of type 'integer'",
        ),
        (
            {"engine": "lumbar-imaging", "thresholds": {"symptom_weeks": 0}},
            "svc.json: _config.thresholds.symptom_weeks: 0 is less than the minimum of 1",
        ),
        (
            {"engine": "lumbar-imaging", "thresholds": {"fever_celsius": 100}},
            "svc.json: _config.thresholds.fever_celsius: 100 is greater than the maximum of 42.0",
        ),
        ([1, 2], "svc.json: _config: [1, 2] is not of type 'object'"),
    ],
)
def test_bad_config_is_refused_naming_the_file_and_member(tmp_path: Path, config: Any, message: str) -> None:
    definition = _valid()
    definition["_config"] = config
    _write(tmp_path, definition)
    with pytest.raises(ConfigurationError) as raised:
        load_registry(tmp_path)
    assert message in str(raised.value)


def test_non_finite_numbers_are_refused_before_the_schema(tmp_path: Path) -> None:
    text = json.dumps(_valid()).replace('"thresholds": {}', '"thresholds": {"fever_celsius": NaN}')
    _write(tmp_path, text, "svc.json")
    with pytest.raises(ConfigurationError, match=r"svc\.json: .*NaN"):
        load_registry(tmp_path)


def test_thresholds_of_the_config_reach_the_engine(tmp_path: Path) -> None:
    from cds_service.clinical import ClinicalEngine

    definition = _valid()
    definition["_config"] = {"engine": "lumbar-imaging", "thresholds": {"symptom_weeks": 4, "fever_celsius": 38.5}}
    _write(tmp_path, definition)
    loaded = load_registry(tmp_path).get("svc")
    assert loaded is not None
    engine = ClinicalEngine.from_config(loaded.config)
    assert (engine.thresholds.symptom_weeks, engine.thresholds.fever_celsius) == (4, 38.5)
    assert engine.rules.thresholds is engine.thresholds


def test_every_engine_name_the_schema_allows_resolves() -> None:
    from cds_service.protocol.validation import schema_validator
    from cds_service.service import ENGINES

    allowed = schema_validator("service-config").schema["properties"]["engine"]["enum"]
    assert sorted(allowed) == sorted(ENGINES)


def test_the_config_schema_names_every_threshold_and_only_thresholds() -> None:
    import dataclasses

    from cds_service.knowledge import Thresholds
    from cds_service.protocol.validation import schema_validator

    properties = schema_validator("service-config").schema["properties"]["thresholds"]["properties"]
    fields = {field.name: field for field in dataclasses.fields(Thresholds)}
    assert set(properties) == set(fields)
    for name, rule in properties.items():
        default = getattr(Thresholds(), name)
        assert rule["type"] == ("integer" if isinstance(default, int) else "number"), name
        assert rule.get("minimum", rule.get("exclusiveMinimum")) <= default <= rule["maximum"], name
