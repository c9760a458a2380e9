"""The data tables of docs/clinical-rules.md, generated from the knowledge base so that the document cannot drift.

Usage (from the repository root)::

    python docs/clinical_rules_tables.py            # rewrites the generated blocks of docs/clinical-rules.md
    python docs/clinical_rules_tables.py --check    # exits 1 when a block is out of date (as the tests check)

A generated block sits between ``<!-- generated: <name> -->`` and ``<!-- end generated: <name> -->``; everything
outside the blocks is written by hand. The tables read the knowledge files (cds_service/knowledge/*.json, the
ValueSet files, the ICD-10-CM snapshot for filter expansions), the threshold defaults (``Thresholds``), the allowed
ranges (cds_service/schemas/service-config.schema.json), the card suggestions of the renderer and the golden
scenarios (fixtures/*/scenario.json). The few words that are not data (what a threshold means and where it comes
from, when a card appears) are in the two tables below: a new threshold or card kind fails the generator until it is
described here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DOCUMENT = REPO / "docs" / "clinical-rules.md"
KNOWLEDGE = REPO / "cds_service" / "knowledge"
CONFIG_SCHEMA = REPO / "cds_service" / "schemas" / "service-config.schema.json"
FIXTURES = REPO / "fixtures"
SOURCE_URL = "http://lumbar-imaging-cds.example.org/fhir/StructureDefinition/source"

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# What each threshold means and where its default comes from (the code holds the default, the schema the range).
THRESHOLD_TEXTS: Mapping[str, tuple[str, str]] = {
    "symptom_weeks": (
        "Weeks of symptoms before conservative therapy can have failed (ACR variant 3) and before the 'under N weeks'"
        " card stops applying.",
        "ACR Low Back Pain 2021, variant 3 ('6 weeks of optimal medical management'); Choosing Wisely (AAFP): no"
        " imaging within the first six weeks unless red flags are present.",
    ),
    "nsaid_trial_weeks": (
        "Length of one systemic NSAID course that makes an adequate NSAID trial.",
        "Team setting: the guidelines name NSAIDs as first-line therapy (ACP/APS 2007) but set no trial length.",
    ),
    "nsaid_trial_min_orders": (
        "Number of separate systemic NSAID orders or statements in the episode that make an adequate trial whatever"
        " their lengths.",
        "Team setting.",
    ),
    "steroid_burst_weeks": (
        "A systemic corticosteroid trial up to this long is a burst; a longer one (under the long-term limit) is a"
        " prolonged course. Both are trials; the word only changes the card's evidence line.",
        "Team setting (a burst is a short course of up to about 3 weeks in glucocorticoid practice).",
    ),
    "steroid_trial_min_daily_mg": (
        "Daily prednisone-equivalent dose (mg) at or above which a corticosteroid course is an anti-inflammatory"
        " trial; a stated lower daily dose is maintenance therapy, not a trial.",
        "Team setting; prednisone equivalence from corticosteroids.json (Liu et al. 2013, see"
        " [Corticosteroid equivalence](#corticosteroid-equivalence)).",
    ),
    "long_term_steroid_months": (
        "Systemic corticosteroid use at least this long is long-term use: a red flag (ACR variants 7 and 6), never a"
        " trial.",
        "Team setting following glucocorticoid-induced osteoporosis practice (3 months or more); ACR variant 6 names"
        " 'chronic steroid use' without a length; ICD-10-CM Z79.52 codes long-term use.",
    ),
    "prior_mri_lookback_months": (
        "A lumbar MRI within this many months (30.44 days each) makes a new lumbar MRI order a duplicate, and stops a"
        " non-imaging order from suggesting one.",
        "Team setting.",
    ),
    "fracture_risk_age": (
        "Age at or above which fracture risk (ACR variant 6, 'elderly individual') applies.",
        "Team setting: ACR variant 6 gives no age; ACP 2011 high-value imaging advice names older age for"
        " compression fracture.",
    ),
    "adult_age": (
        "Below this age the adult ACR Low Back Pain criteria do not apply (rating no-criteria-apply).",
        "ACR Appropriateness Criteria: Low Back Pain is an adult topic; ACR publishes a separate Back Pain, Child"
        " topic (https://acsearch.acr.org/list).",
    ),
    "current_finding_lookback_days": (
        "Look-back of current findings (fever, recent infection, low-velocity trauma, motor deficit, body"
        " temperature, eGFR, pregnancy tests), of resolved 'active' findings, and of drugs stopped or completed"
        " (immunosuppressants). Observations older than this are not read at all.",
        "Team setting.",
    ),
    "pregnancy_max_weeks": (
        "A pregnancy condition whose onset (or recorded date) is older than this has ended, whatever its status.",
        "Team setting: a pregnancy lasts at most about 42 weeks.",
    ),
    "fever_celsius": (
        "A body temperature at or above this (°C; °F values are converted) is fever.",
        "Team setting (the usual clinical definition of fever).",
    ),
    "egfr_contrast_limit": (
        "An eGFR below this (mL/min/1.73 m²) within the look-back is a gadolinium contrast concern.",
        "Team setting (chronic kidney disease stage 4-5); the card defers to local gadolinium policy.",
    ),
}

# When each card kind appears (the rules are in the document's sections; this is the one-line summary).
CARD_WHEN: Mapping[str, str] = {
    "cauda_equina": "Variant 4 drives (cauda equina on record or in the order's reason), adult. Imaging order: keep it"
    " (made stat) when it is usually appropriate, else convert to MRI without contrast, stat. NSAID, steroid,"
    " injection or referral order: create MRI without contrast, stat, unless a lumbar MRI is already drafted.",
    "cancer_infection": "Variant 7 drives (cancer, infection or immunosuppression), adult imaging order.",
    "cancer_infection_contrast_concern": "Variant 7 drives and a contrast or pregnancy concern exists that has no card"
    " of its own for this order (e.g. the selected order is radiographs): contrast studies leave the suggestions.",
    "fracture_risk": "Variant 6 drives (fracture risk), adult imaging order.",
    "prior_surgery": "Variant 5 drives (prior lumbar surgery), adult imaging order.",
    "failed_therapy_convert": "Failed conservative therapy, variant 3 possible and only variants 3-7 possible, MRI"
    " without contrast usually appropriate in all of them, and the selected imaging order is not already MRI without"
    " contrast nor usually appropriate.",
    "failed_therapy_create": "Failed conservative therapy (as above) and the selected order is an NSAID or systemic"
    " steroid course, an epidural injection or a spine/pain referral, with no lumbar MRI drafted, imaging history"
    " obtained, and no lumbar MRI within the look-back.",
    "confirm_candidacy": "Failed conservative therapy with axial pain only and no documented candidacy: variants 2"
    " and 3 both possible, the order is not rated.",
    "conservative_care_first": "Only variant 1 or 2 possible and the symptoms are dated and shorter than"
    " symptom_weeks.",
    "duration_unknown": "Only variant 1 or 2 possible and no onset date for the back pain on record: the symptom"
    " duration is not documented, whatever therapy is on record.",
    "no_documented_therapy": "Only variant 1 or 2 possible, the symptoms at least symptom_weeks long, no"
    " NSAID or steroid course in the episode and no drug found but not counted (topical NSAID, low-dose aspirin,"
    " mineralocorticoid).",
    "inadequate_therapy": "Only variant 1 or 2 possible, the symptoms at least symptom_weeks long, and an"
    " NSAID or steroid course in the episode (a maintenance dose included) or a drug found but not counted (topical"
    " NSAID, low-dose aspirin, mineralocorticoid) is on record.",
    "trial_length_unknown": "No trial found except NSAID courses of unknown length, every source obtained: whether"
    " therapy failed is unknown, the order is not rated.",
    "duplicate_mri": "Lumbar MRI order and a lumbar MRI performed within prior_mri_lookback_months, with no dated red"
    " flag or motor deficit after it (and no undated one).",
    "duplicate_draft": "Order-sign: this MRI without contrast comes after another MRI without contrast among the"
    " drafts.",
    "mr_implant": "Lumbar MRI order (any contrast) and an implanted device on record.",
    "contrast_safety": "MRI with, or without and with, contrast and a recent eGFR below the limit, kidney failure,"
    " dialysis or a gadolinium allergy.",
    "pregnancy": "Pregnancy on record and an MRI with contrast, radiographs, CT (any contrast) or CT myelography.",
    "motor_deficit": "A motor deficit of the current episode (on record or in the order's reason) and no red-flag"
    " variant drives. Imaging order: keep (urgent) if it is MRI without contrast, else convert to it, urgent."
    " Non-imaging order: create MRI without contrast, urgent, unless a lumbar MRI is drafted.",
    "child_criteria": "Patient under adult_age: once per request, on the first selected imaging order.",
    "child_red_flag": "Patient under adult_age with a red flag of variant 7, 6 or 5 on record.",
    "child_cauda_equina": "Patient under adult_age with cauda equina (variant 4).",
    "data_missing": "Some resource type that could change the decision could not be obtained, and the order is not"
    " rated.",
    "data_missing_rated": "As data_missing, but the order is rated because the rating holds in every variant still"
    " possible.",
}

SYSTEM_NAMES: Mapping[str, str] = {
    "http://snomed.info/sct": "SNOMED CT",
    "http://hl7.org/fhir/sid/icd-10-cm": "ICD-10-CM",
    "http://loinc.org": "LOINC",
    "http://www.ama-assn.org/go/cpt": "CPT",
    "http://www.nlm.nih.gov/research/umls/rxnorm": "RxNorm",
    "http://www.whocc.no/atc": "ATC",
    "http://www.radlex.org": "RadLex",
}
SYSTEM_ORDER = tuple(SYSTEM_NAMES.values())


# --------------------------------------------------------------------------------------------------- helpers
def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _cell(text: object) -> str:
    """A Markdown table cell: no pipes or line breaks."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: Iterable[str], rows: Iterable[Iterable[object]]) -> str:
    head = list(header)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def _source(element: Mapping[str, Any]) -> str | None:
    for extension in element.get("extension") or ():
        if extension.get("url") == SOURCE_URL:
            return str(extension.get("valueString"))
    return None


