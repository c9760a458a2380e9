"""Offline evaluation of one CDS Hooks request: the HTTP code path without HTTP.

Used by ``cds-service evaluate`` and by the golden-file tests. Settings come from the
environment as for the server, so an offline run makes outbound FHIR calls only to servers
listed in ``CDS_FHIR_SERVERS``.
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Any

from cds_service.data_source import FhirDataSource
from cds_service.errors import BadRequest
from cds_service.registry import load_registry
from cds_service.service import HookServices
from cds_service.settings import Settings, settings_from_env


@lru_cache(maxsize=4)
def _services(settings: Settings) -> HookServices:
    # Built once per distinct settings: definitions, knowledge and engines are the expensive part.
    data_source = FhirDataSource(total_timeout=settings.fhir_timeout)
    return HookServices(load_registry(settings.hooks_dir), settings, data_source)


def evaluate_request(
    body: Any, *, now: datetime, service_id: str | None = None, settings: Settings | None = None
) -> dict[str, Any]:
    """Evaluate a request body at ``now`` and return the response JSON (as the service would send it).

    The service is ``service_id`` or the first one that answers the request's ``hook``; ``settings``
    default to the ``CDS_*`` environment. Raises the same typed errors as the HTTP service
    (BadRequest, PreconditionFailed ...).
    """
    services = _services(settings or settings_from_env())
    if service_id is not None:
        definition = services.registry.get(service_id)
        if definition is None:
            raise BadRequest(f"no CDS service with id {service_id!r}")
    else:
        hook = body.get("hook") if isinstance(body, dict) else None
        definition = services.service_for_hook(hook) if isinstance(hook, str) else None
        if definition is None:
            raise BadRequest(f"hook: no service answers {hook!r}", expression="hook")
    settings = services.settings
    return services.call(definition, body, now=now, allowed_fhir_servers=settings.fhir_servers).body
