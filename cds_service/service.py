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
from pathlib import Path
from typing import Any

from cds_service.clinical import ClinicalEngine, Evaluation
from cds_service.data_source import FhirDataSource
from cds_service.errors import ConfigurationError
from cds_service.logs import bind_hook_instance
from cds_service.protocol.request import HookRequest, hook_request_from_json
from cds_service.protocol.response import response_to_json
from cds_service.protocol.validation import validate_hook_request
from cds_service.registry import ServiceDefinition, ServiceRegistry, default_hooks_dir
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
        self._engines = {definition.id: build_engine(definition, settings.hooks_dir) for definition in registry}

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


def build_engine(definition: ServiceDefinition, hooks_dir: str | None) -> ClinicalEngine:
    """The engine of one service definition; a bad ``_config`` names its file (``hooks/<id>.json: _config...``)."""
    try:
        return ClinicalEngine.from_config(definition.config)
    except ConfigurationError as error:
        # The engine's messages name the member (_config.thresholds.x); the operator also needs the file.
        raise ConfigurationError(f"{definition_path(definition, hooks_dir)}: {error}") from None


def definition_path(definition: ServiceDefinition, hooks_dir: str | None) -> str:
    """Where a definition was read from, relative to the working directory when it lies below it."""
    path = (Path(hooks_dir) if hooks_dir else default_hooks_dir()) / (definition.source or f"{definition.id}.json")
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
