"""Card rendering: a Decision in, CDS Hooks response objects out (docs/clinical-rules.md#cards; CDS Hooks 2.0 cards, https://cds-hooks.hl7.org/2.0/).

Every word a clinician reads comes from data: the card texts of the knowledge base
(``Knowledge.card_texts``, i.e. ``cds_service/knowledge/cards.json``, with the renderer's words in its
``terms`` section), and every code a suggested order carries comes from the knowledge base's procedure
codes. This module only decides *which* text, *which* evidence and *which* actions.

Identifiers are deterministic so that golden files are byte-stable: card and suggestion uuids are
``uuid5(NAMESPACE, f"{hook_instance}|{purpose}|{order}")``; the PAMA consult id is ``urn:uuid:`` +
``uuid5(NAMESPACE, f"{session_key}|{order}")``, stable for the same order in the same ordering session.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import orjson

from cds_service.clinical.decision import (
    MRI_WITHOUT_CONTRAST,
    RED_FLAG_CONCERNS,
    Concern,
    ConcernKind,
    Decision,
    OrderDecision,
    Proposal,
    Rating,
    TherapyAssessment,
)
from cds_service.clinical.evidence import Evidence, MedicationCourse, UncountedMedication
from cds_service.clinical.facts import CodeRef, DraftOrder, Finding
from cds_service.errors import ConfigurationError
from cds_service.knowledge import Knowledge, Thresholds
from cds_service.knowledge.loader import TERM_SECTIONS
from cds_service.knowledge.systems import CPT, LOINC, coding_key
from cds_service.protocol.response import Action, Card, Coding, Link, Source, Suggestion

# Fixed namespace of every deterministic id this service mints (uuid5 of the service's own URN).
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:cds-service:lumbar-imaging")

PAMA_RATING_URL = "http://fhir.org/argonaut/Extension/pama-rating"
PAMA_RATING_SYSTEM = "http://fhir.org/argonaut/CodeSystem/pama-rating"
PAMA_CONSULT_ID_URL = "http://fhir.org/argonaut/Extension/pama-rating-consult-id"
PAMA_AUC_APPLIED_URL = "http://fhir.org/argonaut/Extension/pama-rating-auc-applied"
PAMA_QCDSM_URL = "http://fhir.org/argonaut/Extension/pama-rating-qcdsm-consulted"
_PAMA_URLS = frozenset({PAMA_RATING_URL, PAMA_CONSULT_ID_URL, PAMA_AUC_APPLIED_URL, PAMA_QCDSM_URL})
# A card lists at most this many therapy items of each kind (the most recent): a long history must stay readable.
MAX_EVIDENCE_ITEMS = 8
# The procedures a suggestion can order, and the code systems such an order is coded in: the first CPT and the first
# LOINC code the knowledge base holds for the key (procedures.json; CPT first), so that an order the service writes
# always maps back to the same key. MRI without contrast uses the knowledge base's own suggested-order codings.
SUGGESTED_PROCEDURE_KEYS: tuple[str, ...] = (
    "MR_LSPINE_WO", "MR_LSPINE_WWO", "CT_LSPINE_WO", "XR_LSPINE", "CT_MYELO_LSPINE",
)  # fmt: skip
ORDER_CODE_SYSTEMS: tuple[str, ...] = (CPT, LOINC)
INDICATORS = frozenset({"info", "warning", "critical"})

# The suggestions each card kind may offer (names in the card texts); checked at start-up.
SUGGESTIONS_OF_CARD: Mapping[ConcernKind, tuple[str, ...]] = {
    "cauda_equina": ("keep_urgent", "convert_urgent", "create_urgent"),
    "cancer_infection": ("mri_wwo", "mri_wo"),
    "cancer_infection_contrast_concern": ("mri_wo",),
    "fracture_risk": ("radiographs", "mri_wo", "ct_wo"),
    "prior_surgery": ("mri_wwo", "mri_wo", "radiographs"),
    "failed_therapy_convert": ("convert",),
    "failed_therapy_create": ("create",),
    "confirm_candidacy": (),
    "conservative_care_first": ("remove",),
    "no_documented_therapy": ("remove",),
    "duplicate_mri": ("remove",),
    "mr_implant": ("ct_myelography",),
    "contrast_safety": ("convert",),
    "pregnancy": ("convert",),
    "data_missing": (),
    "inadequate_therapy": ("remove",),
    "trial_length_unknown": (),
    "motor_deficit": ("keep_urgent", "convert_urgent", "create_urgent"),
    "duplicate_draft": ("remove",),
    "child_criteria": (),
    "child_red_flag": (),
    "child_cauda_equina": ("keep_urgent", "convert_urgent", "create_urgent"),
    "duration_unknown": ("remove",),
}
# Suggestions any card may carry, worded once in the card texts' "shared_suggestions".
SHARED_SUGGESTIONS: tuple[str, ...] = ("remove_duplicate",)
# What each card's detail lists, under a heading each (a condition is not a red flag; a missing eGFR is not therapy).
_SECTIONS_OF_CARD: Mapping[str, tuple[str, ...]] = {
    "cauda_equina": ("symptoms", "red_flags"),
    "cancer_infection": ("symptoms", "red_flags"),
    "cancer_infection_contrast_concern": ("symptoms", "red_flags", "contrast"),
    "fracture_risk": ("symptoms", "red_flags"),
    "prior_surgery": ("symptoms", "red_flags"),
    "child_red_flag": ("symptoms", "red_flags"),
    "child_cauda_equina": ("symptoms", "red_flags"),
    "motor_deficit": ("symptoms", "motor"),
    "duplicate_mri": ("prior_imaging",),
    "mr_implant": ("devices",),
    "contrast_safety": ("contrast",),
    "pregnancy": ("pregnancy",),
}
_THERAPY_SECTIONS: tuple[str, ...] = ("symptoms", "therapy", "not_counted")
# Cards whose suggested orders carry no therapy note: a red flag or a deficit, not failed therapy, is their reason.
_NO_THERAPY_NOTES = frozenset({*RED_FLAG_CONCERNS, "motor_deficit"})


class _Keep(dict[str, str]):
    """Format values where a placeholder the data has no value for stays visible instead of raising."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def _fill(template: str, **values: object) -> str:
    return template.format_map(_Keep({k: "" if v is None else str(v) for k, v in values.items()}))


