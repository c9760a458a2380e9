"""The knowledge base: value sets, medications, procedures, ACR ratings, card texts and thresholds, as data.

Everything here is loaded and validated once per process by :func:`load_knowledge` (cached)
and is read-only afterwards. Every lookup is a hash lookup on a normalised ``(system, code)``
pair (ICD-10-CM codes are matched with or without the dot; ICD-10-CM ranges are expanded at
load time, not enumerated by hand in the data files).

CONTRACT (shared by the knowledge base and the clinical engine; change both together):

Concept keys returned by :meth:`Knowledge.concepts_of` (one FHIR ValueSet file each, in
``cds_service/knowledge/valuesets/<key>.json``):
    low_back_pain, sciatica, lumbar_radiculopathy, lumbar_disc_disorder, lumbar_stenosis,
    cauda_equina_syndrome, urinary_retention, fecal_incontinence, saddle_anesthesia,
    malignancy, spinal_infection, fever, recent_infection, iv_drug_use, hiv, transplant,
    immunosuppression, long_term_steroids, weight_loss, osteoporosis, vertebral_fracture,
    low_velocity_trauma, prior_lumbar_surgery, physical_therapy, epidural_steroid_injection,
    spine_intervention_referral, mr_implant, kidney_failure, dialysis, pregnancy,
    gadolinium_allergy, body_temperature, egfr, pregnancy_test
Procedure keys returned by :meth:`Knowledge.procedure_key` (ACR procedure names of
reference/clinical.md §1.3):
    MR_LSPINE_WO, MR_LSPINE_W, MR_LSPINE_WWO, MR_LSPINE (contrast unspecified),
    CT_LSPINE_WO, CT_LSPINE_W, CT_LSPINE_WWO, CT_MYELO_LSPINE, XR_LSPINE, BONE_SCAN
Drug classes in :class:`MedicationInfo`: "nsaid", "systemic_corticosteroid".
ACR categories: "UA" (usually appropriate), "MBA" (may be appropriate), "UNA" (usually not appropriate).
Variants: 1..7 as in reference/clinical.md §1.2.
:meth:`Knowledge.acr_category` raises KeyError for a key the ACR table does not list
(``MR_LSPINE``) or a variant outside 1..7; :meth:`Knowledge.is_rated_procedure` asks first.

Confidence: concepts without a verified code (saddle_anesthesia, physical_therapy,
epidural_steroid_injection, spine_intervention_referral, gadolinium_allergy) are found only by
:meth:`Knowledge.concepts_of_text`, a lower-confidence keyword match; ``recent_infection`` and
``low_velocity_trauma`` hold ICD-10-CM categories chosen by the team (see each ValueSet's
description).
"""

from cds_service.knowledge.base import (
    ACR_VARIANTS,
    CONCEPT_KEYS,
    KNOWLEDGE_VERSION,
    PROCEDURE_KEYS,
    AcrCategory,
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
    "CONCEPT_KEYS",
    "KNOWLEDGE_VERSION",
    "PROCEDURE_KEYS",
    "AcrCategory",
    "Knowledge",
    "MedicationInfo",
    "ProcedureInfo",
    "Thresholds",
    "ValueSetInfo",
    "check_knowledge",
    "load_knowledge",
]
