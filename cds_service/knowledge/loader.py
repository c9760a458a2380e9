"""Load and validate the knowledge files; build the lookup tables once.

Files (all under ``cds_service/knowledge/``, all versioned with :data:`KNOWLEDGE_VERSION`):

``concepts.json``                 the role of every concept key and drug class (schema: ``schemas/``)
``valuesets/<concept key>.json``  FHIR R4 ValueSets; ICD-10-CM filters expanded here
``icd10cm_snapshot.json``         ICD-10-CM expansions and descriptions (generated: see ``icd10cm.py``)
``keywords.json``                 text keywords per concept (lower confidence)
``medications.json``              drug classes by ingredient (NSAID, steroid, cancer therapy, immunosuppressant)
``corticosteroids.json``           prednisone equivalents and the words of a short steroid trial
``procedures.json``               imaging codes -> ACR procedure keys; the suggested MRI order
``acr_ratings.json``              ACR category per procedure key and variant
``cards.json``                    card templates, references and override reasons

Every problem is reported as ``"<file>: <problem>"``. :func:`load_knowledge_from` raises
:class:`ConfigurationError` listing them; :func:`knowledge_problems` returns them.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, cast, get_args

from cds_service.errors import ConfigurationError
from cds_service.knowledge import icd10cm
from cds_service.knowledge.base import (
    ACR_VARIANTS,
    KNOWLEDGE_VERSION,
    PROCEDURE_KEYS,
    VALUESET_BASE_URL,
    AcrCategory,
    ConceptRole,
    DrugClassRole,
    Knowledge,
    KnowledgeTables,
    MedicationInfo,
    ProcedureInfo,
    ValueSetInfo,
)
from cds_service.knowledge.medications import AtcClassRule, MedicationIndex, words_pattern
from cds_service.knowledge.systems import ATC, CANONICAL_SYSTEMS, ICD10CM, RXNORM, normalise_code

KNOWLEDGE_DIR: Final = Path(__file__).resolve().parent
SOURCE_EXTENSION: Final = "http://lumbar-imaging-cds.example.org/fhir/StructureDefinition/source"
SUMMARY_LIMIT: Final = 140  # CDS Hooks: summary "<140 characters"
CARD_INDICATORS: Final = frozenset({"info", "warning", "critical"})
# ATC groups an ingredient's own ATC code must fall in, per class (WHOCC index); any other is a data error.
_ATC_GROUPS: Final[dict[str, tuple[str, ...]]] = {
    "nsaid": ("M01A", "N02BA"),
    "systemic_corticosteroid": ("H02AB",),
    "antineoplastic": ("L01",),
    "hormonal_cancer_therapy": ("L02",),
    "immunosuppressant": ("L04",),
}
# The cards the clinical engine renders (docs/clinical-rules.md, "Cards"); safety concerns of concepts.json add theirs.
REQUIRED_CARDS: Final[tuple[str, ...]] = (
    "cauda_equina", "cancer_infection", "cancer_infection_contrast_concern", "fracture_risk", "prior_surgery",
    "failed_therapy_convert", "failed_therapy_create", "confirm_candidacy", "conservative_care_first",
    "no_documented_therapy", "duplicate_mri", "mr_implant", "contrast_safety", "pregnancy", "data_missing",
    "data_missing_rated", "inadequate_therapy", "trial_length_unknown", "motor_deficit", "duplicate_draft",
    "child_criteria", "child_red_flag", "child_cauda_equina", "duration_unknown",
)  # fmt: skip
# The sections of cards.json "terms" the clinical engine's renderer reads (cds_service/clinical/cards.py).
TERM_SECTIONS: Final[tuple[str, ...]] = (
    "procedures", "ratings", "categories", "rating_action", "rating_action_no_category", "order_kinds",
    "missing_types", "missing_many", "evidence", "not_counted", "concerns", "order_notes", "durations", "concepts",
    "suggestion_labels", "urgent_procedure", "urgent_priority_procedure", "order_category", "headings",
)  # fmt: skip
# Placeholders the renderer fills in term texts.
_TERM_PLACEHOLDERS: Final = frozenset(
    {"rating", "category", "label", "date", "onset", "duration", "age", "value", "procedure", "drug", "start",
     "end", "n", "reason", "limit", "therapy", "protocol"}
)  # fmt: skip
# A verdict word the product never uses (docs/clinical-rules.md#cards): ACR category words only.
_FORBIDDEN_WORD: Final = re.compile(r"\binappropriate\b", re.IGNORECASE)
_STRENGTH_FORMAT: Final = re.compile(r"^\d+(?:\.\d+)? (?:MG|UNT)(?:/ML|/MG)?$")
_SEPARATORS: Final = re.compile(r"[\s\-]+")


class _Problems:
    """Collects ``"<file>: <problem>"`` messages so that one run reports every problem."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def add(self, file: str, message: str) -> None:
        self.messages.append(f"{file}: {message}")