def _codes(n: int) -> str:
    return f"{n} code" if n == 1 else f"{n} codes"


def _valuesets() -> dict[str, dict[str, Any]]:
    return {path.stem: _json(path) for path in sorted((KNOWLEDGE / "valuesets").glob("*.json"))}


def _concepts() -> dict[str, Any]:
    data: dict[str, Any] = _json(KNOWLEDGE / "concepts.json")
    return data


# ----------------------------------------------------------------------------------------------------- blocks
def thresholds() -> str:
    from cds_service.knowledge.base import Thresholds

    ranges = _json(CONFIG_SCHEMA)["properties"]["thresholds"]["properties"]
    defaults = Thresholds()
    rows = []
    for field in dataclasses.fields(Thresholds):
        if field.name not in THRESHOLD_TEXTS:
            raise SystemExit(f"docs/clinical_rules_tables.py: describe the threshold {field.name} in THRESHOLD_TEXTS")
        spec = ranges.get(field.name)
        if spec is None:
            raise SystemExit(f"{CONFIG_SCHEMA.name}: no range for the threshold {field.name}")
        low = spec.get("minimum", spec.get("exclusiveMinimum"))
        low_words = f"> {low}" if "exclusiveMinimum" in spec else f"{low}"
        kind = "whole number" if spec.get("type") == "integer" else "number"
        meaning, source = THRESHOLD_TEXTS[field.name]
        rows.append(
            (
                f"`{field.name}`",
                f"{getattr(defaults, field.name)}",
                f"{low_words} to {spec['maximum']} ({kind})",
                meaning,
                source,
            )
        )
    extra = set(THRESHOLD_TEXTS) - {f.name for f in dataclasses.fields(Thresholds)}
    if extra:
        raise SystemExit(f"docs/clinical_rules_tables.py: THRESHOLD_TEXTS names unknown thresholds {sorted(extra)}")
    return _table(("Threshold", "Default", "Allowed range", "Meaning", "Source"), rows)


