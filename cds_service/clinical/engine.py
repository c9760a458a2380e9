"""Placeholder engine until the clinical rules land: returns no cards (see README)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cds_service.protocol.request import HookRequest
from cds_service.protocol.response import CdsResponse
from cds_service.record import PatientRecord


@dataclass(frozen=True)
class RatingRecord:
    """One rated order, for the audit record (codes only, no clinical text)."""

    order_reference: str  # e.g. "ServiceRequest/abc"
    procedure_key: str  # e.g. "MR_LSPINE_WO"
    rating: str  # appropriate | not-appropriate | no-criteria-apply
    consult_id: str  # urn:uuid:...
    variant: str | None = None


@dataclass(frozen=True)
class Evaluation:
    response: CdsResponse
    ratings: tuple[RatingRecord, ...] = ()
    warnings: tuple[str, ...] = ()  # data-quality notes for the logs (no patient identifiers)


class ClinicalEngine:
    def __init__(self, config: Mapping[str, Any]) -> None:
        self._config = config

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ClinicalEngine:
        return cls(config)

    def evaluate(self, request: HookRequest, record: PatientRecord, *, now: datetime) -> Evaluation:
        return Evaluation(response=CdsResponse())
