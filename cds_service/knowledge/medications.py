"""Drug classes by ingredient, from codes and text (data: ``medications.json``).

Classes: NSAIDs and systemic corticosteroids (conservative therapy), antineoplastic drugs, hormonal
cancer therapy and immunosuppressants (red flags). Codes: RxNorm ingredients and products (each
product with its strength and dose form), and ATC codes (exact ingredient codes, then the class
prefixes M01A, H02AB, L01, L02, L04; H02AA mineralocorticoids are excluded). Text: ingredient and
brand names as whole words, with the dose form ("gel", "patch", "nasal" ... make it non-systemic)
and the aspirin strength (100 mg or less is antiplatelet, never an NSAID trial).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from cds_service.knowledge.base import MedicationInfo
from cds_service.knowledge.systems import ATC, coding_key

_STRENGTH: Final = re.compile(r"(\d+(?:\.\d+)?)\s*(mg|milligrams?)\b", re.IGNORECASE)


def words_pattern(words: Iterable[str]) -> re.Pattern[str] | None:
    """One case-insensitive whole-word pattern for all ``words`` (longest first; a space also matches a hyphen)."""
    alternatives = sorted({word.lower() for word in words}, key=len, reverse=True)
    if not alternatives:
        return None
    body = "|".join(r"[\s\-]+".join(re.escape(part) for part in re.split(r"[\s\-]+", word)) for word in alternatives)
    return re.compile(rf"(?<![\w]){'(?:' + body + ')'}(?![\w])", re.IGNORECASE)


@dataclass(frozen=True)
class AtcClassRule:
    prefix: str
    drug_class: str
    generic_name: str  # used as MedicationInfo.ingredient when only the class is known


@dataclass(frozen=True)
class MedicationIndex:
    """Built once by the loader; every lookup is a dict lookup or one regex scan of a short text."""

    codes: Mapping[tuple[str, str], MedicationInfo]
    atc_classes: tuple[AtcClassRule, ...]
    atc_excluded_prefixes: tuple[str, ...]
    ingredient_pattern: re.Pattern[str] | None
    ingredient_of_name: Mapping[str, tuple[str, str]]  # lower-case text name -> (ingredient, drug class)
    non_systemic_patterns: Mapping[str, re.Pattern[str] | None]  # drug class -> pattern of non-systemic forms
    antiplatelet_pattern: re.Pattern[str] | None
    antiplatelet_max_mg: float
    unknown_strength_is_antiplatelet: bool
    # Drugs near the therapy classes that never count as a trial (H02AA mineralocorticoids): ATC prefix or lower-case
    # text name -> the reason key the cards explain ("mineralocorticoid").
    not_counted_prefixes: Mapping[str, str] = dataclasses.field(default_factory=dict)
    not_counted_pattern: re.Pattern[str] | None = None
    not_counted_of_name: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def by_code(self, system: str | None, code: str | None) -> MedicationInfo | None:
        """The drug a code names, or None when it is in none of the drug classes."""
        key = coding_key(system, code)
        if key is None:
            return None
        info = self.codes.get(key)
        if info is not None or key[0] != ATC:
            return info
        atc_code = key[1]
        if any(atc_code.startswith(prefix) for prefix in self.atc_excluded_prefixes):
            return None
        for rule in self.atc_classes:
            if atc_code.startswith(rule.prefix):
                return MedicationInfo(ingredient=rule.generic_name, drug_class=rule.drug_class, systemic=True)
        return None

    def by_text(self, text: str | None) -> MedicationInfo | None:
        """The first drug of a known class named in ``text`` (confidence "text")."""
        if not text or not isinstance(text, str) or self.ingredient_pattern is None:
            return None
        match = self.ingredient_pattern.search(text)
        if match is None:
            return None
        ingredient, drug_class = self.ingredient_of_name[re.sub(r"[\s\-]+", " ", match.group(0).lower())]
        strength_mg = _strength_mg(text)
        info = MedicationInfo(
            ingredient=ingredient,
            drug_class=drug_class,
            systemic=self._systemic(text, drug_class),
            strength=_format_mg(strength_mg) if strength_mg is not None else None,
            confidence="text",
        )
        if ingredient == "aspirin":
            info = dataclasses.replace(info, antiplatelet_aspirin=self._antiplatelet(text, strength_mg))
        return info

    def of_concept(self, codings: Iterable[tuple[str | None, str | None]], text: str | None) -> MedicationInfo | None:
        """Codes first; the text then refines dose form and aspirin strength; text alone as the fallback."""
        for system, code in codings:
            info = self.by_code(system, code)
            if info is None:
                continue
            if not text or not isinstance(text, str):
                return info
            if info.systemic and not self._systemic(text, info.drug_class):
                info = dataclasses.replace(info, systemic=False)
            strength_mg = _strength_mg(text)
            if info.strength is None and strength_mg is not None:
                info = dataclasses.replace(info, strength=_format_mg(strength_mg))
            if info.ingredient == "aspirin" and strength_mg is not None:
                # Aspirin codes rarely carry the dose; a stated strength decides antiplatelet vs analgesic.
                info = dataclasses.replace(info, antiplatelet_aspirin=self._antiplatelet(text, strength_mg))
            return info
        return self.by_text(text)

    def not_counted(self, codings: Iterable[tuple[str | None, str | None]], text: str | None) -> str | None:
        """The reason key of a drug that looks like therapy but is excluded from it (fludrocortisone), else None."""
        for system, code in codings:
            key = coding_key(system, code)
            if key is None or key[0] != ATC:
                continue
            for prefix, reason in self.not_counted_prefixes.items():
                if key[1].startswith(prefix):
                    return reason
        if text and isinstance(text, str) and self.not_counted_pattern is not None:
            match = self.not_counted_pattern.search(text)
            if match is not None:
                return self.not_counted_of_name.get(re.sub(r"[\s\-]+", " ", match.group(0).lower()))
        return None

    def is_systemic_text(self, text: str, drug_class: str) -> bool:
        """False when ``text`` names a non-systemic form (topical, ophthalmic, inhaled, nasal ...) of the class."""
        return self._systemic(text, drug_class)

    def _systemic(self, text: str, drug_class: str) -> bool:
        for key in ("all", drug_class):
            pattern = self.non_systemic_patterns.get(key)
            if pattern is not None and pattern.search(text):
                return False
        return True

    def _antiplatelet(self, text: str, strength_mg: float | None) -> bool:
        if self.antiplatelet_pattern is not None and self.antiplatelet_pattern.search(text):
            return True
        if strength_mg is None:
            return self.unknown_strength_is_antiplatelet
        return strength_mg <= self.antiplatelet_max_mg


def _strength_mg(text: str) -> float | None:
    match = _STRENGTH.search(text)
    return float(match.group(1)) if match else None


def _format_mg(value: float) -> str:
    return f"{value:g} MG"