def concept_roles() -> str:
    data = _concepts()
    rows = []
    for key, row in data["concepts"].items():
        feeds = []
        if row.get("variants"):
            feeds.append("ACR variant " + ", ".join(str(v) for v in row["variants"]))
        if row.get("radicular"):
            feeds.append("radicular symptoms")
        if row.get("indication"):
            feeds.append("back-pain question")
        if row.get("requires_indication"):
            feeds.append("only with back pain or sciatica")
        if row.get("requires_any"):
            feeds.append("only with " + " or ".join(f"`{c}`" for c in row["requires_any"]))
        if row.get("concern"):
            feeds.append(f"card `{row['concern']}`")
        if row.get("measures"):
            feeds.append(f"measures {row['measures']}")
        if row.get("order_kind"):
            feeds.append(f"a draft order of it is a {row['order_kind']}")
        lookback = row.get("lookback")
        timing = row["timing"] + (f" (and `{lookback}`)" if lookback else "")
        rows.append((f"`{key}`", row["role"], "; ".join(feeds) or "-", timing, ", ".join(row["found_in"])))
    return _table(("Concept key", "Role", "Feeds", "Timing", "Looked for in"), rows)


def _valueset_counts(valueset: Mapping[str, Any]) -> tuple[Counter[str], list[str]]:
    """Codes per system after load-time expansion (ICD-10-CM filters expanded from the snapshot), and the filters."""
    from cds_service.knowledge import icd10cm
    from cds_service.knowledge.systems import normalise_code

    codes: dict[str, set[str]] = {}
    filters: list[str] = []
    for include in (valueset.get("compose") or {}).get("include") or ():
        system = include["system"]
        found = codes.setdefault(SYSTEM_NAMES.get(system, system), set())
        for concept in include.get("concept") or ():
            found.add(normalise_code(system, concept["code"]))
        for item in include.get("filter") or ():
            filters.append(str(item["value"]))
            found.update(normalise_code(system, code) for code, _text in icd10cm.expand(str(item["value"])))
    return Counter({system: len(found) for system, found in codes.items() if found}), filters


