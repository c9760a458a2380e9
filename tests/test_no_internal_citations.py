"""Shipped code, knowledge and card texts cite docs/clinical-rules.md or the guideline/spec itself, never
project-internal documents: the product specification (PRODUCT.md), the team's reference notes (reference/clinical.md,
cds-hooks-spec.md, aesthetics.md, peers.md) or issue numbers. A hospital's reviewer has the repository, not those.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCANNED = ("cds_service", "hooks", "deploy", "bench")
FORBIDDEN = re.compile(
    r"PRODUCT\.md"
    r"|(?<![\w/.-])reference/"  # the reference notes folder (a URL path such as .../reference/cpt/63005 is fine)
    r"|\b(?:clinical|cds-hooks-spec|aesthetics|peers)\.md"
    r"|\bissues? #?\d+",
    re.IGNORECASE,
)


def forbidden_citations(text: str) -> list[tuple[int, str]]:
    """``(line number, matched text)`` of every forbidden citation in ``text``."""
    return [
        (number, match.group(0))
        for number, line in enumerate(text.splitlines(), start=1)
        for match in FORBIDDEN.finditer(line)
    ]


def test_the_pattern_finds_what_it_must_and_spares_what_it_must_not() -> None:
    found = [
        hit
        for line in (
            "(PRODUCT.md §3.5 row 1)",
            "C (clinical.md §3.1)",
            "see reference/clinical.md",
            "cds-hooks-spec.md §3",
            "aesthetics.md",
            "peers.md",
            "(issue 5: parse only what is needed)",
            "Issue #12",
        )
        for _number, hit in forbidden_citations(line)
    ]
    assert len(found) == 9  # "reference/clinical.md" is two
    assert not forbidden_citations("docs/clinical-rules.md#cards; https://mirahealth.care/reference/cpt/63005")
    assert not forbidden_citations('{"resourceType": "OperationOutcome", "issue": [{"severity": "error"}]}')


def test_shipped_files_cite_no_internal_document_or_issue() -> None:
    problems: list[str] = []
    for directory in SCANNED:
        for path in sorted((REPO / directory).rglob("*")):
            if not path.is_file() or "__pycache__" in path.parts:
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue  # binary files (images) cite nothing
            problems.extend(f"{path.relative_to(REPO)}:{number}: {hit}" for number, hit in forbidden_citations(text))
    assert problems == [], "cite docs/clinical-rules.md#<anchor> or the guideline/spec URL instead of:\n" + "\n".join(
        problems
    )