def _section(texts: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = texts.get(name)
    return value if isinstance(value, Mapping) else {}


@dataclass(frozen=True)
class CardTexts:
    """The card wording (knowledge card texts plus renderer terms), checked once at start-up."""

    cards: Mapping[str, Mapping[str, Any]]
    source_label: str
    source_url: str
    topic_system: str | None
    override_reasons: Mapping[str, Coding]
    references: Mapping[str, Link]
    placeholder_limits: Mapping[str, int]
    phrases: Mapping[str, str]
    terms: Mapping[str, Any]
    acr_category_codings: Mapping[str, Coding]  # ACR category (UA, MBA, UNA) -> its coding in the pama-rating
    extra_cards: Mapping[str, Mapping[str, Any]]  # card texts outside SUGGESTIONS_OF_CARD (data_missing_rated)
    shared_suggestions: Mapping[str, Mapping[str, Any]]  # suggestions any card may carry (remove_duplicate)

    @classmethod
    def from_mapping(cls, texts: Mapping[str, Any]) -> CardTexts:
        """Validate the card texts; ConfigurationError names every missing key."""
        missing: list[str] = []
        source = _section(texts, "source")
        for key in ("label", "url"):
            if not isinstance(source.get(key), str):
                missing.append(f"source.{key}")
        cards = _section(texts, "cards")
        reason_system = texts.get("override_reason_system")
        reason_names = _section(texts, "override_reasons")
        if not isinstance(reason_system, str):
            missing.append("override_reason_system")
        for kind, suggestion_names in SUGGESTIONS_OF_CARD.items():
            card = cards.get(kind)
            if not isinstance(card, Mapping):
                missing.append(f"cards.{kind}")
                continue
            for member in ("summary", "detail"):
                if not isinstance(card.get(member), str):
                    missing.append(f"cards.{kind}.{member}")
            if card.get("indicator") not in INDICATORS:
                missing.append(f"cards.{kind}.indicator")
            suggestions = _section(card, "suggestions")
            missing.extend(f"cards.{kind}.suggestions.{name}" for name in suggestion_names if name not in suggestions)
            missing.extend(
                f"override_reasons.{code}" for code in card.get("override_reasons") or () if code not in reason_names
            )
        terms = _section(texts, "terms")
        missing.extend(f"terms.{key}" for key in TERM_SECTIONS if key not in terms)
        category_coding = _section(texts, "acr_category_coding")
        category_concepts = _section(category_coding, "concepts")
        if not isinstance(category_coding.get("system"), str):
            missing.append("acr_category_coding.system")
        for category in ("UA", "MBA", "UNA"):
            concept = _section(category_concepts, category)
            missing.extend(
                f"acr_category_coding.concepts.{category}.{member}"
                for member in ("code", "display")
                if not isinstance(concept.get(member), str)
            )
        if not isinstance(cards.get("data_missing_rated"), Mapping):
            missing.append("cards.data_missing_rated")
        shared = _section(texts, "shared_suggestions")
        missing.extend(f"shared_suggestions.{name}" for name in SHARED_SUGGESTIONS if name not in shared)
        if missing:
            raise ConfigurationError("knowledge card texts: missing " + ", ".join(missing))
        references = _section(texts, "references")
        placeholders = _section(texts, "placeholders")
        phrases = _section(texts, "phrases")
        return cls(
            cards=cards,
            source_label=str(source["label"]),
            source_url=str(source["url"]),
            topic_system=source.get("topic_system") if isinstance(source.get("topic_system"), str) else None,
            override_reasons={
                code: Coding(str(reason_system), str(code), str(display)) for code, display in reason_names.items()
            },
            references={
                name: Link(label=str(ref["label"]), url=str(ref["url"]))
                for name, ref in references.items()
                if isinstance(ref, Mapping) and "label" in ref and "url" in ref
            },
            placeholder_limits={
                name: int(spec["max_length"])
                for name, spec in placeholders.items()
                if isinstance(spec, Mapping) and isinstance(spec.get("max_length"), int)
            },
            phrases={str(k): str(v) for k, v in phrases.items()},
            terms=terms,
            acr_category_codings={
                category: Coding(str(category_coding["system"]), str(concept["code"]), str(concept["display"]))
                for category, concept in category_concepts.items()
                if isinstance(concept, Mapping)
            },
            extra_cards={"data_missing_rated": cards["data_missing_rated"]},
            shared_suggestions=shared,
        )


@dataclass(frozen=True)
class RenderContext:
    """Per-request values the renderer needs (no clock: ``today`` comes from the caller)."""

    hook_instance: str
    session_key: str
    patient_id: str
    encounter_id: str | None
    user_id: str | None
    today: date
    consult_ids: Mapping[str, str]  # order reference -> its PAMA consult id (computed once, by the engine)
    # The pama-rating-qcdsm-consulted value: CDS_QCDSM_URI, else the invoked service's endpoint URL.
    qcdsm_uri: str | None = None


@dataclass(frozen=True)
class _Rendering:
    """What every card of one request draws on: the facts, the therapy assessment, its lines (worded once: a card's
    detail and its suggested order's note cite the same trials) and the request's context."""

    evidence: Evidence
    therapy: TherapyAssessment
    therapy_lines: tuple[str, ...]
    context: RenderContext


def orderable_codings(knowledge: Knowledge) -> Mapping[str, tuple[tuple[str, str, str], ...]]:
    """``(system, code, display)`` a suggested order of each procedure key is coded with (built once per engine).

    MRI without contrast: the knowledge base's suggested-order codings (CPT 72148, LOINC 30679-5). Any other key:
    its first CPT and first LOINC code. Raises ConfigurationError when a suggested procedure has no such code.
    """
    codings: dict[str, tuple[tuple[str, str, str], ...]] = {}
    for key in SUGGESTED_PROCEDURE_KEYS:
        if key == MRI_WITHOUT_CONTRAST:
            chosen = knowledge.mri_without_contrast_codings()
        else:
            known = knowledge.procedure_codings(key)
            first_of_system: dict[str, tuple[str, str, str]] = {}
            for coding in known:
                first_of_system.setdefault(coding[0], coding)
            chosen = tuple(first_of_system[system] for system in ORDER_CODE_SYSTEMS if system in first_of_system)
        if not chosen:
            raise ConfigurationError(f"knowledge: no CPT or LOINC code for the suggested procedure {key}")
        codings[key] = chosen
    return codings


def uuid_for(hook_instance: str, purpose: str, order: str) -> str:
    """Deterministic uuid of a card, suggestion or action."""
    return str(uuid.uuid5(NAMESPACE, f"{hook_instance}|{purpose}|{order}"))


def consult_id(session_key: str, order: str) -> str:
    """The PAMA consult id: stable for the same order in the same ordering session."""
    return f"urn:uuid:{uuid.uuid5(NAMESPACE, f'{session_key}|{order}')}"


class CardRenderer:
    """Turns a Decision into cards and rating system actions. Built once per engine; stateless afterwards."""

    def __init__(self, texts: CardTexts, thresholds: Thresholds, knowledge: Knowledge) -> None:
        self._texts = texts
        self._terms = texts.terms
        self._evidence: Mapping[str, str] = texts.terms["evidence"]
        self._thresholds = thresholds
        self._sources = {kind: self._source(kind) for kind in SUGGESTIONS_OF_CARD}
        self._orderable_codings = orderable_codings(knowledge)
        self._mri_keys = frozenset(
            key for key in SUGGESTED_PROCEDURE_KEYS if knowledge.procedure_info(key).modality == "MR"
        )
        self._mri_protocol = knowledge.mri_protocol

    # ----------------------------------------------------------------------------------------- rendering
    def render(self, decision: Decision, context: RenderContext) -> tuple[tuple[Card, ...], tuple[Action, ...]]:
        """All cards (at most one per order and concern) and the rating system actions, in draft order."""
        cards: list[Card] = []
        actions: list[Action] = []
        has_cards = any(o.concerns for o in decision.orders)
        rendering = _Rendering(
            decision.evidence,
            decision.therapy,
            tuple(self.therapy_lines(decision.therapy)) if has_cards else (),
            context,
        )
        for order_decision in decision.orders:
            if order_decision.rating is not None:
                actions.append(self._rating_action(order_decision.order, order_decision.rating, context))
            for concern in order_decision.concerns:
                cards.append(self._card(concern, order_decision, rendering))
        return tuple(cards), tuple(actions)

    def rating_extensions(self, rating: Rating, consult: str, qcdsm_uri: str | None = None) -> list[dict[str, Any]]:
        """The Argonaut PAMA extensions for one rating (code plus the ACR category as a translation)."""
        codings: list[dict[str, Any]] = [
            {"system": PAMA_RATING_SYSTEM, "code": rating.code, "display": self._terms["ratings"][rating.code]}
        ]
        if rating.category is not None:
            codings.append(self._texts.acr_category_codings[rating.category].to_json())
        extensions: list[dict[str, Any]] = [
            {"url": PAMA_RATING_URL, "valueCodeableConcept": {"coding": codings}},
            {"url": PAMA_CONSULT_ID_URL, "valueUri": consult},
            {"url": PAMA_AUC_APPLIED_URL, "valueUri": self._texts.source_url},
        ]
        if qcdsm_uri:
            extensions.append({"url": PAMA_QCDSM_URL, "valueUri": qcdsm_uri})
        return extensions

    def _rating_action(self, order: DraftOrder, rating: Rating, context: RenderContext) -> Action:
        extensions = self.rating_extensions(rating, context.consult_ids[order.reference], context.qcdsm_uri)
        template = self._terms["rating_action"] if rating.category else self._terms["rating_action_no_category"]
        return Action(
            type="update",
            description=_fill(
                template,
                rating=self._terms["ratings"][rating.code],
                category=self._terms["categories"].get(rating.category or "", ""),
            ),
            resource=_with_extensions(order.raw, extensions),
        )

    def _card_text(self, concern: Concern, order_decision: OrderDecision) -> Mapping[str, Any]:
        """The texts of a card; the missing-data card has a variant for an order rated from the order alone."""
        if concern.kind == "data_missing" and order_decision.rating is not None:
            return self._texts.extra_cards["data_missing_rated"]
        return self._texts.cards[concern.kind]

    def _source(self, kind: str) -> Source:
        topic = self._texts.cards[kind].get("topic")
        coding = None
        if isinstance(topic, Mapping) and self._texts.topic_system and "code" in topic:
            coding = Coding(self._texts.topic_system, str(topic["code"]), topic.get("display"))
        return Source(label=self._texts.source_label, url=self._texts.source_url, topic=coding)

    def _card(self, concern: Concern, order_decision: OrderDecision, rendering: _Rendering) -> Card:
        order = order_decision.order
        text = self._card_text(concern, order_decision)
        values = self._values(concern, order_decision, rendering.therapy)
        suggestions = tuple(
            self._suggestion(concern, proposal, order_decision, rendering) for proposal in concern.proposals
        )
        reasons = tuple(
            self._texts.override_reasons[code]
            for code in text.get("override_reasons") or ()
            if code in self._texts.override_reasons
        )
        links = tuple(
            self._texts.references[name] for name in text.get("references") or () if name in self._texts.references
        )
        return Card(
            uuid=uuid_for(rendering.context.hook_instance, f"card:{concern.kind}", order.reference),
            summary=_summary(_fill(str(text["summary"]), **self._limited(values))),
            indicator=text["indicator"],
            source=self._sources[concern.kind],
            detail=self._detail(concern, order_decision, rendering, values),
            suggestions=suggestions,
            selection_behavior="at-most-one" if suggestions else None,
            override_reasons=reasons,
            links=links,
        )

    # --------------------------------------------------------------------------------- placeholder values
    def _values(self, concern: Concern, order_decision: OrderDecision, therapy: TherapyAssessment) -> dict[str, object]:
        """Summary and detail placeholder values."""
        order = order_decision.order
        category = order_decision.category
        prior = next((f for f in concern.findings if f.concept == "prior_lumbar_mri"), None)
        rating_category = order_decision.rating.category if order_decision.rating is not None else None
        values: dict[str, object] = {
            "weeks": _whole(therapy.symptom_weeks),
            "symptom_weeks": self._thresholds.symptom_weeks,
            "category": self._terms["categories"].get(category or "", ""),
            "order_kind": self._terms["order_kinds"].get(order.drug_class or order.kind, ""),
            "date": self._date(prior.recorded) if prior else "",
            "lookback_months": self._thresholds.prior_mri_lookback_months,
            "lookback_days": self._thresholds.current_finding_lookback_days,
            "device": self._label(concern.findings[0]) if concern.kind == "mr_implant" else "",
            "concern": self._concern_words(concern.findings[0]) if concern.findings else "",
            "missing": self._missing_words(concern.missing_types),
            "procedure": self._terms["procedures"].get(order.procedure_key or "", ""),
            "category_words": self._terms["categories"].get(rating_category or "", ""),
            "flag": self._flag_words(concern),
            "nsaid_weeks": self._thresholds.nsaid_trial_weeks,
        }
        return values

    def _flag_words(self, concern: Concern) -> str:
        """The first red flag in the record's own words ("Carcinoma in situ of prostate"), for a summary."""
        flag = next((f for f in concern.findings if f.concept != "advanced_age"), None)
        return self._label(flag) if flag is not None else str(self._terms["concepts"].get("red_flag", "Red flag"))

    def _limited(self, values: Mapping[str, object]) -> dict[str, object]:
        """Summary values held within the card texts' ``max_length`` (summaries must stay under 140 characters)."""
        limited = dict(values)
        for name, limit in self._texts.placeholder_limits.items():
            value = limited.get(name)
            if isinstance(value, str) and len(value) > limit:
                limited[name] = _cut(value, limit)
        return limited

    def _concern_words(self, finding: Finding) -> str:
        if finding.concept == "egfr":
            return _fill(
                self._terms["concerns"]["egfr"], value=finding.label, limit=f"{self._thresholds.egfr_contrast_limit:g}"
            )
        return self._label(finding)

    def _missing_words(self, resource_types: Sequence[str]) -> str:
        names = list(dict.fromkeys(self._terms["missing_types"].get(t, t) for t in resource_types))
        return names[0] if len(names) == 1 else (str(self._terms["missing_many"]) if names else "")

    # ------------------------------------------------------------------------------------------ detail
    def _detail(
        self, concern: Concern, order_decision: OrderDecision, rendering: _Rendering, values: Mapping[str, object]
    ) -> str:
        """Markdown: the evidence under a heading per kind, then the card's explanation and the guideline."""
        template = str(self._card_text(concern, order_decision)["detail"])
        egfr_note = ""
        if order_decision.no_recent_egfr and "no_recent_egfr" in self._texts.phrases:
            egfr_note = _fill(self._texts.phrases["no_recent_egfr"], **values)
        detail = _fill(
            template,
            **{
                **values,
                "evidence": self._evidence_sections(concern, rendering),
                "egfr_note": egfr_note if "{egfr_note}" in template else "",
                "missing_list": self._missing_list(concern, rendering.evidence),
            },
        ).strip()
        if egfr_note and "{egfr_note}" not in template:
            detail += "\n\n" + egfr_note.strip()  # a paragraph of its own: a missing eGFR is not therapy
        return detail

    def _missing_list(self, concern: Concern, evidence: Evidence) -> str:
        """What could not be obtained and why: "medication history (the FHIR server answered 404)"."""
        reasons = dict(evidence.unavailable_reasons)
        by_reason: dict[str, list[str]] = {}  # one reason, said once, after every part it kept out
        for resource_type in concern.missing_types:
            name = str(self._terms["missing_types"].get(resource_type, resource_type))
            names = by_reason.setdefault(reasons.get(resource_type, ""), [])
            if name not in names:
                names.append(name)
        template = self._evidence["missing_reason"]
        return "; ".join(
            _fill(template, label=", ".join(names), reason=reason) if reason else ", ".join(names)
            for reason, names in by_reason.items()
        )

    def _evidence_sections(self, concern: Concern, rendering: _Rendering) -> str:
        headings = self._terms["headings"]
        sections = _SECTIONS_OF_CARD.get(concern.kind, _THERAPY_SECTIONS)
        blocks: list[str] = []
        for section in sections:
            lines = self._section_lines(section, concern, rendering)
            if (
                section == "therapy"
                and not lines
                and rendering.evidence.any_known("MedicationStatement", "MedicationRequest")
            ):
                lines = [self._evidence["none_found"]]  # said only when the medication history was obtained
            if lines:
                blocks.append(f"**{headings[section]}**\n\n{_bullets(lines)}")
        return "\n\n".join(blocks)

    def _section_lines(self, section: str, concern: Concern, rendering: _Rendering) -> list[str]:
        if section == "symptoms":
            return self._episode_lines(rendering.evidence, rendering.therapy)
        if section == "therapy":
            lines = list(rendering.therapy_lines)
            known = {c.reference for c in (*rendering.therapy.nsaid_courses, *rendering.therapy.steroid_courses)}
            lines += [self._course_line(c) for c in rendering.therapy.unknown_length if c.reference not in known]
            return list(dict.fromkeys(lines))
        if section == "not_counted":
            return self._uncounted_lines(rendering.evidence, rendering.therapy)
        if section == "prior_imaging":
            return [
                _fill(
                    self._evidence["prior_mri"],
                    procedure=_capitalised(self._terms["procedures"].get(f.label, f.label)),
                    date=self._date(f.recorded),
                )
                for f in concern.findings
            ]
        if section == "red_flags":
            long_term = {course.reference: course for course in rendering.therapy.long_term_steroids}
            lines = []
            for finding in concern.findings:
                course = long_term.get(finding.reference)
                lines.append(self._course_line(course) if course is not None else self._finding_line(finding))
            if (
                any(f.concept == "long_term_steroids" for f in concern.findings)
                and "long_term_steroids" in self._texts.phrases
            ):
                # Said once: long-term use is a red flag, not the failed trial the clinician may have meant.
                lines.append(self._texts.phrases["long_term_steroids"])
            return lines
        if section == "contrast" and concern.kind == "cancer_infection_contrast_concern":
            return [self._finding_line(f) for f in concern.safety]
        return [self._finding_line(f) for f in concern.findings]

    def _episode_lines(self, facts: Evidence, therapy: TherapyAssessment) -> list[str]:
        """Every back pain, sciatica, radiculopathy, disc or stenosis condition on record, earliest first.

        The earliest carries the episode's length. A condition is listed once, however many of these concepts its
        codes match; two conditions with the same words and date read as one line.
        """
        by_reference: dict[str, Finding] = {}
        for finding in sorted(facts.episode.findings, key=lambda f: f.recorded or date.max):
            by_reference.setdefault(finding.reference, finding)
        lines: list[str] = []
        for index, finding in enumerate(by_reference.values()):
            if index == 0:
                line = _fill(
                    self._evidence["symptoms"],
                    label=self._label(finding),
                    onset=self._date(facts.episode.onset),
                    duration=self._duration(therapy.symptom_weeks),
                )
            else:
                line = _fill(
                    self._evidence["symptoms_more"], label=self._label(finding), onset=self._date(finding.recorded)
                )
            if line not in lines:
                lines.append(line)
        return lines

    def _uncounted_lines(self, facts: Evidence, therapy: TherapyAssessment) -> list[str]:
        """One line per NSAID or corticosteroid found but not counted as a trial, and why (most recent items)."""
        maintenance = [
            UncountedMedication(c.reference, _drug_words(c), c.start, "maintenance_dose") for c in therapy.maintenance
        ]
        items: list[UncountedMedication] = sorted(
            (*facts.uncounted_medications, *maintenance), key=lambda m: m.start or date.min
        )
        lines = [
            _fill(
                self._evidence["not_counted"],
                drug=_capitalised(item.label),
                date=self._date(item.start),
                reason=self._terms["not_counted"][item.reason],
            )
            for item in items[-MAX_EVIDENCE_ITEMS:]
        ]
        return list(dict.fromkeys(lines))

    def _finding_line(self, finding: Finding) -> str:
        if finding.concept == "advanced_age":
            return _fill(self._evidence["age"], age=finding.label)
        if finding.concept == "fever" and finding.reference.startswith("Observation/"):
            return _fill(self._evidence["temperature"], value=finding.label, date=self._date(finding.recorded))
        if finding.concept == "egfr":
            return _fill(self._evidence["egfr"], value=finding.label, date=self._date(finding.recorded))
        line = _fill(self._evidence["finding"], label=self._label(finding), date=self._date(finding.recorded))
        if finding.by_text and "text_match" in self._texts.phrases:
            # Recognised from words only: lower confidence than a code, and the card says so.
            line = _fill(self._texts.phrases["text_match"], item=line)
        return line

    def _label(self, finding: Finding) -> str:
        """The record's own words for a finding; the concept's name when the record gave none."""
        if not finding.label or finding.label == finding.concept:
            return str(self._terms["concepts"].get(finding.concept, finding.concept.replace("_", " ")))
        return _capitalised(finding.label)

    def _duration(self, weeks: float | None) -> str:
        """ "1 week", "9 weeks", "5 days": whole units, singular when there is one."""
        durations = self._terms["durations"]
        if weeks is None:
            return str(durations["unknown"])
        if weeks < 2:  # "10 days" says more than "1 week"
            days = round(weeks * 7)
            return str(durations["day"]) if days == 1 else _fill(durations["days"], n=days)
        whole = round(weeks)
        return str(durations["week"]) if whole == 1 else _fill(durations["weeks"], n=whole)

    def therapy_lines(self, therapy: TherapyAssessment) -> list[str]:
        """One line per conservative-therapy trial (drug, dose, dates, weeks), then physical therapy.

        Long-term steroid use is not listed here: it is a red flag and the red-flag cards cite it.
        """
        courses = sorted((*therapy.nsaid_courses, *therapy.steroid_courses), key=lambda c: c.start or date.min)
        lines = [self._course_line(c) for c in courses[-MAX_EVIDENCE_ITEMS:]]
        lines.extend(
            _fill(self._evidence["physical_therapy"], label=self._label(f), date=self._date(f.recorded))
            for f in therapy.physical_therapy[-MAX_EVIDENCE_ITEMS:]
        )
        hidden = max(0, len(courses) - MAX_EVIDENCE_ITEMS) + max(0, len(therapy.physical_therapy) - MAX_EVIDENCE_ITEMS)
        if hidden:
            lines.append(_fill(self._evidence["more"], n=hidden))
        return lines

    def _course_line(self, course: MedicationCourse) -> str:
        """Drug and dose, dates and length of one course, in the knowledge base's phrase for its kind."""
        phrases = self._texts.phrases
        name = {"trial": "nsaid_trial", "burst": "steroid_burst"}.get(course.kind, "steroid_prolonged")
        drug = _drug_words(course)
        if course.start is None:
            return _fill(self._evidence["nsaid_no_dates"], drug=drug)
        if course.end is None:
            # "Ongoing" only of an active order; a completed or stopped one without an end date says so.
            end_words = (
                self._evidence["ongoing"] if course.status in ("active", None) else self._evidence["end_not_recorded"]
            )
            return _fill(self._evidence["course_open"], drug=drug, start=self._date(course.start), end=end_words)
        values = {
            "drug": drug,
            "start": self._date(course.start),
            "end": self._date(course.end),
            "weeks": _whole(course.weeks),
            "days": f"{course.weeks * 7:.0f}" if course.weeks is not None else "",
            "duration": self._duration(course.weeks),
        }
        phrase = phrases.get(name)
        # The phrases carry a fixed plural unit ("({weeks} weeks)"): a single unit, or no length, reads better
        # through the generic course line.
        unit_value = values["days"] if "{days}" in (phrase or "") else values["weeks"]
        if phrase is None or course.weeks is None or unit_value in ("0", "1"):
            return _fill(self._evidence["course"], **values)
        return _fill(phrase, **values)

    def _date(self, value: date | None) -> str:
        return value.isoformat() if value is not None else self._evidence["unknown_date"]

    # ------------------------------------------------------------------------------------- suggestions
    def _suggestion(
        self, concern: Concern, proposal: Proposal, order_decision: OrderDecision, rendering: _Rendering
    ) -> Suggestion:
        order = order_decision.order
        text = self._card_text(concern, order_decision).get("suggestions", {}).get(
            proposal.purpose
        ) or self._texts.shared_suggestions.get(proposal.purpose, {})
        purpose = f"{concern.kind}:{proposal.purpose}"
        label = self._suggestion_label(proposal, order)
        description = _fill(str(text.get("description") or label), symptom_weeks=self._thresholds.symptom_weeks)
        if proposal.action == "delete":
            action = Action(type="delete", description=description, resource_id=order.reference)
        elif proposal.action == "create":
            resource = self._new_order(concern, proposal, order_decision, rendering)
            action = Action(type="create", description=description, resource=resource)
        else:
            resource = self._changed_order(concern, proposal, order_decision, rendering)
            action = Action(type="update", description=description, resource=resource)
        return Suggestion(
            label=label,
            uuid=uuid_for(rendering.context.hook_instance, f"suggestion:{purpose}", order.reference),
            actions=(action,),
            is_recommended=proposal.recommended,
        )

    def _suggestion_label(self, proposal: Proposal, order: DraftOrder) -> str:
        """The label of a suggestion: the same words for the same action, whatever the card.

        "Change to <procedure>" for an update of the selected order, "Order <procedure>" for a new order and
        "Remove <procedure> order" for a delete.
        """
        names = self._terms["procedures"]
        if proposal.action == "delete" or proposal.purpose == "keep_urgent":
            key = order.procedure_key  # the selected order itself
        else:
            key = proposal.procedure_key or MRI_WITHOUT_CONTRAST
        # An order this service has no name for is still an imaging order: never "Remove  order".
        procedure = str(names.get(key or "") or str(self._terms["order_category"]).lower())
        if proposal.action != "delete" and proposal.priority == "stat":
            procedure = _fill(self._terms["urgent_procedure"], procedure=procedure)
        elif proposal.action != "delete" and proposal.priority == "urgent":
            procedure = _fill(self._terms["urgent_priority_procedure"], procedure=procedure)
        return _fill(self._terms["suggestion_labels"][proposal.action], procedure=procedure)

    def _code(self, key: str) -> dict[str, Any]:
        return {
            "coding": [
                {"system": system, "code": code, "display": display}
                for system, code, display in self._orderable_codings[key]
            ],
            "text": self._terms["procedures"][key],
        }

    def _rated_extensions(self, proposal: Proposal, consult: str, qcdsm_uri: str | None) -> list[dict[str, Any]]:
        """A suggested procedure carries the rating the decision gave it, when the known facts determine one."""
        return self.rating_extensions(proposal.rating, consult, qcdsm_uri) if proposal.rating is not None else []

    def _order_fields(self, concern: Concern, key: str, proposal: Proposal, rendering: _Rendering) -> dict[str, Any]:
        """What makes a suggested order complete: reasons, evidence references and notes (docs/clinical-rules.md)."""
        # One reasonCode per condition (its ICD-10-CM and SNOMED codes together): the red flags that justify the
        # study first, then the back-pain episode.
        reasons: dict[str, tuple[str, tuple[CodeRef, ...]]] = {}
        therapy = rendering.therapy
        for finding in (*concern.findings, *rendering.evidence.episode.findings):
            if finding.reference.startswith("Condition/") and finding.reference not in reasons:
                reasons[finding.reference] = (self._label(finding), finding.codes)
        notes = self._terms["order_notes"]
        supporting: list[str] = []
        order_notes: list[dict[str, str]] = []
        if concern.kind not in _NO_THERAPY_NOTES:
            supporting = [c.reference for c in (*therapy.nsaid_courses, *therapy.steroid_courses)]
            supporting += [f.reference for f in therapy.physical_therapy]
            therapy_note = (
                _fill(notes["therapy"], therapy="; ".join(rendering.therapy_lines))
                if rendering.therapy_lines
                else notes["no_therapy"]
            )
            order_notes.append({"text": therapy_note})
        if key in self._mri_keys:  # the MRI protocol (sequences, field strength) belongs on an MRI order only
            order_notes.append({"text": _fill(notes["protocol"], protocol=self._mri_protocol)})
        return {
            "priority": proposal.priority,
            "code": self._code(key),
            "reasonCode": _unique_reasons(
                [
                    {
                        "coding": [{"system": c.system, "code": c.code, "display": c.display} for c in codes],
                        "text": label,
                    }
                    for label, codes in reasons.values()
                    if codes
                ]
            ),
            "reasonReference": [{"reference": ref} for ref in reasons],
            "supportingInfo": [{"reference": ref} for ref in dict.fromkeys(supporting)],
            "note": order_notes,
        }

    def _new_order(
        self, concern: Concern, proposal: Proposal, order_decision: OrderDecision, rendering: _Rendering
    ) -> dict[str, Any]:
        key = proposal.procedure_key or "MR_LSPINE_WO"
        context = rendering.context
        reference = order_decision.order.reference
        consult = consult_id(context.session_key, f"{reference}|{concern.kind}:{proposal.purpose}")
        resource: dict[str, Any] = {
            "resourceType": "ServiceRequest",
            "extension": self._rated_extensions(proposal, consult, context.qcdsm_uri),
            "status": "draft",
            "intent": "order",
            # Text only: no verified code for "imaging" ships (docs/clinical-rules.md#suggested-orders), as in the
            # converted order.
            "category": [{"text": self._terms["order_category"]}],
            "subject": {"reference": f"Patient/{context.patient_id}"},
            "encounter": {"reference": f"Encounter/{context.encounter_id}"} if context.encounter_id else None,
            "requester": {"reference": context.user_id} if context.user_id and "/" in context.user_id else None,
        }
        resource.update(self._order_fields(concern, key, proposal, rendering))
        return resource

    def _changed_order(
        self, concern: Concern, proposal: Proposal, order_decision: OrderDecision, rendering: _Rendering
    ) -> dict[str, Any]:
        order = order_decision.order
        context = rendering.context
        key = proposal.procedure_key or "MR_LSPINE_WO"
        if proposal.purpose == "keep_urgent":
            resource = _json_copy(order.raw)
            resource["priority"] = "stat"
            return resource
        consult = context.consult_ids[order.reference]
        resource = _with_extensions(order.raw, self._rated_extensions(proposal, consult, context.qcdsm_uri))
        resource.setdefault("status", "draft")
        resource["intent"] = "order"  # a converted order is an order, whatever the draft was (proposal, plan)
        resource.setdefault("subject", {"reference": f"Patient/{context.patient_id}"})
        fields = self._order_fields(concern, key, proposal, rendering)
        for member in ("reasonCode", "reasonReference", "supportingInfo", "note"):
            existing = resource.get(member)
            resource[member] = _merge(existing if isinstance(existing, list) else [], fields[member])
        # The draft's own reasons and the conditions on record often name the same concept in another order.
        resource["reasonCode"] = _unique_reasons(resource["reasonCode"])
        resource["code"] = fields["code"]
        resource["priority"] = fields["priority"]
        return resource


def _json_copy(raw: Mapping[str, Any] | None) -> dict[str, Any]:
    """A deep copy of a JSON object (a draft order as received): an orjson round trip is several times
    faster than copy.deepcopy, and the order came in as JSON, so nothing is lost."""
    copied: dict[str, Any] = orjson.loads(orjson.dumps(raw or {}))
    return copied


def _with_extensions(raw: Mapping[str, Any] | None, extensions: list[dict[str, Any]]) -> dict[str, Any]:
    """A copy of the resource whose PAMA extensions are replaced by ``extensions``; nothing else changes."""
    resource = _json_copy(raw)
    existing = resource.get("extension")
    existing = existing if isinstance(existing, list) else []
    kept = [e for e in existing if not (isinstance(e, dict) and e.get("url") in _PAMA_URLS)]
    resource["extension"] = kept + extensions
    return resource


def _merge(existing: list[Any], added: list[Any]) -> list[Any]:
    merged = list(existing)
    merged.extend(item for item in added if item not in merged)
    return merged


def _unique_reasons(reasons: list[Any]) -> list[Any]:
    """reasonCode entries with each code listed once: codings already given by an earlier entry are left out of a
    later one, and an entry left with no coding is dropped (the draft's own reasons and the conditions on record
    often name the same concept)."""
    seen: set[tuple[str, str]] = set()
    unique: list[Any] = []
    for reason in reasons:
        if not isinstance(reason, dict) or not isinstance(reason.get("coding"), list):
            unique.append(reason)
            continue
        kept = []
        for coding in reason["coding"]:
            key = _coding_identity(coding)
            if key is None:
                kept.append(coding)
            elif key not in seen:
                seen.add(key)
                kept.append(coding)
        if kept:
            unique.append({**reason, "coding": kept})
        elif not reason["coding"]:
            unique.append(reason)
    return unique


def _coding_identity(coding: Any) -> tuple[str, str] | None:
    """The (system, normalised code) of a coding, so that "M54.16" and "M5416" are the same code."""
    if not isinstance(coding, dict) or not isinstance(coding.get("code"), str):
        return None
    system = coding.get("system") if isinstance(coding.get("system"), str) else None
    return coding_key(system, coding["code"]) or (system or "", coding["code"].strip())


def _drug_words(course: MedicationCourse) -> str:
    """Ingredient and dose text; the ingredient is left out when the dose text already starts with it."""
    dose = course.dose_text or ""
    if course.ingredient and dose.lower().startswith(course.ingredient.lower()):
        return dose
    return " ".join(part for part in (course.ingredient, dose) if part)


def _bullets(lines: Sequence[str]) -> str:
    return "\n".join(f"- {line}" for line in lines if line)


def _whole(value: float | None) -> str:
    return "" if value is None else f"{value:.0f}"


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:] if text else text


def _summary(text: str) -> str:
    """CDS Hooks summaries must stay under 140 characters, whatever a placeholder expanded to."""
    return text if len(text) < 140 else _cut(text, 139)


def _cut(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` characters, cut at a word boundary and marked with an ellipsis."""
    if len(text) <= limit:
        return text
    head = text[: limit - 1]
    space = head.rfind(" ")
    if space > limit // 2:
        head = head[:space]
    return head.rstrip(" ,;:.-") + "…"