def load_knowledge_from(directory: Path | None = None) -> Knowledge:
    """Load, validate and index the knowledge files in ``directory`` (default: this package).

    Not cached: use :func:`cds_service.knowledge.load_knowledge` in the service.
    """
    problems = _Problems()
    tables = _build(directory or KNOWLEDGE_DIR, problems)
    if problems.messages or tables is None:
        raise ConfigurationError("knowledge base: " + "; ".join(problems.messages))
    return Knowledge(tables)


def knowledge_problems(directory: Path | None = None) -> list[str]:
    """Every problem in the knowledge files of ``directory`` (default: this package); empty when valid."""
    problems = _Problems()
    _build(directory or KNOWLEDGE_DIR, problems)
    return problems.messages


def _build(directory: Path, problems: _Problems) -> KnowledgeTables | None:
    roles, drug_class_roles = _load_roles(directory, problems)
    concepts, displays, valuesets = _load_valuesets(directory, problems, roles)
    keyword_pattern, keyword_concepts = _load_keywords(directory, problems, valuesets, roles)
    medications = _load_medications(directory, problems, frozenset(drug_class_roles))
    procedures, procedure_infos, mri_codings, mri_protocol, procedure_displays = _load_procedures(directory, problems)
    procedure_codings: dict[str, list[tuple[str, str, str]]] = {}
    for (system, code), key in procedures.items():
        procedure_codings.setdefault(key, []).append((system, code, procedure_displays[(system, code)]))
    acr, acr_inferred = _load_acr(directory, problems)
    steroid_factors, steroid_trial_pattern = _load_corticosteroids(directory, problems, medications)
    cards = _load_cards(directory, problems, roles)
    if medications is not None and cards is not None:
        words = (cards.get("terms") or {}).get("not_counted") or {}
        for reason in sorted(set(medications.not_counted_prefixes.values()) - set(words)):
            problems.add("cards.json", f"terms 'not_counted': reason {reason!r} of medications.json has no words")
    if problems.messages or medications is None or cards is None:
        return None
    return KnowledgeTables(
        version=KNOWLEDGE_VERSION,
        concepts=MappingProxyType({key: frozenset(keys) for key, keys in concepts.items()}),
        roles=MappingProxyType(roles),
        drug_class_roles=MappingProxyType(drug_class_roles),
        displays=MappingProxyType({**displays, **procedure_displays}),
        valuesets=MappingProxyType(valuesets),
        keyword_pattern=keyword_pattern,
        keyword_concepts=MappingProxyType(keyword_concepts),
        medications=medications,
        procedures=MappingProxyType(procedures),
        procedure_infos=MappingProxyType(procedure_infos),
        procedure_codings=MappingProxyType({key: tuple(codings) for key, codings in procedure_codings.items()}),
        acr=MappingProxyType({key: MappingProxyType(row) for key, row in acr.items()}),
        acr_inferred=frozenset(acr_inferred),
        mri_codings=mri_codings,
        mri_protocol=mri_protocol,
        cards=cards,
        steroid_factors=MappingProxyType(steroid_factors),
        steroid_trial_pattern=steroid_trial_pattern,
    )


def _read_json(directory: Path, relative: str, problems: _Problems) -> Any:
    path = directory / relative
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        problems.add(relative, "file not found")
    except (OSError, UnicodeDecodeError) as error:
        problems.add(relative, f"cannot be read ({error})")
    except json.JSONDecodeError as error:
        problems.add(relative, f"invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}")
    return None


def _check_version(file: str, data: Mapping[str, Any], problems: _Problems) -> None:
    if data.get("version") != KNOWLEDGE_VERSION:
        problems.add(file, f"version is {data.get('version')!r}, expected {KNOWLEDGE_VERSION!r}")


def _source_of(element: Mapping[str, Any]) -> str | None:
    for extension in element.get("extension") or ():
        if extension.get("url") == SOURCE_EXTENSION and isinstance(extension.get("valueString"), str):
            return cast(str, extension["valueString"])
    return None


# -- concept roles ------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _roles_validator() -> Any:
    from jsonschema import Draft202012Validator

    schema = json.loads((KNOWLEDGE_DIR / "schemas" / "concepts.schema.json").read_text(encoding="utf-8"))
    return Draft202012Validator(schema)


