"""docs/clinical-rules.md cannot silently drift from the code and knowledge it documents.

* Its generated tables (thresholds, concept roles, value sets, drug classes, ACR table, cards, override reasons,
  scenarios ...) are exactly what ``docs/clinical_rules_tables.py`` writes from the data today.
* It names every concept key, drug class, card kind, threshold and override reason the code and knowledge define.
* Every ``docs/clinical-rules.md#<anchor>`` cited anywhere in the repository, and every link inside the document,
  points at a heading that exists.
"""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from pathlib import Path
from types import ModuleType

from support import load_script

from cds_service.clinical.cards import SUGGESTIONS_OF_CARD
from cds_service.clinical.decision import ConcernKind
from cds_service.knowledge import Thresholds, load_knowledge

REPO = Path(__file__).resolve().parent.parent
DOCUMENT = REPO / "docs" / "clinical-rules.md"
GENERATOR = REPO / "docs" / "clinical_rules_tables.py"
CARDS = REPO / "cds_service" / "knowledge" / "cards.json"
# Where citations of the document may appear.
CITING_DIRS = ("cds_service", "hooks", "deploy", "bench", "tests", "docs", "fixtures")
_CITATION = re.compile(r"docs/clinical-rules\.md#([A-Za-z0-9_-]+)")
_HEADING = re.compile(r"^#{1,6} +(.+?) *$", re.MULTILINE)
_INTERNAL_LINK = re.compile(r"\]\(#([^)]+)\)")


def _generator() -> ModuleType:
    return load_script(GENERATOR, "clinical_rules_tables")


def _document() -> str:
    return DOCUMENT.read_text(encoding="utf-8")


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors() -> set[str]:
    return {_slug(heading) for heading in _HEADING.findall(_document())}


def test_generated_tables_are_current() -> None:
    document = _document()
    rendered = _generator().render(document)
    assert rendered == document, "docs/clinical-rules.md is out of date: run python docs/clinical_rules_tables.py"


def test_the_document_names_every_key_the_code_and_knowledge_define() -> None:
    document = _document()
    knowledge = load_knowledge()
    cards = json.loads(CARDS.read_text(encoding="utf-8"))
    names = {
        "concept key": set(knowledge.concept_keys),
        "drug class": set(knowledge.drug_class_roles),
        "card kind": set(typing.get_args(ConcernKind)) | set(SUGGESTIONS_OF_CARD) | set(cards["cards"]),
        "threshold": {field.name for field in dataclasses.fields(Thresholds)},
        "override reason": set(cards["override_reasons"]),
        "override reason display": set(cards["override_reasons"].values()),
    }
    missing = [
        f"{kind} {name!r}"
        for kind, values in names.items()
        for name in sorted(values)
        if (f"`{name}`" if kind != "override reason display" else name) not in document
    ]
    assert missing == [], "docs/clinical-rules.md does not name: " + ", ".join(missing)


def test_the_document_holds_its_review_date_and_the_guidelines_it_cites() -> None:
    document = _document()
    assert re.search(r"\*\*Reviewed:\*\* \d{4}-\d{2}-\d{2}", document)
    for url in (
        "https://acsearch.acr.org/docs/69483/Narrative/",
        "10.1016/j.jacr.2021.08.002",
        "https://doi.org/10.7326/0003-4819-147-7-200710020-00006",
        "https://argonautproject.github.io/cds-hooks-for-pama/",
        "https://cds-hooks.hl7.org/2.0/",
        "https://www.aafp.org/pubs/afp/collections/choosing-wisely/cw-back-pain.html",
        "https://doi.org/10.1186/1710-1492-9-30",
    ):
        assert url in document, url
    assert "## Interpretations" in document


def test_every_cited_anchor_exists() -> None:
    anchors = _anchors()
    broken: list[str] = []
    for directory in CITING_DIRS:
        for path in sorted((REPO / directory).rglob("*")):
            if not path.is_file() or path.suffix not in (".py", ".json", ".md", ".yaml", ".yml", ".toml", ".txt"):
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue
            for number, line in enumerate(text.splitlines(), start=1):
                broken.extend(
                    f"{path.relative_to(REPO)}:{number}: #{anchor}"
                    for anchor in _CITATION.findall(line)
                    if anchor not in anchors
                )
    broken.extend(
        f"docs/clinical-rules.md: link #{anchor}"
        for anchor in _INTERNAL_LINK.findall(_document())
        if anchor not in anchors
    )
    assert broken == [], "anchors that docs/clinical-rules.md does not have:\n" + "\n".join(broken)