def value_sets() -> str:
    roles = _concepts()["concepts"]
    keywords = _json(KNOWLEDGE / "keywords.json")["concepts"]
    rows = []
    for key, valueset in _valuesets().items():
        counts, filters = _valueset_counts(valueset)
        per_system = ", ".join(f"{name} {counts[name]}" for name in SYSTEM_ORDER if counts.get(name)) or "none"
        words = len(keywords.get(key, {}).get("keywords", ()))
        role = roles.get(key, {})
        rows.append(
            (
                f"`{key}`",
                valueset["title"],
                role.get("role", "(no role)"),
                role.get("timing", ""),
                per_system,
                ", ".join(filters) or "-",
                words or "-",
            )
        )
    return _table(
        (
            "Concept key",
            "Title",
            "Role",
            "Timing",
            "Codes per system (after expansion)",
            "ICD-10-CM is-a filters",
            "Keywords",
        ),
        rows,
    )


def value_set_sources() -> str:
    """Per value set: its description and every source its codes and filters cite (with how many codes cite it)."""
    parts = []
    for key, valueset in _valuesets().items():
        cited: Counter[str] = Counter()
        filtered: list[str] = []
        for include in (valueset.get("compose") or {}).get("include") or ():
            system = SYSTEM_NAMES.get(include["system"], include["system"])
            for concept in include.get("concept") or ():
                cited[f"{system}: {_source(concept)}"] += 1
            if include.get("filter"):
                values = ", ".join(str(item["value"]) for item in include["filter"])
                filtered.append(f"{system} is-a {values}: {_source(include)}")
        lines = [f"- **`{key}`** ({valueset['title']}). {valueset['description']}"]
        lines += [f"  - {source} ({_codes(n)})" for source, n in sorted(cited.items())]
        lines += [f"  - {source}" for source in filtered]
        parts.append("\n".join(lines))
    return "\n".join(parts)


