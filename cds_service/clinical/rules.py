"""The rule data the decision reads: thresholds, the ACR table and the concept sets, built once per engine.

Every concept set here comes from the knowledge base's role table (``concepts.json``): which concepts
make the back-pain episode, which red flags trigger which ACR variant, which safety concern each concept
raises, where each is found. Nothing clinical is listed in code, so that a concept added to the table
with an existing role takes effect without a code change (docs/clinical-rules.md, "Concept roles").
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from cds_service.errors import ConfigurationError
from cds_service.knowledge import ACR_VARIANTS, PROCEDURE_KEYS, AcrCategory, ConceptRole, Knowledge, Thresholds

MEDICATION_TYPES: tuple[str, ...] = ("MedicationStatement", "MedicationRequest")
# The order in which resource types that could not be obtained are named (the problem list first).
_SOURCE_ORDER: tuple[str, ...] = (
    "Condition", "MedicationStatement", "MedicationRequest", "Procedure", "ServiceRequest", "Device",
    "AllergyIntolerance", "Observation",
)  # fmt: skip
# The red-flag variants, in order of precedence (ACR Appropriateness Criteria, Low Back Pain; docs/clinical-rules.md).
RED_FLAG_VARIANTS: tuple[int, ...] = (4, 7, 6, 5)


@dataclass(frozen=True)
class ClinicalRules:
    """Thresholds, ACR categories and role-derived concept sets; immutable, shared by every request."""

    thresholds: Thresholds
    acr_table: Mapping[tuple[str, int], AcrCategory]
    roles: Mapping[str, ConceptRole]
    drug_class_roles: Mapping[str, str]  # drug class -> "nsaid" | "corticosteroid" | "red_flag"
    drug_class_concepts: Mapping[str, str]  # red-flag drug class -> the concept an exposure is evidence of
    variant_concepts: Mapping[int, frozenset[str]]  # red-flag variant -> the concepts that trigger it
    variant_sources: Mapping[int, tuple[str, ...]]  # red-flag variant -> resource types that could hide a trigger
    episode_concepts: frozenset[str]
    radicular_concepts: frozenset[str]
    indication_concepts: frozenset[str]  # concepts that show the low back pain question
    steroid_factors: Mapping[str, float]  # corticosteroid ingredient -> mg prednisone per mg
    steroid_trial_words: re.Pattern[str] | None  # dose pack, taper, intramuscular: a trial whatever the daily dose

    @classmethod
    def from_knowledge(cls, knowledge: Knowledge, thresholds: Thresholds) -> ClinicalRules:
        roles = knowledge.roles
        drug_roles = {key: row.role for key, row in knowledge.drug_class_roles.items()}
        drug_concepts = {key: row.concept for key, row in knowledge.drug_class_roles.items() if row.concept is not None}
        variant_concepts: dict[int, frozenset[str]] = {}
        variant_sources: dict[int, tuple[str, ...]] = {}
        for variant in RED_FLAG_VARIANTS:
            concepts = frozenset(key for key, role in roles.items() if variant in role.variants)
            sources = {source for key in concepts for source in roles[key].found_in}
            if any(concept in concepts for concept in drug_concepts.values()) or "long_term_steroids" in concepts:
                # Drug exposures (chemotherapy, immunosuppressants, long steroid courses) are triggers too.
                sources.update(MEDICATION_TYPES)
            variant_sources[variant] = tuple(t for t in _SOURCE_ORDER if t in sources)
            variant_concepts[variant] = concepts
        return cls(
            thresholds=thresholds,
            acr_table=_acr_table(knowledge),
            roles=roles,
            drug_class_roles=MappingProxyType(drug_roles),
            drug_class_concepts=MappingProxyType(drug_concepts),
            variant_concepts=MappingProxyType(variant_concepts),
            variant_sources=MappingProxyType(variant_sources),
            episode_concepts=frozenset(key for key, role in roles.items() if role.role == "episode"),
            radicular_concepts=frozenset(key for key, role in roles.items() if role.radicular),
            indication_concepts=frozenset(key for key, role in roles.items() if role.indication),
            steroid_factors=knowledge.steroid_factors,
            steroid_trial_words=knowledge.steroid_trial_pattern,
        )

    def acr_category(self, procedure_key: str, variant: int) -> AcrCategory | None:
        """The ACR category of a procedure in a variant; None when the ACR table does not rate it."""
        return self.acr_table.get((procedure_key, variant))

    def role(self, concept: str) -> ConceptRole | None:
        return self.roles.get(concept)


def _acr_table(knowledge: Knowledge) -> Mapping[tuple[str, int], AcrCategory]:
    """The ACR table as one dict, built once: a missing cell means "not rated by ACR" (no rating given)."""
    table: dict[tuple[str, int], AcrCategory] = {}
    for key in PROCEDURE_KEYS:
        if not knowledge.is_rated_procedure(key):
            continue
        for variant in ACR_VARIANTS:
            table[(key, variant)] = knowledge.acr_category(key, variant)
    if not table:
        raise ConfigurationError("knowledge: the ACR rating table is empty")
    return MappingProxyType(table)