def _load_roles(directory: Path, problems: _Problems) -> tuple[dict[str, ConceptRole], dict[str, DrugClassRole]]:
    """``concepts.json``: checked against its schema, then for references between its rows."""
    file = "concepts.json"
    data = _read_json(directory, file, problems)
    if data is None:
        return {}, {}
    errors = sorted(_roles_validator().iter_errors(data), key=lambda error: list(error.absolute_path))
    for error in errors:
        where = "/".join(str(part) for part in error.absolute_path) or "(top level)"
        problems.add(file, f"{where}: {error.message}")
    if errors:
        return {}, {}
    _check_version(file, data, problems)
    roles = {
        key: ConceptRole(
            key=key,
            role=row["role"],
            found_in=frozenset(row["found_in"]),
            timing=row["timing"],
            variants=tuple(row.get("variants", ())),
            radicular=bool(row.get("radicular", False)),
            indication=bool(row.get("indication", False)),
            requires_indication=bool(row.get("requires_indication", False)),
            requires_any=tuple(row.get("requires_any", ())),
            concern=row.get("concern"),
            measures=row.get("measures"),
            order_kind=row.get("order_kind"),
            lookback=row.get("lookback"),
        )
        for key, row in data["concepts"].items()
    }
    for role in roles.values():
        for other in role.requires_any:
            if other not in roles:
                problems.add(file, f"concept {role.key!r}: requires_any names unknown concept {other!r}")
    drug_classes = {
        key: DrugClassRole(key=key, role=row["role"], concept=row.get("concept"))
        for key, row in data["drug_classes"].items()
    }
    for drug_class in drug_classes.values():
        if drug_class.concept is not None and drug_class.concept not in roles:
            problems.add(file, f"drug class {drug_class.key!r}: names unknown concept {drug_class.concept!r}")
    return roles, drug_classes


# -- value sets --------------------------------------------------------------------------------


def _load_valuesets(
    directory: Path, problems: _Problems, roles: Mapping[str, ConceptRole]
) -> tuple[dict[tuple[str, str], set[str]], dict[tuple[str, str], str], dict[str, ValueSetInfo]]:
    # Imported here: fhir.resources is heavy and only the loader needs the ValueSet model.
    from fhir.resources.R4B.valueset import ValueSet

    concepts: dict[tuple[str, str], set[str]] = {}
    displays: dict[tuple[str, str], str] = {}
    infos: dict[str, ValueSetInfo] = {}
    snapshot_problem = icd10cm.snapshot_problem()
    if snapshot_problem is not None:
        problems.add(icd10cm.SNAPSHOT_FILE, snapshot_problem)
    folder = directory / "valuesets"
    present = {path.stem for path in folder.glob("*.json")} if folder.is_dir() else set()
    for extra in sorted(present - set(roles)):
        problems.add(f"valuesets/{extra}.json", f"concept {extra!r} has no role (add it to concepts.json)")
    for key in roles:
        file = f"valuesets/{key}.json"
        if key not in present:
            problems.add("concepts.json", f"concept {key!r} has no value set ({file} is missing)")
            continue
        data = _read_json(directory, file, problems)
        if data is None:
            continue
        if not isinstance(data, dict):
            problems.add(file, "expected a ValueSet object")
            continue
        try:
            ValueSet.model_validate(data)
        except Exception as error:  # pydantic's ValidationError; its first lines name the field
            problems.add(file, "not a valid FHIR R4 ValueSet: " + " ".join(str(error).split("\n")[:3]))
            continue
        codes = _valueset_codes(file, key, data, problems)
        for canonical, code, display in codes:
            concepts.setdefault((canonical, code), set()).add(key)
            displays.setdefault((canonical, code), display)
        infos[key] = ValueSetInfo(
            key=key,
            url=cast(str, data["url"]),
            version=cast(str, data["version"]),
            title=cast(str, data.get("title", "")),
            code_count=len(codes),
            text_only=not codes,
        )
    return concepts, displays, infos


def _valueset_codes(file: str, key: str, data: Mapping[str, Any], problems: _Problems) -> list[tuple[str, str, str]]:
    """Checks one ValueSet file and returns its codes as ``(canonical system, normalised code, display)``."""
    expected_url = VALUESET_BASE_URL + key
    if data.get("url") != expected_url:
        problems.add(file, f"url is {data.get('url')!r}, expected {expected_url!r}")
    _check_version(file, data, problems)
    if data.get("status") != "active":
        problems.add(file, "status must be 'active'")
    for field in ("name", "title", "description"):
        if not data.get(field):
            problems.add(file, f"{field} is missing")
    codes: list[tuple[str, str, str]] = []
    enumerated: set[tuple[str, str, str]] = set()
    for index, include in enumerate((data.get("compose") or {}).get("include") or ()):
        where = f"compose.include[{index}]"
        system = include.get("system")
        if system not in CANONICAL_SYSTEMS:
            problems.add(file, f"{where}: system {system!r} is not a canonical system URI")
            continue
        if include.get("concept") and include.get("filter"):
            problems.add(file, f"{where}: use either concept or filter, not both (FHIR would intersect them)")
            continue
        for concept in include.get("concept") or ():
            code, display = concept.get("code", ""), concept.get("display")
            if not display:
                problems.add(file, f"{where}: {code} has no display")
                continue
            if _source_of(concept) is None:
                problems.add(file, f"{where}: {code} does not cite its source")
            enumerated.add((system, code, display))
            if system != ICD10CM or _icd_display_matches(file, where, code, display, problems):
                codes.append((system, normalise_code(system, code), display))
        filters = include.get("filter") or ()
        if filters and _source_of(include) is None:
            problems.add(file, f"{where}: filter does not cite its source")
        for item in filters:
            value = str(item.get("value", ""))
            if system != ICD10CM:
                problems.add(file, f"{where}: filters are supported for ICD-10-CM only")
            elif item.get("property") != "concept" or item.get("op") != "is-a":
                problems.add(file, f"{where}: only the filter property 'concept' with op 'is-a' is supported")
            elif not icd10cm.is_valid_filter(value):
                maybe = "it may be neither an ICD-10-CM code nor a category range"
                _not_in_snapshot(problems, file, f"{where}: ICD-10-CM filter {value!r}", maybe)
            else:
                codes += [(ICD10CM, normalise_code(ICD10CM, code), text) for code, text in icd10cm.expand(value)]
    listed = {
        (entry.get("system"), entry.get("code"), entry.get("display"))
        for entry in (data.get("expansion") or {}).get("contains") or ()
    }
    if listed != enumerated:
        missing = sorted(f"{code}" for _system, code, _display in enumerated - listed)
        extra = sorted(f"{code}" for _system, code, _display in listed - enumerated)
        problems.add(
            file,
            "expansion.contains must list exactly the compose concepts with the same display"
            + (f"; not in expansion: {', '.join(missing)}" if missing else "")
            + (f"; not in compose: {', '.join(str(code) for code in extra)}" if extra else ""),
        )
    return codes


