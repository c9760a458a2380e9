"""The clinical engine: FHIR record and draft orders in, CDS Hooks response out.

``ClinicalEngine.from_config`` builds everything once per process (knowledge, thresholds, the rule data,
card texts, the record reader); ``evaluate`` only reads: record reader (:mod:`record_reader`) -> pure
decision (:mod:`evidence`, :mod:`decision`) -> rendering (:mod:`cards`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cds_service.clinical.cards import CardRenderer, CardTexts, RenderContext, consult_id
from cds_service.clinical.decision import Decision, decide
from cds_service.clinical.facts import Extraction
from cds_service.clinical.record_reader import RecordReader
from cds_service.clinical.rules import ClinicalRules
from cds_service.errors import PreconditionFailed
from cds_service.knowledge import Knowledge, Thresholds, load_knowledge
from cds_service.protocol.request import HookRequest
from cds_service.protocol.response import CdsResponse
from cds_service.record import PatientRecord

DATA_QUALITY_KEY = "cds-service.data-quality"


@dataclass(frozen=True)
class RatingRecord:
    """One rated order, for the audit record (codes only, no clinical text)."""

    order_reference: str  # e.g. "ServiceRequest/abc"
    procedure_key: str  # e.g. "MR_LSPINE_WO"
    rating: str  # appropriate | not-appropriate | no-criteria-apply
    consult_id: str  # urn:uuid:...
    variant: str | None = None  # the possible ACR variants, e.g. "3" or "7|6|3"


@dataclass(frozen=True)
class Evaluation:
    response: CdsResponse
    ratings: tuple[RatingRecord, ...] = ()
    # Data-quality notes for the logs ("Condition/c9 skipped: code: missing"); never patient identifiers.
    warnings: tuple[str, ...] = ()


class ClinicalEngine:
    """Rates lumbar imaging orders and renders the cards. Immutable after construction; thread-safe."""

    def __init__(self, knowledge: Knowledge, thresholds: Thresholds) -> None:
        self.knowledge = knowledge
        self.thresholds = thresholds
        self.rules = ClinicalRules.from_knowledge(knowledge, thresholds)
        self._reader = RecordReader(knowledge, measurement_window_days=thresholds.current_finding_lookback_days)
        self._renderer = CardRenderer(CardTexts.from_mapping(knowledge.card_texts), thresholds, knowledge)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, knowledge: Knowledge | None = None) -> ClinicalEngine:
        """Build the engine for one service definition's ``_config`` (already checked against its schema)."""
        loaded = knowledge if knowledge is not None else load_knowledge()
        overrides = config.get("thresholds") or {}
        return cls(loaded, loaded.thresholds.with_overrides(overrides))

    def evaluate(
        self, request: HookRequest, record: PatientRecord, *, now: datetime, qcdsm_uri: str | None = None
    ) -> Evaluation:
        """Evaluate one request. Raises PreconditionFailed only when nothing at all can be determined.

        ``qcdsm_uri`` is the value of every rating's ``pama-rating-qcdsm-consulted`` extension.
        """
        extraction = self._reader.read(record, request.draft_orders, request.selections, now)
        decision = decide(extraction.facts, extraction.orders, self.rules, now.date())
        if decision.needs_data and not decision.determined_anything and not extraction.facts.any_known():
            # No patient data at all was obtained and the draft orders alone determine nothing: 412 only then.
            missing = sorted({t for o in decision.orders for c in o.concerns for t in c.missing_types})
            # Each type with why it is missing (the FHIR server refused the token, is not allowed ...).
            raise PreconditionFailed(
                "Patient data needed to rate the order could not be obtained: "
                + (record.describe_unavailable(missing) or ", ".join(missing))
            )
        consults = {
            order.reference: consult_id(request.session_key, order.reference)
            for order in extraction.orders
            if order.selected
        }
        context = RenderContext(
            hook_instance=request.hook_instance,
            session_key=request.session_key,
            patient_id=request.patient_id,
            encounter_id=request.encounter_id,
            user_id=request.user_id,
            today=now.date(),
            consult_ids=consults,
            qcdsm_uri=qcdsm_uri,
        )
        cards, actions = self._renderer.render(decision, context)
        response = CdsResponse(
            cards=cards, system_actions=actions, extension=_data_quality(extraction, record.warnings)
        )
        return Evaluation(
            response=response,
            ratings=_rating_records(decision, consults),
            warnings=extraction.skipped,
        )

    def extract(self, request: HookRequest, record: PatientRecord, *, now: datetime) -> Extraction:
        """The facts and recognised orders of a request (for debugging and tests)."""
        return self._reader.read(record, request.draft_orders, request.selections, now)

    def decide(self, request: HookRequest, record: PatientRecord, *, now: datetime) -> Decision:
        """The decision of a request, before rendering (for debugging and tests)."""
        extraction = self.extract(request, record, now=now)
        return decide(extraction.facts, extraction.orders, self.rules, now.date())


def _rating_records(decision: Decision, consults: Mapping[str, str]) -> tuple[RatingRecord, ...]:
    records = []
    for order_decision in decision.orders:
        rating, order = order_decision.rating, order_decision.order
        if rating is None or order.procedure_key is None:
            continue
        records.append(
            RatingRecord(
                order_reference=order.reference,
                procedure_key=order.procedure_key,
                rating=rating.code,
                consult_id=consults[order.reference],
                variant="|".join(str(v) for v in rating.variants) or None,
            )
        )
    return tuple(records)


def _data_quality(extraction: Extraction, record_warnings: tuple[str, ...] = ()) -> Mapping[str, Any]:
    """Skipped resources, and results the data path cut short, as OperationOutcome-style warnings in the response
    extension."""
    if not extraction.skipped and not record_warnings:
        return {}
    issues = [{"severity": "warning", "code": "invalid", "diagnostics": note} for note in extraction.skipped]
    issues += [{"severity": "warning", "code": "incomplete", "diagnostics": note} for note in record_warnings]
    return {DATA_QUALITY_KEY: {"resourceType": "OperationOutcome", "issue": issues}}
