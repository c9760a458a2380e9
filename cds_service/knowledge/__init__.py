"""The knowledge base: value sets, medications, procedures, ACR ratings, card texts and thresholds, as data.

Everything here is loaded and validated once per process by :func:`load_knowledge` (cached)
and is read-only afterwards. Every lookup is a hash lookup on a normalised ``(system, code)``
pair (ICD-10-CM codes are matched with or without the dot; ICD-10-CM ranges are expanded at
load time, not enumerated by hand in the data files).

Concepts: the keys of ``concepts.json``, each with its role (what it is evidence of, where the record
reader looks for it, how time limits it) and one FHIR ValueSet file ``valuesets/<key>.json`` with its
codes. :meth:`Knowledge.concepts_of` returns these keys; :attr:`Knowledge.roles` their roles. Adding a
concept with an existing role is a data-only change: a value set, a row in ``concepts.json`` and its
name in ``cards.json`` ``terms.concepts`` (the loader refuses any of the three without the others).
Procedure keys returned by :meth:`Knowledge.procedure_key` (the ACR procedure names):
    MR_LSPINE_WO, MR_LSPINE_W, MR_LSPINE_WWO, MR_LSPINE (contrast unspecified),
    CT_LSPINE_WO, CT_LSPINE_W, CT_LSPINE_WWO, CT_MYELO_LSPINE, XR_LSPINE, BONE_SCAN
Drug classes in :class:`MedicationInfo`: the keys of ``concepts.json`` ``drug_classes``.
ACR categories: "UA" (usually appropriate), "MBA" (may be appropriate), "UNA" (usually not appropriate).
Variants: 1..7 of the ACR Appropriateness Criteria, Low Back Pain (docs/clinical-rules.md).
:meth:`Knowledge.acr_category` raises KeyError for a key the ACR table does not list
(``MR_LSPINE``) or a variant outside 1..7; :meth:`Knowledge.is_rated_procedure` asks first.

Confidence: concepts whose value set holds no code are found only by
:meth:`Knowledge.concepts_of_text`, a lower-confidence whole-word keyword match.
"""

from cds_service.knowledge.base import (
    ACR_VARIANTS,
    KNOWLEDGE_VERSION,
    PROCEDURE_KEYS,
    AcrCategory,
    ConceptRole,
    DrugClassRole,
    Knowledge,
    MedicationInfo,
    ProcedureInfo,
    Thresholds,
    ValueSetInfo,
    check_knowledge,
    load_knowledge,
)

__all__ = [
    "ACR_VARIANTS",
    "KNOWLEDGE_VERSION",
    "PROCEDURE_KEYS",
    "AcrCategory",
    "ConceptRole",
    "DrugClassRole",
    "Knowledge",
    "MedicationInfo",
    "ProcedureInfo",
    "Thresholds",
    "ValueSetInfo",
    "check_knowledge",
    "load_knowledge",
]