def _not_in_snapshot(problems: _Problems, file: str, what: str, maybe: str) -> None:
    """Report an ICD-10-CM item the shipped snapshot does not hold (unless the snapshot itself is the problem)."""
    if icd10cm.snapshot_problem() is None:  # else reported once, for the snapshot file
        problems.add(
            file,
            f"{what} is not in {icd10cm.SNAPSHOT_FILE} ({maybe}); regenerate it with `{icd10cm.REGENERATE}`",
        )


def _icd_display_matches(file: str, where: str, code: str, display: str, problems: _Problems) -> bool:
    if not icd10cm.is_code(code):
        _not_in_snapshot(problems, file, f"{where}: {code}", "it may not be an ICD-10-CM code")
        return False
    expected = icd10cm.description(code)
    if display != expected:
        problems.add(file, f"{where}: {code} display {display!r} differs from ICD-10-CM {expected!r}")
        return False
    return True


# -- keywords ----------------------------------------------------------------------------------


def _load_keywords(
    directory: Path, problems: _Problems, valuesets: Mapping[str, ValueSetInfo], roles: Mapping[str, ConceptRole]
) -> tuple[re.Pattern[str] | None, dict[str, frozenset[str]]]:
    file = "keywords.json"
    data = _read_json(directory, file, problems)
    if not isinstance(data, dict):
        return None, {}
    _check_version(file, data, problems)
    by_keyword: dict[str, set[str]] = {}
    for key, entry in (data.get("concepts") or {}).items():
        if key not in roles:
            problems.add(file, f"unknown concept key {key!r} (not in concepts.json)")
            continue
        if not entry.get("source"):
            problems.add(file, f"{key}: does not cite its source")
        keywords = entry.get("keywords")
        if not keywords or not all(isinstance(word, str) and word.strip() for word in keywords):
            problems.add(file, f"{key}: keywords must be a non-empty list of words")
            continue
        for word in keywords:
            by_keyword.setdefault(_SEPARATORS.sub(" ", word.strip().lower()), set()).add(key)
    has_keywords = {key for keys in by_keyword.values() for key in keys}
    for key, info in valuesets.items():
        if info.text_only and key not in has_keywords:
            problems.add(file, f"{key}: the value set has no code, so it needs keywords to be found at all")
    return words_pattern(by_keyword), {word: frozenset(keys) for word, keys in by_keyword.items()}


# -- medications -------------------------------------------------------------------------------


def _mg(strength: str) -> float:
    """The number of a strength such as '81 MG' (per unit of the dose form for '20 MG/ML')."""
    return float(strength.split(" ", 1)[0])


