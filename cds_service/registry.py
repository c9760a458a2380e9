"""The one registry of CDS services: loaded from ``hooks/*.json`` once, it feeds discovery AND routing.

Each definition file holds the discovery fields of CDS Hooks 2.0 (``id``, ``hook``, ``title``,
``description``, ``prefetch``, ``usageRequirements``) plus private settings under ``_config``
that discovery never shows. A bad definition stops start-up with a message naming the file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cds_service.errors import ConfigurationError

SUPPORTED_HOOKS = ("order-select", "order-sign")
SERVICE_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
# CDS Hooks 2.0 prefetch tokens: root-level primitive context fields marked "Prefetch Token: Yes" by the
# order-select/order-sign hooks, and the user tokens added in 2.0. draftOrders/selections are not valid tokens.
ALLOWED_PREFETCH_TOKENS = frozenset(
    {
        "context.patientId",
        "context.userId",
        "context.encounterId",
        "userPractitionerId",
        "userPractitionerRoleId",
        "userPatientId",
        "userRelatedPersonId",
    }
)
TOKEN_PATTERN = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
DISCOVERY_FIELDS = ("hook", "title", "description", "id", "prefetch", "usageRequirements", "extension")


@dataclass(frozen=True)
class ServiceDefinition:
    id: str
    hook: str
    title: str
    description: str
    prefetch: Mapping[str, str]
    discovery: Mapping[str, Any]  # the public discovery entry, without private settings
    config: Mapping[str, Any] = field(default_factory=dict)  # private "_config"
    source: str = ""  # file it came from, for messages


class ServiceRegistry:
    """Immutable set of service definitions, keyed by service id."""

    def __init__(self, definitions: tuple[ServiceDefinition, ...]) -> None:
        self._by_id = {definition.id: definition for definition in definitions}
        self._discovery = {"services": [dict(d.discovery) for d in definitions]}

    def get(self, service_id: str) -> ServiceDefinition | None:
        return self._by_id.get(service_id)

    def __iter__(self) -> Iterator[ServiceDefinition]:
        return iter(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)

    def discovery_document(self) -> dict[str, Any]:
        """``{"services": [...]}`` for ``GET /cds-services`` (built once at load time)."""
        return self._discovery


def default_hooks_dir() -> Path:
    """The definitions shipped in the wheel (``cds_service/_hooks``), or ``hooks/`` of a source checkout."""
    packaged = Path(__file__).parent / "_hooks"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "hooks"


def load_registry(hooks_dir: str | Path | None = None) -> ServiceRegistry:
    """Load and validate every ``*.json`` definition; raise ConfigurationError naming the file and problem."""
    directory = Path(hooks_dir) if hooks_dir else default_hooks_dir()
    if not directory.is_dir():
        raise ConfigurationError(f"{directory}: service definition directory not found")
    files = sorted(directory.glob("*.json"))
    if not files:
        raise ConfigurationError(f"{directory}: no service definitions (*.json)")
    definitions = tuple(_load_definition(path) for path in files)
    seen: dict[str, str] = {}
    for definition in definitions:
        if definition.id in seen:
            raise ConfigurationError(
                f"{definition.source}: service id {definition.id!r} is already defined in {seen[definition.id]}"
            )
        seen[definition.id] = definition.source
    return ServiceRegistry(definitions)


def _load_definition(path: Path) -> ServiceDefinition:
    name = f"{path.parent.name}/{path.name}"  # "hooks/x.json": the file a message names
    try:
        raw = json.loads(path.read_text(encoding="utf-8"), parse_constant=_refuse_constant)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"{name}: cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"{name}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except ValueError as exc:
        raise ConfigurationError(f"{name}: invalid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigurationError(f"{name}: a service definition must be a JSON object")

    for required in ("id", "hook", "description"):
        if not isinstance(raw.get(required), str) or not raw[required].strip():
            raise ConfigurationError(f"{name}: missing required field {required!r} (a non-empty string)")
    service_id, hook = raw["id"], raw["hook"]
    if not SERVICE_ID_PATTERN.match(service_id):
        raise ConfigurationError(f"{name}: id {service_id!r} must be lower-case letters, digits and hyphens")
    if path.stem != service_id:
        raise ConfigurationError(f"{name}: the file name must be the service id ({service_id}.json)")
    if hook not in SUPPORTED_HOOKS:
        raise ConfigurationError(f"{name}: hook {hook!r} is not supported (supported: {', '.join(SUPPORTED_HOOKS)})")
    for optional in ("title", "usageRequirements"):
        if optional in raw and (not isinstance(raw[optional], str) or not raw[optional].strip()):
            raise ConfigurationError(f"{name}: {optional!r} must be a non-empty string when present")
    unknown = set(raw) - set(DISCOVERY_FIELDS) - {"_config"}
    if unknown:
        raise ConfigurationError(f"{name}: unknown field(s) {', '.join(sorted(unknown))}")

    prefetch = raw.get("prefetch", {})
    if not isinstance(prefetch, dict) or not all(isinstance(v, str) and v for v in prefetch.values()):
        raise ConfigurationError(f"{name}: 'prefetch' must map keys to FHIR query template strings")
    for key, template in prefetch.items():
        _check_template(name, key, template)

    config = raw.get("_config", {})
    _check_config(name, config)
    if "extension" in raw and not isinstance(raw["extension"], dict):
        raise ConfigurationError(f"{name}: 'extension' must be an object")

    discovery = {field_name: raw[field_name] for field_name in DISCOVERY_FIELDS if raw.get(field_name)}
    return ServiceDefinition(
        id=service_id,
        hook=hook,
        title=str(raw.get("title") or service_id),
        description=raw["description"],
        prefetch=MappingProxyType(dict(prefetch)),
        discovery=MappingProxyType(discovery),
        config=MappingProxyType(config),
        source=name,
    )


def _refuse_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity, which are not JSON and pass any range check.
    raise ValueError(f"{name} is not a JSON number")


def _check_config(name: str, config: Any) -> None:
    """``_config`` against ``schemas/service-config.schema.json``: every problem, each naming the file."""
    from cds_service.protocol.validation import json_path, schema_validator

    errors = sorted(schema_validator("service-config").iter_errors(config), key=lambda error: list(error.path))
    if errors:
        problems = [f"{name}: _config{_suffix(json_path(error))}: {error.message}" for error in errors]
        raise ConfigurationError("; ".join(problems))


def _suffix(path: str) -> str:
    return "" if path == "(root)" else "." + path


def _check_template(name: str, key: str, template: str) -> None:
    if not re.match(r"^[A-Za-z][A-Za-z0-9_-]*$", key):
        raise ConfigurationError(f"{name}: prefetch key {key!r} must be a simple name")
    if template.startswith(("http://", "https://", "/")):
        raise ConfigurationError(f"{name}: prefetch {key!r} must be a relative FHIR URL, not {template!r}")
    if not re.match(r"^[A-Z][A-Za-z]+([/?]|$)", template):
        raise ConfigurationError(f"{name}: prefetch {key!r} must start with a FHIR resource type: {template!r}")
    for token in TOKEN_PATTERN.findall(template):
        if token not in ALLOWED_PREFETCH_TOKENS:
            raise ConfigurationError(
                f"{name}: prefetch {key!r} uses token {{{{{token}}}}}, which is not a CDS Hooks 2.0 prefetch token "
                f"for this hook (allowed: {', '.join(sorted(ALLOWED_PREFETCH_TOKENS))})"
            )
    if template.count("{{") != template.count("}}"):
        raise ConfigurationError(f"{name}: prefetch {key!r} has unbalanced {{{{ }}}} in {template!r}")


def template_resource_type(template: str) -> str:
    """The resource type a prefetch template returns (its first path segment)."""
    return re.split(r"[/?]", template, maxsplit=1)[0]
