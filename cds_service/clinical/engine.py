"""The clinical engine: FHIR record and draft orders in, CDS Hooks response out.

``ClinicalEngine.from_config`` builds everything once per process (knowledge, thresholds, card texts, the
ACR rating table, the FHIR reader); ``evaluate`` only reads: FHIR boundary (:mod:`record_reader`) -> pure decision
(:mod:`decision`) -> rendering (:mod:`cards`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cds_service.clinical.cards import CardRenderer, CardTexts, RenderContext, consult_id
from cds_service.clinical.decision import Decision, decide
from cds_service.clinical.facts import Extraction
from cds_service.clinical.record_reader import RecordReader
from cds_service.errors import ConfigurationError, PreconditionFailed
from cds_service.knowledge import AcrCategory, Knowledge, Thresholds, load_knowledge
from cds_service.protocol.request import HookRequest
from cds_service.protocol.response import CdsResponse
from cds_service.record import PatientRecord

# The procedure keys of the knowledge contract (cds_service/knowledge/__init__.py) and the ACR variants.
PROCEDURE_KEYS: tuple[str, ...] = (
    "MR_LSPINE_WO",
    "MR_LSPINE_W",
    "MR_LSPINE_WWO",
    "MR_LSPINE",
    "CT_LSPINE_WO",
    "CT_LSPINE_W",
    "CT_LSPINE_WWO",
    "CT_MYELO_LSPINE",
    "XR_LSPINE",
    "BONE_SCAN",
)
VARIANTS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7)
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


def thresholds_with_overrides(defaults: Thresholds, overrides: Mapping[str, Any] | None) -> Thresholds:
    """The knowledge base's thresholds with a service's ``_config["thresholds"]`` applied (checked, typed)."""
    if not overrides:
        return defaults
    if not isinstance(overrides, Mapping):
        raise ConfigurationError("_config.thresholds: must be an object of threshold names to numbers")
    fields = {field.name: field for field in dataclasses.fields(Thresholds)}
    changes: dict[str, Any] = {}
    for name, value in overrides.items():
        field = fields.get(name)
        if field is None:
            raise ConfigurationError(f"_config.thresholds: unknown threshold {name!r} (known: {', '.join(fields)})")
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ConfigurationError(f"_config.thresholds.{name}: must be a non-negative number, not {value!r}")
        default = getattr(defaults, name)
        if isinstance(default, int) and not float(value).is_integer():
            raise ConfigurationError(f"_config.thresholds.{name}: must be a whole number, not {value!r}")
        changes[name] = type(default)(value)
    return dataclasses.replace(defaults, **changes)


class ClinicalEngine:
    """Rates lumbar imaging orders and renders the cards. Immutable after construction; thread-safe."""

    def __init__(self, knowledge: Knowledge, thresholds: Thresholds) -> None:
        self.knowledge = knowledge
        self.thresholds = thresholds
        self._texts = CardTexts.from_mapping(knowledge.card_texts)
        self._acr_table = self._build_acr_table(knowledge)
        self._reader = RecordReader(knowledge, thresholds)
        self._renderer = CardRenderer(self._texts, thresholds, self._acr_category, knowledge)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, knowledge: Knowledge | None = None) -> ClinicalEngine:
        """Build the engine for one service definition's ``_config`` (knowledge defaults to :func:`load_knowledge`)."""
        loaded = knowledge if knowledge is not None else load_knowledge()
        overrides = config.get("thresholds") if isinstance(config, Mapping) else None
        return cls(loaded, thresholds_with_overrides(loaded.thresholds, overrides))

    def evaluate(
        self, request: HookRequest, record: PatientRecord, *, now: datetime, qcdsm_uri: str | None = None
    ) -> Evaluation:
        """Evaluate one request. Raises PreconditionFailed only when nothing at all can be determined.

        ``qcdsm_uri`` is the value of every rating's ``pama-rating-qcdsm-consulted`` extension.
        """
        extraction = self._reader.read(record, request.draft_orders, request.selections, now)
        decision = decide(extraction.facts, extraction.orders, self.thresholds, now.date(), self._acr_category)
        if decision.needs_data and not decision.determined_anything and not extraction.facts.is_known("Condition"):
            # Without the problem list nothing about the patient is known (PRODUCT.md §4.2: 412 only then).
            missing = sorted({t for o in decision.orders for c in o.concerns for t in c.missing_types})
            # Each type with why it is missing (the FHIR server refused the token, is not allowed ...).
            raise PreconditionFailed(
                "Patient data needed to rate the order could not be obtained: "
                + (record.describe_unavailable(missing) or ", ".join(missing))
            )
        context = RenderContext(
            hook_instance=request.hook_instance,
            session_key=request.session_key,
            patient_id=request.patient_id,
            encounter_id=request.encounter_id,
            user_id=request.user_id,
            today=now.date(),
            qcdsm_uri=qcdsm_uri,
        )
        cards, actions = self._renderer.render(decision, extraction.facts, context)
        response = CdsResponse(
            cards=cards, system_actions=actions, extension=_data_quality(extraction, record.warnings)
        )
        return Evaluation(
            response=response,
            ratings=self._rating_records(decision, request.session_key),
            warnings=extraction.skipped,
        )

    def extract(self, request: HookRequest, record: PatientRecord, *, now: datetime) -> Extraction:
        """The facts and recognised orders of a request (for debugging and tests)."""
        return self._reader.read(record, request.draft_orders, request.selections, now)

    # ------------------------------------------------------------------------------------------ helpers
    def _acr_category(self, procedure_key: str, variant: int) -> AcrCategory | None:
        return self._acr_table.get((procedure_key, variant))

    @staticmethod
    def _build_acr_table(knowledge: Knowledge) -> Mapping[tuple[str, int], AcrCategory]:
        """The ACR table as one dict, built once: a missing cell means "not rated by ACR" (no rating given)."""
        table: dict[tuple[str, int], AcrCategory] = {}
        for key in PROCEDURE_KEYS:
            for variant in VARIANTS:
                try:
                    table[(key, variant)] = knowledge.acr_category(key, variant)
                except (KeyError, ValueError, LookupError):
                    continue
        if not table:
            raise ConfigurationError("knowledge: the ACR rating table is empty")
        return table

    def _rating_records(self, decision: Decision, session_key: str) -> tuple[RatingRecord, ...]:
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
                    consult_id=consult_id(session_key, order.reference),
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