def _load_medications(directory: Path, problems: _Problems, drug_classes: frozenset[str]) -> MedicationIndex | None:
    file = "medications.json"
    data = _read_json(directory, file, problems)
    if not isinstance(data, dict):
        return None
    _check_version(file, data, problems)
    aspirin_rules = data.get("antiplatelet_aspirin") or {}
    unknown_strength_is_antiplatelet = bool(aspirin_rules.get("unknown_strength_is_antiplatelet", True))
    max_mg = aspirin_rules.get("max_strength_mg")
    if isinstance(max_mg, bool) or not isinstance(max_mg, int | float) or max_mg <= 0:
        problems.add(file, "antiplatelet_aspirin.max_strength_mg must be a positive number")
        max_mg = 100
    codes: dict[tuple[str, str], MedicationInfo] = {}

    def register(system: str, code: str, info: MedicationInfo, where: str, source: Any) -> None:
        if not source:
            problems.add(file, f"{where}: {code} does not cite its source")
        key = (system, normalise_code(system, code))
        if key in codes and codes[key] != info:
            problems.add(file, f"{where}: {code} is mapped twice ({codes[key].ingredient} and {info.ingredient})")
        codes[key] = info

    non_systemic = data.get("non_systemic_text") or {}
    non_systemic_patterns = {group: words_pattern(words) for group, words in non_systemic.items() if group != "source"}

    def _form_is_systemic(dose_form: str, drug_class: str) -> bool:
        return not any(
            pattern is not None and pattern.search(dose_form)
            for pattern in (non_systemic_patterns.get("all"), non_systemic_patterns.get(drug_class))
        )

    classes: dict[str, str] = {}
    names: dict[str, tuple[str, str]] = {}
    for entry in data.get("ingredients") or ():
        name, drug_class = entry.get("name", ""), entry.get("drug_class")
        if drug_class not in drug_classes:
            problems.add(file, f"ingredient {name!r}: unknown drug class {drug_class!r}")
            continue
        if name in classes:
            problems.add(file, f"ingredient {name!r} is listed twice")
        classes[name] = drug_class
        antiplatelet = name == "aspirin" and unknown_strength_is_antiplatelet
        for item in entry.get("rxnorm") or ():
            info = MedicationInfo(name, drug_class, systemic=True, antiplatelet_aspirin=antiplatelet)
            register(RXNORM, item.get("code", ""), info, f"ingredient {name!r}", item.get("source"))
        for item in entry.get("atc") or ():
            atc_code = item.get("code", "")
            groups = _ATC_GROUPS[drug_class]
            if not atc_code.startswith(groups):
                outside = f"ATC {atc_code} is outside the {drug_class} ATC group ({', '.join(groups)})"
                problems.add(file, f"ingredient {name!r}: {outside}")
            info = MedicationInfo(name, drug_class, systemic=True)
            register(ATC, atc_code, info, f"ingredient {name!r}", item.get("source"))
        for text_name in entry.get("text_names") or ():
            normalised = _SEPARATORS.sub(" ", text_name.lower())
            if normalised in names and names[normalised][0] != name:
                problems.add(file, f"text name {text_name!r} is given to {names[normalised][0]!r} and {name!r}")
            names[normalised] = (name, drug_class)
    for product in data.get("products") or ():
        code, ingredient = product.get("rxnorm", ""), product.get("ingredient")
        if ingredient not in classes:
            problems.add(file, f"product {code}: unknown ingredient {ingredient!r}")
            continue
        strength = product.get("strength")
        if strength is not None and not _STRENGTH_FORMAT.match(strength):
            problems.add(file, f"product {code}: strength {strength!r} is not like '500 MG' or '20 MG/ML'")
        dose_form = product.get("dose_form")
        systemic = bool(product.get("systemic", True))
        if isinstance(dose_form, str) and dose_form and _form_is_systemic(dose_form, classes[ingredient]) != systemic:
            # The dose form decides; a flag that disagrees with it is a data error, not a second opinion.
            problems.add(file, f"product {code}: systemic {systemic} contradicts its dose form {dose_form!r}")
        # An aspirin product's own strength decides antiplatelet (81 mg) vs analgesic aspirin.
        antiplatelet = ingredient == "aspirin" and (
            unknown_strength_is_antiplatelet if strength is None else _mg(strength) <= float(max_mg)
        )
        info = MedicationInfo(
            ingredient, classes[ingredient], systemic=systemic, strength=strength, antiplatelet_aspirin=antiplatelet,
            dose_form=dose_form if isinstance(dose_form, str) and dose_form else None,
        )  # fmt: skip
        register(RXNORM, code, info, f"product {code}", product.get("source"))
    for item in aspirin_rules.get("atc") or ():
        info = MedicationInfo("aspirin", "nsaid", systemic=True, antiplatelet_aspirin=True)
        register(ATC, item.get("code", ""), info, "antiplatelet_aspirin", item.get("source"))
    rules: list[AtcClassRule] = []
    for rule in data.get("atc_classes") or ():
        if rule.get("drug_class") not in drug_classes or not rule.get("prefix") or not rule.get("generic_name"):
            problems.add(file, f"atc_classes: {rule.get('prefix')!r} needs a prefix, drug_class and generic_name")
            continue
        rules.append(AtcClassRule(rule["prefix"].upper(), rule["drug_class"], rule["generic_name"]))
    excluded = tuple(str(rule.get("prefix", "")).upper() for rule in data.get("atc_excluded_prefixes") or ())
    not_counted_prefixes: dict[str, str] = {}
    not_counted_names: dict[str, str] = {}
    for rule in data.get("atc_excluded_prefixes") or ():
        reason = rule.get("not_counted")
        if not isinstance(reason, str) or not reason:
            problems.add(file, f"atc_excluded_prefixes: {rule.get('prefix')!r} needs a not_counted reason key")
            continue
        not_counted_prefixes[str(rule.get("prefix", "")).upper()] = reason
        for text_name in rule.get("text_names") or ():
            normalised = _SEPARATORS.sub(" ", str(text_name).lower())
            if normalised in names:
                problems.add(file, f"text name {text_name!r} is both a therapy ingredient and excluded")
            not_counted_names[normalised] = reason
    for group in non_systemic:
        if group not in drug_classes | {"all", "source"}:
            problems.add(file, f"non_systemic_text: unknown group {group!r}")
    return MedicationIndex(
        codes=MappingProxyType(codes),
        atc_classes=tuple(rules),
        atc_excluded_prefixes=excluded,
        ingredient_pattern=words_pattern(names),
        ingredient_of_name=MappingProxyType(names),
        non_systemic_patterns=MappingProxyType(non_systemic_patterns),
        antiplatelet_pattern=words_pattern(aspirin_rules.get("text_markers") or ()),
        antiplatelet_max_mg=float(max_mg),
        unknown_strength_is_antiplatelet=unknown_strength_is_antiplatelet,
        not_counted_prefixes=MappingProxyType(not_counted_prefixes),
        not_counted_pattern=words_pattern(not_counted_names),
        not_counted_of_name=MappingProxyType(not_counted_names),
    )


