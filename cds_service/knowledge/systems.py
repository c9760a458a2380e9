"""Code systems: canonical URIs, the aliases accepted for each, and code normalisation.

Every lookup in the knowledge base is keyed on ``(canonical_system, normalised_code)``.
Records from different EHRs spell the same system differently (``urn:oid:`` forms, ``https``,
a trailing slash, upper case), and ICD-10-CM codes arrive with or without the dot, so both
halves are normalised once here and nowhere else.
"""

from __future__ import annotations

from typing import Final

ICD10CM: Final = "http://hl7.org/fhir/sid/icd-10-cm"
SNOMED: Final = "http://snomed.info/sct"
RXNORM: Final = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOINC: Final = "http://loinc.org"
CPT: Final = "http://www.ama-assn.org/go/cpt"
ATC: Final = "http://www.whocc.no/atc"
RADLEX: Final = "http://www.radlex.org"

CANONICAL_SYSTEMS: Final = frozenset({ICD10CM, SNOMED, RXNORM, LOINC, CPT, ATC, RADLEX})

# Aliases seen in FHIR data, written already in the normalised spelling (see _normalise_uri).
# OIDs are the HL7 registrations of each code system.
_ALIASES: Final[dict[str, str]] = {
    "http://hl7.org/fhir/sid/icd-10-cm": ICD10CM,
    "urn:oid:2.16.840.1.113883.6.90": ICD10CM,
    "http://snomed.info/sct": SNOMED,
    "urn:oid:2.16.840.1.113883.6.96": SNOMED,
    "http://www.nlm.nih.gov/research/umls/rxnorm": RXNORM,
    "urn:oid:2.16.840.1.113883.6.88": RXNORM,
    "http://loinc.org": LOINC,
    "urn:oid:2.16.840.1.113883.6.1": LOINC,
    "http://www.ama-assn.org/go/cpt": CPT,
    "urn:oid:2.16.840.1.113883.6.12": CPT,
    "http://www.whocc.no/atc": ATC,
    "urn:oid:2.16.840.1.113883.6.73": ATC,
    "http://www.radlex.org": RADLEX,
    "http://radlex.org": RADLEX,
}


def _normalise_uri(system: str) -> str:
    uri = system.strip().lower().rstrip("/")
    if uri.startswith("https://"):
        uri = "http://" + uri[len("https://") :]
    return uri


def canonical_system(system: str | None) -> str | None:
    """The canonical URI of a code system the knowledge base knows, or ``None`` for any other system."""
    if not system or not isinstance(system, str):  # data from clients: never trust the type
        return None
    # Exact spellings resolve with one dict lookup; only unusual spellings pay for normalisation.
    exact = _ALIASES.get(system)
    if exact is not None:
        return exact
    return _ALIASES.get(_normalise_uri(system))


def normalise_code(canonical: str, code: str) -> str:
    """The form a code is stored and looked up in: ICD-10-CM upper case without the dot; ATC and RadLex upper case."""
    code = code.strip()
    if canonical == ICD10CM:
        return code.upper().replace(".", "")
    if canonical in (ATC, RADLEX):
        return code.upper()
    return code


def coding_key(system: str | None, code: str | None) -> tuple[str, str] | None:
    """``(canonical_system, normalised_code)`` of a coding; ``None`` for an unknown system or an empty code."""
    if not code or not isinstance(code, str):
        return None
    canonical = canonical_system(system)
    if canonical is None:
        return None
    return canonical, normalise_code(canonical, code)
