"""One CDS service call, transport-free: validated body in, response JSON and the evaluation out.

Used by the HTTP blueprint and by ``cds-service evaluate``, so both take exactly the same path:
validate -> typed request -> patient record (prefetch, then fallback fetch) -> clinical engine ->
serialise. Nothing here reads the clock: ``now`` is passed in.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cds_service.clinical import ClinicalEngine, Evaluation
from cds_service.data_source import FhirDataSource
from cds_service.errors import ConfigurationError
from cds_service.logs import bind_hook_instance
from cds_service.protocol.request import HookRequest, hook_request_from_json
from cds_service.protocol.response import response_to_json
from cds_service.protocol.validation import validate_hook_request
from cds_service.registry import ServiceDefinition, ServiceRegistry
from cds_service.settings import Settings


@dataclass(frozen=True)
class ServiceResult:
    body: dict[str, Any]
    evaluation: Evaluation
    request: HookRequest
    unavailable: Mapping[str, str]  # resource type -> why it could not be obtained (for the log line)
    data_ms: float
    engine_ms: float


class HookServices:
    """The registry's services with their engines, built once per process."""

    def __init__(self, registry: ServiceRegistry, settings: Settings, data_source: FhirDataSource) -> None:
        self.registry = registry
        self.settings = settings
        self.data_source = data_source
        # One engine per definition: each may carry its own thresholds in "_config".
        self._engines = {definition.id: build_engine(definition) for definition in registry}

    def call(
        self,
        definition: ServiceDefinition,
        body: Any,
        *,
        now: datetime,
        allowed_fhir_servers: Collection[str],
        request_url_root: str | None = None,
    ) -> ServiceResult:
        """One call. ``request_url_root`` is the URL root the client invoked (None offline): with CDS_PUBLIC_URL
        unset, the service's endpoint URL, the default ``pama-rating-qcdsm-consulted`` value, is built from it."""
        # Every log line of this call carries its hookInstance, from here on (even for a body that fails validation).
        bind_hook_instance(body.get("hookInstance") if isinstance(body, dict) else None)
        validated: Mapping[str, Any] = validate_hook_request(
            body, service_id=definition.id, expected_hook=definition.hook
        )
        request = hook_request_from_json(definition.id, validated)
        started = time.perf_counter()
        record = self.data_source.resolve(definition.prefetch, request, allowed_fhir_servers)
        fetched = time.perf_counter()
        qcdsm_uri = self.settings.qcdsm_uri_for(definition.id, request_url_root)
        evaluation = self._engines[definition.id].evaluate(request, record, now=now, qcdsm_uri=qcdsm_uri)
        evaluated = time.perf_counter()
        return ServiceResult(
            body=response_to_json(evaluation.response, self.settings.system_actions),
            evaluation=evaluation,
            request=request,
            unavailable=record.diagnostics(),
            data_ms=(fetched - started) * 1000,
            engine_ms=(evaluated - fetched) * 1000,
        )

    def service_for_hook(self, hook: str) -> ServiceDefinition | None:
        """The first service answering ``hook`` (for offline evaluation of a bare request file)."""
        return next((definition for definition in self.registry if definition.hook == hook), None)


# The clinical engines a definition's ``_config.engine`` may name (the schema of ``_config`` lists the same names).
ENGINES: dict[str, type[ClinicalEngine]] = {"lumbar-imaging": ClinicalEngine}


def build_engine(definition: ServiceDefinition) -> ClinicalEngine:
    """The engine a service definition names, built with its ``_config`` (checked when the registry was loaded)."""
    name = definition.config.get("engine")
    engine = ENGINES.get(name) if isinstance(name, str) else None
    if engine is None:
        raise ConfigurationError(f"{definition.source}: _config.engine {name!r} is not one of {sorted(ENGINES)}")
    return engine.from_config(definition.config)