# -- corticosteroids ---------------------------------------------------------------------------


def _load_corticosteroids(
    directory: Path, problems: _Problems, medications: MedicationIndex | None
) -> tuple[dict[str, float], re.Pattern[str] | None]:
    file = "corticosteroids.json"
    data = _read_json(directory, file, problems)
    if not isinstance(data, dict):
        return {}, None
    _check_version(file, data, problems)
    equivalents = data.get("prednisone_equivalent") or {}
    if not equivalents.get("source"):
        problems.add(file, "prednisone_equivalent: does not cite its source")
    factors: dict[str, float] = {}
    known = medications.ingredient_of_name.values() if medications is not None else ()
    steroid_ingredients = {name for name, drug_class in known if drug_class == "systemic_corticosteroid"}
    for ingredient, factor in (equivalents.get("factors") or {}).items():
        if isinstance(factor, bool) or not isinstance(factor, int | float) or not 0 < factor < 100:
            problems.add(file, f"prednisone_equivalent: {ingredient!r} needs a positive factor, not {factor!r}")
            continue
        if medications is not None and ingredient not in steroid_ingredients:
            problems.add(file, f"prednisone_equivalent: {ingredient!r} is not a corticosteroid of medications.json")
        factors[ingredient] = float(factor)
    trial = data.get("trial_words") or {}
    words = trial.get("words")
    if not trial.get("source") or not words or not all(isinstance(w, str) and w.strip() for w in words):
        problems.add(file, "trial_words: needs a source and a non-empty list of words")
        return factors, None
    return factors, words_pattern(words)


# -- procedures and ACR ratings ---------------------------------------------------------------

_MODALITIES: Final = ("MR", "CT", "XR", "NM")
_CONTRASTS: Final = ("without", "with", "without_and_with", "unspecified")


def _load_procedures(directory: Path, problems: _Problems) -> tuple[
    dict[tuple[str, str], str], dict[str, ProcedureInfo], tuple[tuple[str, str, str], ...], str,
    dict[tuple[str, str], str],
]:  # fmt: skip
    file = "procedures.json"
    data = _read_json(directory, file, problems)
    if not isinstance(data, dict):
        return {}, {}, (), "", {}
    _check_version(file, data, problems)
    by_code: dict[tuple[str, str], str] = {}
    displays: dict[tuple[str, str], str] = {}
    infos: dict[str, ProcedureInfo] = {}
    entries = data.get("procedures") or {}
    for missing in sorted(set(PROCEDURE_KEYS) - set(entries)):
        problems.add(file, f"procedure key {missing!r} is missing")
    for key, entry in entries.items():
        if key not in PROCEDURE_KEYS:
            problems.add(file, f"unknown procedure key {key!r}")
            continue
        modality, contrast = entry.get("modality"), entry.get("iv_contrast")
        if modality not in _MODALITIES or contrast not in _CONTRASTS:
            problems.add(file, f"{key}: modality {modality!r} or iv_contrast {contrast!r} is not known")
            continue
        infos[key] = ProcedureInfo(key, str(entry.get("label", key)), modality, contrast)
        for coding in entry.get("codes") or ():
            system, code = coding.get("system"), coding.get("code", "")
            if system not in CANONICAL_SYSTEMS:
                problems.add(file, f"{key}: system {system!r} is not a canonical system URI")
                continue
            if not coding.get("source") or not coding.get("display"):
                problems.add(file, f"{key}: {code} needs a display and a source")
            lookup = (system, normalise_code(system, code))
            if lookup in by_code and by_code[lookup] != key:
                problems.add(file, f"{code} is mapped to two procedure keys ({by_code[lookup]} and {key})")
                continue
            by_code[lookup] = key
            displays[lookup] = str(coding.get("display", ""))
    order = data.get("mri_without_contrast_order") or {}
    codings: list[tuple[str, str, str]] = []
    for coding in order.get("codings") or ():
        system, code, display = coding.get("system", ""), coding.get("code", ""), coding.get("display", "")
        order_key = (system, normalise_code(system, code)) if system in CANONICAL_SYSTEMS else None
        if order_key is None or by_code.get(order_key) != "MR_LSPINE_WO" or displays.get(order_key) != display:
            problems.add(file, f"mri_without_contrast_order: {code} must be an MR_LSPINE_WO code with the same display")
        codings.append((system, code, display))
    if not codings or not order.get("protocol"):
        problems.add(file, "mri_without_contrast_order needs codings and a protocol")
    return by_code, infos, tuple(codings), str(order.get("protocol", "")), displays