def keywords() -> str:
    data = _json(KNOWLEDGE / "keywords.json")
    rows = []
    for key, entry in data["concepts"].items():
        rows.append((f"`{key}`", ", ".join(entry["keywords"]), entry.get("source", "")))
    return _table(("Concept key", "Keywords (whole words, case-insensitive)", "Why these words"), rows)


def drug_classes() -> str:
    roles = _concepts()["drug_classes"]
    medications = _json(KNOWLEDGE / "medications.json")
    ingredients: dict[str, list[str]] = {}
    ingredient_class: dict[str, str] = {}
    for ingredient in medications["ingredients"]:
        ingredients.setdefault(ingredient["drug_class"], []).append(ingredient["name"])
        ingredient_class[ingredient["name"]] = ingredient["drug_class"]
    products: Counter[str] = Counter(ingredient_class.get(p["ingredient"], "?") for p in medications["products"])
    atc = {rule["drug_class"]: rule["prefix"] for rule in medications["atc_classes"]}
    rows = []
    for key, role in roles.items():
        evidence = f"red flag: `{role['concept']}`" if role["role"] == "red_flag" else role["role"]
        names = ingredients.get(key, [])
        rows.append(
            (
                f"`{key}`",
                evidence,
                role["description"],
                f"{len(names)}: " + ", ".join(names),
                products.get(key, 0),
                atc.get(key, "-"),
            )
        )
    return _table(
        ("Drug class", "Evidence of", "Meaning", "Ingredients", "RxNorm products", "ATC class"),
        rows,
    )


def drug_class_sources() -> str:
    medications = _json(KNOWLEDGE / "medications.json")
    ingredient_class = {i["name"]: i["drug_class"] for i in medications["ingredients"]}
    cited: dict[str, Counter[str]] = {}
    classes: dict[str, list[str]] = {}
    for ingredient in medications["ingredients"]:
        for system in ("rxnorm", "atc"):
            for code in ingredient.get(system) or ():
                cited.setdefault(ingredient["drug_class"], Counter())[
                    f"{system} ingredient code: {code['source']}"
                ] += 1
    for product in medications["products"]:
        drug_class = ingredient_class.get(product["ingredient"], "?")
        cited.setdefault(drug_class, Counter())[f"RxNorm product: {product['source']}"] += 1
    for rule in medications["atc_classes"]:
        classes.setdefault(rule["drug_class"], []).append(f"ATC class {rule['prefix']}: {rule['source']}")
    parts = []
    for drug_class, counter in cited.items():
        lines = [f"- **`{drug_class}`**"]
        lines += [f"  - {source} ({_codes(n)})" for source, n in sorted(counter.items())]
        lines += [f"  - {rule}" for rule in classes.get(drug_class, ())]
        parts.append("\n".join(lines))
    excluded = medications["atc_excluded_prefixes"]
    aspirin = medications["antiplatelet_aspirin"]
    forms = medications["non_systemic_text"]
    parts.append(
        "\n".join(
            [
                "- **Not counted on purpose**: "
                + "; ".join(
                    f"ATC {e['prefix']} ({e['reason']}; names: {', '.join(e['text_names'])}; source: {e['source']})"
                    for e in excluded
                ),
                f"- **Antiplatelet aspirin**: {aspirin['rationale']} Strength limit {aspirin['max_strength_mg']} mg;"
                f" unknown strength counts as antiplatelet: {aspirin['unknown_strength_is_antiplatelet']}; text"
                f" markers: {', '.join(aspirin['text_markers'])}; ATC "
                + ", ".join(f"{c['code']} ({c['source']})" for c in aspirin["atc"])
                + ".",
                "- **Non-systemic forms** (route, dose form or dosage text; any class): "
                + ", ".join(forms["all"])
                + "; corticosteroids also: "
                + ", ".join(forms["systemic_corticosteroid"])
                + f". Source: {forms['source']}.",
            ]
        )
    )
    return "\n".join(parts)


