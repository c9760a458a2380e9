"""Knowledge base types and loader. (Skeleton: the implementation fills in the data and the loader.)"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

AcrCategory = Literal["UA", "MBA", "UNA"]


@dataclass(frozen=True)
class Thresholds:
    """Clinical thresholds (PRODUCT.md §3.2); defaults here, overridable per service in ``hooks/*.json``."""

    symptom_weeks: int = 6  # failed conservative therapy needs at least this many weeks of symptoms
    nsaid_trial_weeks: int = 2  # an adequate NSAID trial lasts at least this long (or 2+ separate orders)
    nsaid_trial_min_orders: int = 2
    steroid_burst_weeks: int = 3  # a course up to this long is a burst; longer is "prolonged"
    long_term_steroid_months: int = 3  # use at least this long is long-term: a red flag, not a trial
    prior_mri_lookback_months: int = 12  # a lumbar MRI within this window makes a new one a duplicate
    fracture_risk_age: int = 70  # age at or above which fracture risk applies (ACR variant 6 "elderly")
    current_finding_lookback_days: int = 90  # fever, recent infection, trauma, temperature, eGFR
    fever_celsius: float = 38.0
    egfr_contrast_limit: float = 30.0  # eGFR below this is a gadolinium safety concern


@dataclass(frozen=True)
class MedicationInfo:
    ingredient: str  # lower-case ingredient name, e.g. "naproxen"
    drug_class: str  # "nsaid" | "systemic_corticosteroid"
    systemic: bool  # False for topical, ophthalmic, inhaled, nasal ... forms (not a systemic trial)
    antiplatelet_aspirin: bool = False  # low-dose aspirin: never an NSAID trial
    strength: str | None = None  # e.g. "500 MG", from the product table
    confidence: Literal["code", "text"] = "code"  # "text": matched on the ingredient name only


@dataclass(frozen=True)
class ValueSetInfo:
    key: str
    url: str
    version: str
    title: str


class Knowledge:
    """Read-only lookups over the knowledge base. Build it with :func:`load_knowledge`."""

    version: str
    thresholds: Thresholds

    def concepts_of(self, system: str | None, code: str | None) -> frozenset[str]:
        raise NotImplementedError

    def concepts_of_codings(self, codings: Iterable[tuple[str | None, str | None]]) -> frozenset[str]:
        raise NotImplementedError

    def concepts_of_text(self, text: str | None) -> frozenset[str]:
        """Lower-confidence keyword match (procedure and referral text, device names)."""
        raise NotImplementedError

    def medication(self, system: str | None, code: str | None) -> MedicationInfo | None:
        raise NotImplementedError

    def medication_from_text(self, text: str | None) -> MedicationInfo | None:
        raise NotImplementedError

    def procedure_key(self, system: str | None, code: str | None) -> str | None:
        raise NotImplementedError

    def acr_category(self, procedure_key: str, variant: int) -> AcrCategory:
        raise NotImplementedError

    def valueset(self, key: str) -> ValueSetInfo:
        raise NotImplementedError

    @property
    def card_texts(self) -> Mapping[str, Any]:
        raise NotImplementedError


@lru_cache(maxsize=1)
def load_knowledge() -> Knowledge:
    raise NotImplementedError