def _load_acr(directory: Path, problems: _Problems) -> tuple[dict[str, dict[int, AcrCategory]], set[tuple[str, int]]]:
    file = "acr_ratings.json"
    data = _read_json(directory, file, problems)
    if not isinstance(data, dict):
        return {}, set()
    _check_version(file, data, problems)
    categories = set(get_args(AcrCategory))
    table: dict[str, dict[int, AcrCategory]] = {}
    inferred: set[tuple[str, int]] = set()
    rows = data.get("ratings") or {}
    for key, row in rows.items():
        if key == "MR_LSPINE":
            problems.add(file, "MR_LSPINE (contrast not specified) is not an ACR procedure and must not be rated")
            continue
        if key not in PROCEDURE_KEYS:
            problems.add(file, f"unknown procedure key {key!r}")
            continue
        if not row.get("source"):
            problems.add(file, f"{key}: does not cite its source")
        cells = row.get("ratings") or {}
        if sorted(cells) != [str(variant) for variant in ACR_VARIANTS]:
            problems.add(file, f"{key}: ratings must cover variants 1 to 7 exactly")
            continue
        bad = {variant: value for variant, value in cells.items() if value not in categories}
        if bad:
            problems.add(file, f"{key}: unknown ACR categories {bad} (use UA, MBA, UNA)")
            continue
        table[key] = {int(variant): cast(AcrCategory, value) for variant, value in cells.items()}
        for variant in row.get("inferred") or ():
            if variant not in ACR_VARIANTS or table[key][variant] != "UNA":
                problems.add(file, f"{key}: inferred cell {variant!r} must be a variant whose category is UNA")
            else:
                inferred.add((key, variant))
    for missing in sorted(set(PROCEDURE_KEYS) - {"MR_LSPINE"} - set(rows)):
        problems.add(file, f"procedure key {missing!r} has no ratings")
    return table, inferred


# -- cards -------------------------------------------------------------------------------------


def _placeholders(template: str) -> set[str]:
    return {name for _text, name, _spec, _conversion in string.Formatter().parse(template) if name}


def _load_cards(directory: Path, problems: _Problems, roles: Mapping[str, ConceptRole]) -> Mapping[str, Any] | None:
    file = "cards.json"
    data = _read_json(directory, file, problems)
    if not isinstance(data, dict):
        return None
    _check_version(file, data, problems)
    summary_limits = {name: int(spec.get("max_length", 0)) for name, spec in (data.get("placeholders") or {}).items()}
    detail_names = set(summary_limits) | set(data.get("detail_placeholders") or ())
    reasons = data.get("override_reasons") or {}
    references = data.get("references") or {}
    if not data.get("override_reason_system") or not all(isinstance(text, str) and text for text in reasons.values()):
        problems.add(file, "override reasons need a system and a display for every code")
    source = data.get("source") or {}
    if not source.get("label") or not source.get("url"):
        problems.add(file, "source needs a label and a url")
    cards = data.get("cards") or {}
    for missing in sorted(set(REQUIRED_CARDS) - set(cards)):
        problems.add(file, f"card {missing!r} is missing")
    for role in roles.values():
        if role.concern is not None and role.concern not in cards:
            problems.add(file, f"card {role.concern!r} is missing (the safety concern of concept {role.key!r})")
    for name, card in cards.items():
        _check_card(file, name, card, summary_limits, detail_names, reasons, references, problems)
    for name, suggestion in (data.get("shared_suggestions") or {}).items():
        _check_text(file, f"shared suggestion {name!r}", suggestion.get("description", ""), detail_names, problems)
    for name, phrase in (data.get("phrases") or {}).items():
        _check_text(file, f"phrase {name!r}", phrase, detail_names, problems)
    _check_acr_category_coding(file, data.get("acr_category_coding"), problems)
    _check_terms(file, data.get("terms"), problems, roles)
    return cast(Mapping[str, Any], _freeze(data))