def corticosteroids() -> str:
    data = _json(KNOWLEDGE / "corticosteroids.json")
    factors = data["prednisone_equivalent"]["factors"]
    rows = [(name, f"{factor:g}", f"{5 / factor:.3g} mg") for name, factor in factors.items()]
    return "\n\n".join(
        [
            _table(("Ingredient", "mg prednisone per mg", "Dose equivalent to 5 mg prednisone"), rows),
            f"Source: {data['prednisone_equivalent']['source']}",
            "Words that make a course a trial whatever its daily dose: "
            + ", ".join(f"'{w}'" for w in data["trial_words"]["words"])
            + f". Source: {data['trial_words']['source']}",
        ]
    )


def acr_table() -> str:
    data = _json(KNOWLEDGE / "acr_ratings.json")
    variants = sorted(data["variants"], key=int)
    rows = []
    for key, entry in data["ratings"].items():
        inferred = set(entry.get("inferred") or ())
        check = set(entry.get("check") or ())
        cells = []
        for variant in variants:
            category = entry["ratings"][variant]
            mark = "*" if int(variant) in inferred else ""
            mark += " (check)" if int(variant) in check else ""
            cells.append(f"{category}{mark}")
        rows.append((f"`{key}`", entry["label"], *cells))
    variant_rows = [(v, data["variants"][v]) for v in variants]
    by_source: dict[str, list[str]] = {}
    for key, entry in data["ratings"].items():
        by_source.setdefault(entry["source"], []).append(f"`{key}`")
    sources = "\n".join(f"- {', '.join(keys)}: {source}" for source, keys in by_source.items())
    not_rated = "; ".join(f"`{k}`: {v}" for k, v in data.get("not_in_table", {}).items())
    return "\n\n".join(
        [
            _table(("Variant", "ACR wording (paraphrased)"), variant_rows),
            _table(("Procedure key", "ACR procedure", *(f"V{v}" for v in variants)), rows),
            "UA usually appropriate, MBA may be appropriate, UNA usually not appropriate. `*` marks a cell inferred as"
            f" UNA (not read in the ACR table): {data['inferred_note']}",
            "Not in the table: " + (not_rated or "-") + ".",
            "Sources of the cells:\n\n" + sources,
            "Variant wording: " + data["variants_source"] + ".",
        ]
    )


def procedures() -> str:
    data = _json(KNOWLEDGE / "procedures.json")
    rows = []
    for key, entry in data["procedures"].items():
        codes = "; ".join(
            f"{SYSTEM_NAMES.get(c['system'], c['system'])} {c['code']} ({c['display']}; {c['source']})"
            for c in entry["codes"]
        )
        rows.append((f"`{key}`", entry["label"], entry["modality"], entry["iv_contrast"], codes or "-"))
    order = data["mri_without_contrast_order"]
    codings = ", ".join(f"{SYSTEM_NAMES.get(c['system'], c['system'])} {c['code']}" for c in order["codings"])
    return "\n\n".join(
        [
            _table(("Procedure key", "Label", "Modality", "IV contrast", "Codes (source)"), rows),
            f"A suggested MRI lumbar spine without contrast is coded {codings} and carries the protocol note"
            f' "{order["protocol"]}" (source: {order["source"]}).',
        ]
    )


def cards() -> str:
    from cds_service.clinical.cards import SHARED_SUGGESTIONS, SUGGESTIONS_OF_CARD

    texts = _json(KNOWLEDGE / "cards.json")
    kinds = list(texts["cards"])
    missing = [kind for kind in kinds if kind not in CARD_WHEN] + [
        kind for kind in SUGGESTIONS_OF_CARD if kind not in kinds
    ]
    if missing:
        raise SystemExit(f"docs/clinical_rules_tables.py: describe the card kinds {missing} in CARD_WHEN")
    rows = []
    for kind in kinds:
        card = texts["cards"][kind]
        suggestions = card.get("suggestions") or {}
        names = SUGGESTIONS_OF_CARD.get(kind, tuple(suggestions))
        words = "; ".join(
            f"`{name}`: {suggestions[name]['description'].rstrip('.')}" for name in names if name in suggestions
        )
        rows.append(
            (
                f"`{kind}`",
                card["indicator"],
                CARD_WHEN[kind],
                words or "none",
                ", ".join(f"`{code}`" for code in card.get("override_reasons") or ()),
                ", ".join(card.get("references") or ()),
            )
        )
    shared = "; ".join(f"`{name}`: {texts['shared_suggestions'][name]['description']}" for name in SHARED_SUGGESTIONS)
    return "\n\n".join(
        [
            _table(("Card kind", "Indicator", "When it appears", "Suggestions", "Override reasons", "Links"), rows),
            f"Any card may also carry: {shared}",
        ]
    )


