"""What the data path hands to the clinical engine: the patient's record, and what could not be obtained.

The data path (``cds_service.data_source``) resolves every prefetch key of the service definition,
from the request's prefetch or from the FHIR server, and produces one :class:`PatientRecord`.
Resources stay raw FHIR JSON (dicts) here: the clinical boundary decides what to parse, so that
irrelevant resources in a large record cost nothing.

Semantics (CDS Hooks 2.0, https://cds-hooks.hl7.org/2.0/#prefetch-template): a resource type listed in ``unavailable``
is *unknown* (the client sent an OperationOutcome, the key was absent and could not be fetched, or
its results were cut short); a type that is neither in ``resources`` nor in ``unavailable`` was
obtained and holds nothing (``null`` prefetch or an empty searchset) and that absence is a fact.
A type cut short (the page bound, a page that could not be read) is unknown *and* keeps the
resources that were read: what they show is true, what they do not show is not known.

Why a type is missing comes in two forms:

* ``unavailable[type]``: the reason, for cards a clinician reads (no URL, token or patient id),
  e.g. ``the FHIR server answered 401 to the service's queries (token rejected)``;
* :meth:`PatientRecord.detail` (``unavailable_details`` where it says more): for the OperationOutcome
  of a 412 and the log lines; it may name the FHIR server's base URL, e.g.
  ``fhirServer https://ehr.example.org/fhir is not allowed for this client``. Never a token or an id.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

Resource = Mapping[str, Any]


@dataclass(frozen=True)
class PatientRecord:
    # resourceType -> resources of that type, de-duplicated by id, in the order received.
    resources: Mapping[str, tuple[Resource, ...]] = field(default_factory=dict)
    # resourceType -> why it could not be obtained (a reason for cards and logs; never URLs, tokens or ids).
    unavailable: Mapping[str, str] = field(default_factory=dict)
    # Data-quality notes from the data path, for the response's data-quality extension (for example
    # "Observation: only the first 20 pages of results were read; the rest is unknown"). No ids, URLs or tokens.
    warnings: tuple[str, ...] = ()
    # resourceType -> the reason with what an integrator needs to act on it (the FHIR server's base URL, the
    # exception class), where it says more than ``unavailable``. For OperationOutcome diagnostics and logs only.
    unavailable_details: Mapping[str, str] = field(default_factory=dict)

    def of_type(self, resource_type: str) -> tuple[Resource, ...]:
        return self.resources.get(resource_type, ())

    def is_known(self, resource_type: str) -> bool:
        """True when the record was obtained for this type (possibly empty); False when it is unknown."""
        return resource_type not in self.unavailable

    def detail(self, resource_type: str) -> str | None:
        """Why ``resource_type`` is unknown, for an OperationOutcome or a log line; None when it is known."""
        reason = self.unavailable.get(resource_type)
        if reason is None:
            return None
        return self.unavailable_details.get(resource_type, reason)

    def diagnostics(self) -> dict[str, str]:
        """Every unknown type with its detail, sorted by type (for log lines)."""
        return {resource_type: self.unavailable_details.get(resource_type, reason)
                for resource_type, reason in sorted(self.unavailable.items())}  # fmt: skip

    def describe_unavailable(self, resource_types: Iterable[str] | None = None) -> str:
        """One sentence for an OperationOutcome: the unknown types grouped by cause.

        ``"Condition, MedicationRequest: fhirServer https://x is not allowed for this client; Observation: the FHIR
        server did not answer within 2.5 s"``. ``resource_types`` limits it to those types (default: every unknown
        type); types that are known are left out. Empty when none of them is unknown.
        """
        wanted = sorted(self.unavailable if resource_types is None else set(resource_types))
        by_cause: dict[str, list[str]] = {}
        for resource_type in wanted:
            detail = self.detail(resource_type)
            if detail is not None:
                by_cause.setdefault(detail, []).append(resource_type)
        return "; ".join(f"{', '.join(types)}: {cause}" for cause, types in by_cause.items())