def _check_acr_category_coding(file: str, coding: Any, problems: _Problems) -> None:
    """The code system of the ACR category translation: a system URL and a code and display per category."""
    if not isinstance(coding, dict) or not isinstance(coding.get("system"), str) or not coding["system"]:
        problems.add(file, "acr_category_coding needs a system")
        return
    concepts = coding.get("concepts")
    concepts = concepts if isinstance(concepts, dict) else {}
    for category in get_args(AcrCategory):
        concept = concepts.get(category)
        if not isinstance(concept, dict) or not all(
            isinstance(concept.get(member), str) and concept[member] for member in ("code", "display")
        ):
            problems.add(file, f"acr_category_coding: category {category!r} needs a code and a display")
    for category in sorted(set(concepts) - set(get_args(AcrCategory))):
        problems.add(file, f"acr_category_coding: unknown ACR category {category!r} (use UA, MBA, UNA)")


def _check_terms(file: str, terms: Any, problems: _Problems, roles: Mapping[str, ConceptRole]) -> None:
    """The renderer's words: every section present, every entry non-empty text with known placeholders only."""
    if not isinstance(terms, dict):
        problems.add(file, "terms section is missing")
        return
    for missing in sorted(set(TERM_SECTIONS) - set(terms)):
        problems.add(file, f"terms: {missing!r} is missing")
    for section, value in terms.items():
        entries = value.items() if isinstance(value, dict) else [("", value)]
        for name, text in entries:
            where = f"terms {section!r}" + (f" {name!r}" if name else "")
            if not isinstance(text, str):
                problems.add(file, f"{where}: must be text")
                continue
            _check_text(file, where, text, set(_TERM_PLACEHOLDERS), problems)
    for key in sorted(set(PROCEDURE_KEYS) - set(terms.get("procedures") or {})):
        problems.add(file, f"terms 'procedures': procedure key {key!r} has no name")
    for category in sorted(set(get_args(AcrCategory)) - set(terms.get("categories") or {})):
        problems.add(file, f"terms 'categories': ACR category {category!r} has no words")
    # Measurements are printed as values ("eGFR 24 on ..."), never by name.
    named = {key for key, role in roles.items() if role.role != "measurement"}
    for concept in sorted(named - set(terms.get("concepts") or {})):
        problems.add(file, f"terms 'concepts': concept {concept!r} has no name")


def _check_card(
    file: str,
    name: str,
    card: Mapping[str, Any],
    summary_limits: Mapping[str, int],
    detail_names: set[str],
    reasons: Mapping[str, str],
    references: Mapping[str, Any],
    problems: _Problems,
) -> None:
    where = f"card {name!r}"
    if card.get("indicator") not in CARD_INDICATORS:
        problems.add(file, f"{where}: indicator {card.get('indicator')!r} is not info, warning or critical")
    summary = str(card.get("summary", ""))
    unknown = _placeholders(summary) - set(summary_limits)
    if unknown:
        problems.add(file, f"{where}: summary uses undeclared placeholders {sorted(unknown)}")
    else:
        longest = summary.format(**{key: "x" * limit for key, limit in summary_limits.items()})
        if len(longest) >= SUMMARY_LIMIT:
            problems.add(file, f"{where}: summary can reach {len(longest)} characters (limit: under {SUMMARY_LIMIT})")
    _check_text(file, f"{where} summary", summary, set(summary_limits), problems)
    _check_text(file, f"{where} detail", str(card.get("detail", "")), detail_names, problems)
    for suggestion_name, suggestion in (card.get("suggestions") or {}).items():
        # The label is not data: the renderer words it from the action ("Change to ...", "Order ...").
        if "label" in suggestion:
            problems.add(file, f"{where}: suggestion {suggestion_name!r} has a label; labels come from terms")
        _check_text(
            file, f"{where} suggestion {suggestion_name!r}", suggestion.get("description", ""), detail_names, problems
        )
    for code in card.get("override_reasons") or ():
        if code not in reasons:
            problems.add(file, f"{where}: unknown override reason {code!r}")
    for reference in card.get("references") or ():
        if reference not in references:
            problems.add(file, f"{where}: unknown reference {reference!r}")
    topic = card.get("topic") or {}
    if not topic.get("code") or not topic.get("display"):
        problems.add(file, f"{where}: topic needs a code and a display")


def _check_text(file: str, where: str, text: str, allowed: set[str], problems: _Problems) -> None:
    if not text:
        problems.add(file, f"{where}: text is empty")
        return
    if _FORBIDDEN_WORD.search(text):
        problems.add(file, f"{where}: uses 'inappropriate' as a verdict; use the ACR category words")
    try:
        unknown = _placeholders(text) - allowed
    except ValueError as error:
        problems.add(file, f"{where}: malformed placeholder ({error})")
        return
    if unknown:
        problems.add(file, f"{where}: undeclared placeholders {sorted(unknown)}")


def _freeze(value: Any) -> Any:
    """Read-only copy: mappings become MappingProxyType, lists become tuples."""
    if isinstance(value, dict):
        return MappingProxyType({key: _freeze(item) for key, item in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(item) for item in value)
    return value
