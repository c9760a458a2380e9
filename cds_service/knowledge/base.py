"""Knowledge base types and the read-only :class:`Knowledge` lookups.

The data lives in JSON files next to this module and is loaded and validated once per process
by :func:`load_knowledge` (see :mod:`cds_service.knowledge.loader`). After that every lookup is
a dict lookup on ``(canonical_system, normalised_code)``; nothing is built per request.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Final, Literal

from cds_service.knowledge.systems import coding_key

if TYPE_CHECKING:
    from cds_service.knowledge.medications import MedicationIndex

AcrCategory = Literal["UA", "MBA", "UNA"]

KNOWLEDGE_VERSION: Final = "2026.11.0"
VALUESET_BASE_URL: Final = "http://lumbar-imaging-cds.example.org/fhir/ValueSet/"

PROCEDURE_KEYS: Final[tuple[str, ...]] = (
    "MR_LSPINE_WO", "MR_LSPINE_W", "MR_LSPINE_WWO", "MR_LSPINE",
    "CT_LSPINE_WO", "CT_LSPINE_W", "CT_LSPINE_WWO", "CT_MYELO_LSPINE", "XR_LSPINE", "BONE_SCAN",
)  # fmt: skip

ACR_VARIANTS: Final[tuple[int, ...]] = (1, 2, 3, 4, 5, 6, 7)

_EMPTY: Final[frozenset[str]] = frozenset()
# Bounds of the lookup memos: far above the distinct codings and labels of real charts, far below a worker's memory.
_MEMO_ENTRIES: Final = 50_000
_MEMO_TEXT_LENGTH: Final = 200


def _remember(memo: dict[Any, Any], key: Any, value: object) -> None:
    """Store a lookup answer, bounded in entries and in the length of what it keeps.

    A full memo starts again rather than grow, and a key holding a string longer than a label is not kept at
    all: entries and their size both bounded, a client sending junk codes cannot bloat a worker. Thread-safe
    without a lock: each dict operation is atomic under the GIL, and a lost entry is only recomputed.
    """
    parts = key if type(key) is tuple else (key,)
    if any(type(part) is str and len(part) > _MEMO_TEXT_LENGTH for part in parts):
        return
    if len(memo) >= _MEMO_ENTRIES:
        memo.clear()
    memo[key] = value


@dataclass(frozen=True)
class Thresholds:
    """Clinical thresholds (docs/clinical-rules.md, "Thresholds"); overridable per service in ``hooks/*.json``."""

    symptom_weeks: int = 6  # failed conservative therapy needs at least this many weeks of symptoms
    nsaid_trial_weeks: int = 2  # an adequate NSAID trial lasts at least this long (or 2+ separate orders)
    nsaid_trial_min_orders: int = 2
    steroid_burst_weeks: int = 3  # a course up to this long is a burst; longer is "prolonged"
    # A steroid course starting at this daily prednisone-equivalent dose or more is an anti-inflammatory trial; below
    # it, maintenance therapy (not a trial).
    steroid_trial_min_daily_mg: float = 20.0
    long_term_steroid_months: int = 3  # use at least this long is long-term: a red flag, not a trial
    prior_mri_lookback_months: int = 12  # a lumbar MRI within this window makes a new one a duplicate
    fracture_risk_age: int = 70  # age at or above which fracture risk applies (ACR variant 6 "elderly")
    adult_age: int = 18  # below this age the adult Low Back Pain criteria do not apply
    current_finding_lookback_days: int = 90  # fever, recent infection, trauma, temperature, eGFR
    pregnancy_max_weeks: int = 43  # a pregnancy recorded longer ago than this has ended, whatever its status
    fever_celsius: float = 38.0
    egfr_contrast_limit: float = 30.0  # eGFR below this is a gadolinium safety concern

    def with_overrides(self, overrides: Mapping[str, int | float]) -> Thresholds:
        """These thresholds with a service's ``_config.thresholds`` applied.

        The overrides were checked against ``cds_service/schemas/service-config.schema.json`` when the
        service definitions were loaded (known names, whole numbers where a field is whole, sensible ranges):
        that schema is the one threshold validator.
        """
        if not overrides:
            return self
        return dataclasses.replace(self, **overrides)  # type: ignore[arg-type]  # names and types: the schema's


@dataclass(frozen=True)
class MedicationInfo:
    # Lower-case ingredient name, e.g. "naproxen"; the class's generic name ("nsaid", "glucocorticoid",
    # "antineoplastic" ...) when only the ATC class is known.
    ingredient: str
    # "nsaid" | "systemic_corticosteroid" (conservative therapy; long-term steroids are also a red flag) |
    # "antineoplastic" | "hormonal_cancer_therapy" | "immunosuppressant" (red flags: cancer, immunosuppression)
    drug_class: str
    systemic: bool  # False for topical, ophthalmic, inhaled, nasal ... forms (not a systemic trial or exposure)
    antiplatelet_aspirin: bool = False  # low-dose aspirin: never an NSAID trial
    strength: str | None = None  # e.g. "500 MG" or "20 MG/ML", from the product table or the text
    confidence: Literal["code", "text"] = "code"  # "text": matched on the ingredient name only
    dose_form: str | None = None  # RxNorm dose form of a product code, e.g. "Oral Tablet", "Topical Cream"


@dataclass(frozen=True)
class ValueSetInfo:
    key: str
    url: str
    version: str
    title: str
    code_count: int = 0  # codes after load-time expansion (0: recognised by text keywords only)
    text_only: bool = False  # no verified code: only concepts_of_text can find this concept


ConceptRoleName = Literal[
    "episode", "red_flag", "context", "motor_deficit", "therapy", "candidacy", "safety", "measurement"
]  # fmt: skip
Timing = Literal["history", "active", "current", "present"]


@dataclass(frozen=True)
class ConceptRole:
    """What one concept is evidence of, where the record reader looks for it, and how time limits it.

    One row of ``concepts.json`` (schema: ``schemas/concepts.schema.json``; meaning: docs/clinical-rules.md,
    "Concept roles"). The record reader's pre-filter and the decision's concept sets are built from these rows only.
    """

    key: str
    role: ConceptRoleName
    found_in: frozenset[str]  # resource types the record reader looks for it in
    timing: Timing
    variants: tuple[int, ...] = ()  # red flags: the ACR variants it is a trigger of
    radicular: bool = False  # episode: sciatica, radiculopathy, disc disorder, stenosis
    indication: bool = False  # shows the low back pain question (the ACR criteria apply)
    requires_indication: bool = False  # counts only together with back pain or sciatica (cauda equina signs)
    requires_any: tuple[str, ...] = ()  # counts only together with one of these concepts (fever)
    concern: str | None = None  # safety: the card kind it raises
    measures: str | None = None  # measurement: temperature, egfr, pregnancy_test
    order_kind: str | None = None  # candidacy: what a draft order of this concept is ("procedure", "referral")
    lookback: str | None = None  # a Thresholds field bounding how old the finding may be (pregnancy_max_weeks)


@dataclass(frozen=True)
class DrugClassRole:
    """What a drug class of ``medications.json`` is evidence of (a row of ``concepts.json`` ``drug_classes``)."""

    key: str
    role: Literal["nsaid", "corticosteroid", "red_flag"]
    concept: str | None = None  # red_flag: the concept an exposure to the class is evidence of


@dataclass(frozen=True)
class ProcedureInfo:
    """One ACR procedure key: its label, modality and IV contrast (without, with, without_and_with, unspecified)."""

    key: str
    label: str
    modality: Literal["MR", "CT", "XR", "NM"]
    iv_contrast: Literal["without", "with", "without_and_with", "unspecified"]

    @property
    def uses_gadolinium(self) -> bool:
        """True for MRI orders that give IV (gadolinium) contrast."""
        return self.modality == "MR" and self.iv_contrast in ("with", "without_and_with")


@dataclass(frozen=True)
class KnowledgeTables:
    """Everything :class:`Knowledge` looks up, already built and validated by the loader."""

    version: str
    concepts: Mapping[tuple[str, str], frozenset[str]]
    roles: Mapping[str, ConceptRole]
    drug_class_roles: Mapping[str, DrugClassRole]
    displays: Mapping[tuple[str, str], str]
    valuesets: Mapping[str, ValueSetInfo]
    keyword_pattern: re.Pattern[str] | None
    keyword_concepts: Mapping[str, frozenset[str]]
    medications: MedicationIndex
    procedures: Mapping[tuple[str, str], str]
    procedure_infos: Mapping[str, ProcedureInfo]
    procedure_codings: Mapping[str, tuple[tuple[str, str, str], ...]]
    acr: Mapping[str, Mapping[int, AcrCategory]]
    acr_inferred: frozenset[tuple[str, int]]
    mri_codings: tuple[tuple[str, str, str], ...]
    mri_protocol: str
    cards: Mapping[str, Any]
    steroid_factors: Mapping[str, float]  # ingredient -> mg prednisone per mg (corticosteroids.json)
    steroid_trial_pattern: re.Pattern[str] | None  # dose pack, taper, intramuscular (corticosteroids.json)


_SEPARATORS: Final = re.compile(r"[\s\-]+")


class Knowledge:
    """Read-only lookups over the knowledge base. Build it with :func:`load_knowledge`.

    Lookups accept any common spelling of a system URI (see :mod:`cds_service.knowledge.systems`)
    and ICD-10-CM codes with or without the dot. Unknown systems and codes give empty answers.
    """

    version: str
    thresholds: Thresholds

    def __init__(self, tables: KnowledgeTables, thresholds: Thresholds | None = None) -> None:
        self._tables = tables
        self.version = tables.version
        self.thresholds = thresholds if thresholds is not None else Thresholds()
        # Answers by the coding or text exactly as it arrived: a chart repeats the same few codings, and
        # normalising the system and code (or running the keyword pattern) costs more than the lookup.
        self._concepts_by_coding: dict[tuple[object, object], frozenset[str]] = {}
        self._concepts_by_text: dict[str, frozenset[str]] = {}
        self._medication_by_coding: dict[tuple[object, object], MedicationInfo | None] = {}
        self._medication_by_text: dict[str, MedicationInfo | None] = {}
        self._non_systemic_by_text: dict[tuple[str, str], bool] = {}

    # -- concepts ---------------------------------------------------------------------------

    def concepts_of(self, system: str | None, code: str | None) -> frozenset[str]:
        """Concept keys whose value set holds this coding (empty for unknown systems or codes)."""
        arrived = (system, code)
        try:
            return self._concepts_by_coding[arrived]
        except KeyError:
            pass
        except TypeError:  # unhashable client data (a list where a string belongs): nothing to remember
            return _EMPTY
        key = coding_key(system, code)
        concepts = self._tables.concepts.get(key, _EMPTY) if key is not None else _EMPTY
        _remember(self._concepts_by_coding, arrived, concepts)
        return concepts

    def concepts_of_codings(self, codings: Iterable[tuple[str | None, str | None]]) -> frozenset[str]:
        """Union of :meth:`concepts_of` over several codings (e.g. all codings of one CodeableConcept)."""
        found: frozenset[str] = _EMPTY
        for system, code in codings:
            concepts = self.concepts_of(system, code)
            if concepts:
                found = found | concepts
        return found

    def concepts_of_text(self, text: str | None) -> frozenset[str]:
        """Lower-confidence keyword match (procedure and referral text, device names).

        Case-insensitive whole-word match of the keywords in ``keywords.json``; a space in a
        keyword also matches a hyphen. Negation ("no pacemaker") is not detected.
        """
        pattern = self._tables.keyword_pattern
        if not text or not isinstance(text, str) or pattern is None:
            return _EMPTY
        remembered = self._concepts_by_text.get(text)
        if remembered is not None:
            return remembered
        found: frozenset[str] = _EMPTY
        for match in pattern.finditer(text):
            keyword = _SEPARATORS.sub(" ", match.group(0).lower())
            found = found | self._tables.keyword_concepts.get(keyword, _EMPTY)
        if len(text) <= _MEMO_TEXT_LENGTH:  # labels, not narratives
            _remember(self._concepts_by_text, text, found)
        return found

    def display(self, system: str | None, code: str | None) -> str | None:
        """The display text the knowledge base holds for a coding (value sets, procedures), if any."""
        key = coding_key(system, code)
        return self._tables.displays.get(key) if key is not None else None

    def valueset(self, key: str) -> ValueSetInfo:
        """Canonical URL, version and title of the value set of a concept key (KeyError if unknown)."""
        return self._tables.valuesets[key]

    # -- roles --------------------------------------------------------------------------------

    @property
    def concept_keys(self) -> tuple[str, ...]:
        """Every concept key, in the order of ``concepts.json``."""
        return tuple(self._tables.roles)

    @property
    def roles(self) -> Mapping[str, ConceptRole]:
        """The role of every concept key (``concepts.json``)."""
        return self._tables.roles

    @property
    def drug_class_roles(self) -> Mapping[str, DrugClassRole]:
        """The role of every drug class of ``medications.json``."""
        return self._tables.drug_class_roles

    def concepts_found_in(self, resource_type: str) -> frozenset[str]:
        """The concept keys the record reader looks for in resources of this type."""
        return frozenset(key for key, role in self._tables.roles.items() if resource_type in role.found_in)

    # -- medications ------------------------------------------------------------------------

    def medication(self, system: str | None, code: str | None) -> MedicationInfo | None:
        """The drug of a known class (NSAID, steroid, cancer therapy, immunosuppressant) an RxNorm or ATC code names."""
        arrived = (system, code)
        try:
            return self._medication_by_coding[arrived]
        except KeyError:
            pass
        except TypeError:  # unhashable client data: not a code
            return None
        info = self._tables.medications.by_code(system, code)
        _remember(self._medication_by_coding, arrived, info)
        return info

    def medication_from_text(self, text: str | None) -> MedicationInfo | None:
        """Ingredient-name match on display/text (confidence "text"), with dose form and aspirin dose from the text."""
        if not isinstance(text, str) or len(text) > _MEMO_TEXT_LENGTH:
            return self._tables.medications.by_text(text)
        try:
            return self._medication_by_text[text]
        except KeyError:
            info = self._tables.medications.by_text(text)
            _remember(self._medication_by_text, text, info)
            return info

    def medication_of_concept(
        self, codings: Iterable[tuple[str | None, str | None]], text: str | None
    ) -> MedicationInfo | None:
        """Best reading of one medication CodeableConcept: its codes first, refined by its text.

        A code identifies the drug; the text can still tell what the code does not: a topical
        form, or the strength of an aspirin coded only by ingredient (81 mg is antiplatelet).
        """
        return self._tables.medications.of_concept(codings, text)

    def names_non_systemic_form(self, text: str | None, drug_class: str) -> bool:
        """True when ``text`` (a route, dose form or dosage text) names a topical, inhaled, nasal ... form."""
        if not text or not isinstance(text, str):
            return False
        key = (text, drug_class)
        try:
            return self._non_systemic_by_text[key]
        except KeyError:
            answer = not self._tables.medications.is_systemic_text(text, drug_class)
            _remember(self._non_systemic_by_text, key, answer)
            return answer

    @property
    def steroid_factors(self) -> Mapping[str, float]:
        """Prednisone-equivalent factor per corticosteroid ingredient (mg prednisone per mg)."""
        return self._tables.steroid_factors

    @property
    def steroid_trial_pattern(self) -> re.Pattern[str] | None:
        """Words that make a corticosteroid course a short anti-inflammatory trial (dose pack, taper, injection)."""
        return self._tables.steroid_trial_pattern

    def medication_not_counted(self, codings: Iterable[tuple[str | None, str | None]], text: str | None) -> str | None:
        """Why a drug that is not an NSAID or systemic corticosteroid trial still deserves a word on the card.

        The reason key (``"mineralocorticoid"`` for fludrocortisone, ATC H02AA) of a medication the knowledge base
        excludes from the therapy classes on purpose; None for every other drug (including the ones that count).
        """
        return self._tables.medications.not_counted(codings, text)

    # -- procedures and ratings ------------------------------------------------------------

    def procedure_key(self, system: str | None, code: str | None) -> str | None:
        """ACR procedure key (``MR_LSPINE_WO`` ...) of a CPT, LOINC or RadLex code; None if not lumbar imaging."""
        key = coding_key(system, code)
        return self._tables.procedures.get(key) if key is not None else None

    def procedure_info(self, procedure_key: str) -> ProcedureInfo:
        """Label, modality and contrast of a procedure key (KeyError if unknown)."""
        return self._tables.procedure_infos[procedure_key]

    def procedure_codings(self, procedure_key: str) -> tuple[tuple[str, str, str], ...]:
        """``(system, code, display)`` of every verified code of a procedure key (CPT first), for building orders.

        Empty for an unknown key. Use these rather than copies of the codes, so that an order the service
        writes always maps back to the same key.
        """
        return self._tables.procedure_codings.get(procedure_key, ())

    def acr_category(self, procedure_key: str, variant: int) -> AcrCategory:
        """ACR category of a procedure in a variant (docs/clinical-rules.md#acr-rating-table).

        Raises KeyError for a procedure the ACR table does not list (``MR_LSPINE``: contrast not
        specified) or a variant outside 1..7; use :meth:`is_rated_procedure` to ask first.
        """
        return self._tables.acr[procedure_key][variant]

    def is_rated_procedure(self, procedure_key: str) -> bool:
        """True when the ACR table has a row for this procedure key."""
        return procedure_key in self._tables.acr

    def acr_cell_inferred(self, procedure_key: str, variant: int) -> bool:
        """True for cells inferred as UNA* (docs/clinical-rules.md#acr-rating-table), not read in the ACR table."""
        return (procedure_key, variant) in self._tables.acr_inferred

    def mri_without_contrast_codings(self) -> tuple[tuple[str, str, str], ...]:
        """``(system, code, display)`` of the suggested order: CPT 72148 and LOINC 30679-5."""
        return self._tables.mri_codings

    @property
    def mri_protocol(self) -> str:
        """Protocol text for the suggested MRI order (sequences and field strength)."""
        return self._tables.mri_protocol

    # -- cards --------------------------------------------------------------------------------

    @property
    def card_texts(self) -> Mapping[str, Any]:
        """The parsed ``cards.json`` (read-only mappings and tuples): templates, references, override reasons."""
        return self._tables.cards


@lru_cache(maxsize=1)
def load_knowledge() -> Knowledge:
    """The knowledge base of this package, loaded and validated once per process.

    Raises :class:`ConfigurationError` naming the file and the problem when a file is wrong.
    """
    from cds_service.knowledge.loader import load_knowledge_from

    return load_knowledge_from()


def check_knowledge() -> list[str]:
    """Problems in the knowledge files of this package (empty when all is well), for ``cds-service check-config``."""
    from cds_service.knowledge.loader import knowledge_problems

    return knowledge_problems()
