"""What the data path hands to the clinical engine: the patient's record, and what could not be obtained.

The data path (``cds_service.data_source``) resolves every prefetch key of the service definition,
from the request's prefetch or from the FHIR server, and produces one :class:`PatientRecord`.
Resources stay raw FHIR JSON (dicts) here: the clinical boundary decides what to parse, so that
irrelevant resources in a large record cost nothing.

Semantics (PRODUCT.md §3.1, §4.2): a resource type listed in ``unavailable`` is *unknown*
(the client sent an OperationOutcome, or the key was absent and could not be fetched); a type
that is neither in ``resources`` nor in ``unavailable`` was obtained and holds nothing
(``null`` prefetch or an empty searchset) and that absence is a fact.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

Resource = Mapping[str, Any]


@dataclass(frozen=True)
class PatientRecord:
    # resourceType -> resources of that type, de-duplicated by id, in the order received.
    resources: Mapping[str, tuple[Resource, ...]] = field(default_factory=dict)
    # resourceType -> why it could not be obtained (a reason for cards and logs; never contains tokens).
    unavailable: Mapping[str, str] = field(default_factory=dict)
    # Data-quality notes from the data path (for example "Bundle page 3 could not be fetched").
    warnings: tuple[str, ...] = ()

    def of_type(self, resource_type: str) -> tuple[Resource, ...]:
        return self.resources.get(resource_type, ())

    def is_known(self, resource_type: str) -> bool:
        """True when the record was obtained for this type (possibly empty); False when it is unknown."""
        return resource_type not in self.unavailable