def override_reasons() -> str:
    texts = _json(KNOWLEDGE / "cards.json")
    offered: dict[str, list[str]] = {}
    for kind, card in texts["cards"].items():
        for code in card.get("override_reasons") or ():
            offered.setdefault(code, []).append(kind)
    rows = [
        (f"`{code}`", display, ", ".join(f"`{k}`" for k in offered.get(code, ())) or "none")
        for code, display in texts["override_reasons"].items()
    ]
    return f"Code system: `{texts['override_reason_system']}`.\n\n" + _table(("Code", "Display", "Offered by"), rows)


def references() -> str:
    texts = _json(KNOWLEDGE / "cards.json")
    rows = [(f"`{name}`", ref["label"], ref["url"]) for name, ref in texts["references"].items()]
    return _table(("Link", "Label", "URL"), rows)


def scenarios() -> str:
    rows = []
    for path in sorted(FIXTURES.glob("*/scenario.json")):
        data = _json(path)
        expect = data.get("expect") or {}
        ratings = ", ".join(f"{ref.split('/')[-1]}: {rating}" for ref, rating in (expect.get("ratings") or {}).items())
        card_list = "; ".join(f"{c['indicator']}: {c.get('about', '')}" for c in expect.get("cards") or ())
        if "status" in expect:
            ratings = f"HTTP {expect['status']}"
        rows.append(
            (
                f"`{path.parent.name}`",
                data["title"],
                ratings or "not rated",
                card_list or "no card",
                ", ".join(expect.get("suggests") or ()) or "-",
            )
        )
    return _table(("Scenario (fixtures/)", "Story", "Expected rating", "Expected cards", "Suggestions"), rows)


BLOCKS: Mapping[str, Callable[[], str]] = {
    "thresholds": thresholds,
    "concept-roles": concept_roles,
    "value-sets": value_sets,
    "value-set-sources": value_set_sources,
    "keywords": keywords,
    "drug-classes": drug_classes,
    "drug-class-sources": drug_class_sources,
    "corticosteroids": corticosteroids,
    "acr-table": acr_table,
    "procedures": procedures,
    "cards": cards,
    "override-reasons": override_reasons,
    "references": references,
    "scenarios": scenarios,
}
_BLOCK = re.compile(r"(<!-- generated: ([a-z-]+) -->\n)(.*?)(<!-- end generated: \2 -->)", re.DOTALL)


def render(document: str) -> str:
    """The document with every generated block rewritten from the data."""
    seen: set[str] = set()

    def replace(match: re.Match[str]) -> str:
        name = match.group(2)
        if name not in BLOCKS:
            raise SystemExit(f"docs/clinical-rules.md: unknown generated block {name!r}")
        seen.add(name)
        return f"{match.group(1)}{BLOCKS[name]()}\n{match.group(4)}"

    rendered = _BLOCK.sub(replace, document)
    missing = sorted(set(BLOCKS) - seen)
    if missing:
        raise SystemExit(f"docs/clinical-rules.md: generated blocks missing: {missing}")
    return rendered


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/clinical-rules.md is out of date")
    args = parser.parse_args(argv)
    current = DOCUMENT.read_text(encoding="utf-8")
    rendered = render(current)
    if args.check:
        if rendered != current:
            print("docs/clinical-rules.md is out of date: run python docs/clinical_rules_tables.py", file=sys.stderr)
            return 1
        return 0
    DOCUMENT.write_text(rendered, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
