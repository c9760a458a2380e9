"""ICD-10-CM from a shipped snapshot: code checks, displays and range expansion; and the snapshot's generator.

Value sets write ICD-10-CM ranges as compose filters (``{"property": "concept", "op": "is-a",
"value": ...}``), so no file lists thousands of codes by hand. The filter value is either

* one ICD-10-CM item (a category such as ``Z85``, a subcategory such as ``F11.1``, or a
  chapter/block code): the item itself, if it is a code, and all its descendants; or
* a category range ``A00-B99``: every code from the first category to the last code under the
  last category, in the tabular list's own order. Tabular order matters: ``C7A``/``C7B`` sit
  inside ``C00-C96`` and ``O9A`` closes the pregnancy chapter, while ``D3A`` (benign carcinoid)
  sits before ``D37`` although it sorts after it alphabetically.

Only codes (categories, subcategories and 7th-character extensions) are returned, never the
chapter or block headings themselves.

At run time everything is read from ``icd10cm_snapshot.json`` (loaded once per process): the
expansion of every filter value the value sets use, and the tabular description of every code in
those expansions and of every ICD-10-CM code the value sets list. The ``simple-icd-10-cm``
package (a test dependency; it parses the whole tabular list, about 180 MB resident) is imported
only by the generator::

    python -m cds_service.knowledge.icd10cm --write   # after changing an ICD-10-CM filter or code
    python -m cds_service.knowledge.icd10cm --check   # exit 1 if the shipped snapshot is stale
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import warnings
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any, Final, NamedTuple

from cds_service.knowledge.systems import ICD10CM

KNOWLEDGE_DIR: Final = Path(__file__).resolve().parent
SNAPSHOT_FILE: Final = "icd10cm_snapshot.json"
SNAPSHOT_PATH: Final = KNOWLEDGE_DIR / SNAPSHOT_FILE
REGENERATE: Final = "python -m cds_service.knowledge.icd10cm --write"

_RANGE: Final = re.compile(r"^([A-Z][0-9][0-9A-Z])-([A-Z][0-9][0-9A-Z])$")


def _dotted(code: str) -> str:
    """``M5450`` -> ``M54.50``; a dotted code or a category is returned unchanged."""
    return code if len(code) <= 3 or "." in code else f"{code[:3]}.{code[3:]}"


# -- run time: the snapshot ----------------------------------------------------------------------


class _Snapshot(NamedTuple):
    filters: Mapping[str, tuple[str, ...]]
    descriptions: Mapping[str, str]
    problem: str | None  # why the file could not be used (then both maps are empty)


@lru_cache(maxsize=1)
def _snapshot() -> _Snapshot:
    try:
        data = json.loads(SNAPSHOT_PATH.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return _Snapshot({}, {}, f"file not found; generate it with `{REGENERATE}`")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return _Snapshot({}, {}, f"cannot be read ({error}); regenerate it with `{REGENERATE}`")
    filters = data.get("filters") if isinstance(data, dict) else None
    descriptions = data.get("descriptions") if isinstance(data, dict) else None
    if (
        not isinstance(filters, dict)
        or not isinstance(descriptions, dict)
        or not all(isinstance(text, str) for text in descriptions.values())
        or not all(
            isinstance(codes, list) and all(isinstance(code, str) and code in descriptions for code in codes)
            for codes in filters.values()
        )
    ):
        return _Snapshot({}, {}, f"malformed (filters or descriptions); regenerate it with `{REGENERATE}`")
    return _Snapshot({value: tuple(codes) for value, codes in filters.items()}, descriptions, None)


def snapshot_problem() -> str | None:
    """Why ``icd10cm_snapshot.json`` cannot be used (missing, unreadable, malformed), or None when it can."""
    return _snapshot().problem


def is_code(code: str) -> bool:
    """True for an ICD-10-CM category, subcategory or extension (with or without the dot) in the snapshot."""
    return _dotted(code) in _snapshot().descriptions


def description(code: str) -> str:
    """The tabular-list description of an ICD-10-CM code in the snapshot (ValueError if it is not there)."""
    try:
        return _snapshot().descriptions[_dotted(code)]
    except KeyError:
        raise ValueError(f"{code!r} is not in {SNAPSHOT_FILE} (regenerate it with `{REGENERATE}`)") from None


def is_valid_filter(value: str) -> bool:
    """True when the snapshot holds the expansion of the filter value (a category range or an ICD-10-CM item)."""
    return value in _snapshot().filters


def expand(value: str) -> tuple[tuple[str, str], ...]:
    """``(dotted code, description)`` for every code the filter value denotes (see the module docstring)."""
    snapshot = _snapshot()
    try:
        codes = snapshot.filters[value]
    except KeyError:
        raise ValueError(f"{value!r} is not in {SNAPSHOT_FILE} (regenerate it with `{REGENERATE}`)") from None
    return tuple((code, snapshot.descriptions[code]) for code in codes)


# -- generator: the simple-icd-10-cm package ---------------------------------------------------


def data_version() -> str:
    """The ICD-10-CM source the snapshot is generated from: the installed package and its version."""
    import importlib.metadata

    package_version = importlib.metadata.version("simple-icd-10-cm")
    return f"simple-icd-10-cm {package_version}"


@lru_cache(maxsize=1)
def _package() -> ModuleType:
    # The package reads its data with a deprecated importlib.resources call at import time;
    # the warning is the package's, not ours, and must not fail a warnings-as-errors run.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import simple_icd_10_cm

    module: ModuleType = simple_icd_10_cm
    return module


def _package_is_code(package: ModuleType, item: str) -> bool:
    # Some items (C7A, D49) are both a block and a category: being a category is what counts.
    return bool(package.is_category_or_subcategory(item) or package.is_extended_subcategory(item))


@lru_cache(maxsize=1)
def _tabular_codes() -> tuple[str, ...]:
    """Every code (no chapter or block headings) in tabular order, dotted; built once, for range expansion."""
    package = _package()
    return tuple(code for code in package.get_all_codes(True) if _package_is_code(package, code))


def _expand_range(first: str, last: str) -> list[str]:
    codes = _tabular_codes()
    try:
        start = codes.index(first)
        end = codes.index(last)
    except ValueError as error:
        raise ValueError(f"range {first}-{last}: both ends must be ICD-10-CM categories") from error
    while end + 1 < len(codes) and codes[end + 1][:3] == last:
        end += 1
    if end < start:
        raise ValueError(f"range {first}-{last}: the first category comes after the last in the tabular list")
    return list(codes[start : end + 1])


def package_expand(value: str) -> list[str]:
    """The dotted codes a filter value denotes, from the package (ValueError for an invalid value)."""
    package = _package()
    match = _RANGE.match(value)
    if match:
        try:
            return _expand_range(match.group(1), match.group(2))
        except ValueError as error:
            raise ValueError(f"{value!r} is neither an ICD-10-CM code nor a category range ({error})") from None
    if package.is_valid_item(value):
        codes = [_dotted(value)] if _package_is_code(package, value) else []
        return codes + [code for code in package.get_descendants(value) if _package_is_code(package, code)]
    raise ValueError(f"{value!r} is neither an ICD-10-CM code nor a category range")


def package_is_code(code: str) -> bool:
    """True when the package knows ``code`` as a category, subcategory or extension (with or without the dot)."""
    package = _package()
    return bool(package.is_valid_item(code)) and _package_is_code(package, code)


def _valueset_items(directory: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(where, filter value)`` and ``(where, listed code)`` of every ICD-10-CM include in ``directory/valuesets``."""
    filters: list[tuple[str, str]] = []
    listed: list[tuple[str, str]] = []
    for path in sorted((directory / "valuesets").glob("*.json")):
        data: Any = json.loads(path.read_text(encoding="utf-8"))
        includes = ((data.get("compose") or {}).get("include") or ()) if isinstance(data, dict) else ()
        for index, include in enumerate(includes):
            if include.get("system") != ICD10CM:
                continue
            where = f"valuesets/{path.name}: compose.include[{index}]"
            for item in include.get("filter") or ():
                if item.get("property") == "concept" and item.get("op") == "is-a":
                    filters.append((where, str(item.get("value", ""))))
            for concept in include.get("concept") or ():
                if concept.get("code"):
                    listed.append((where, str(concept["code"])))
    return filters, listed


class SnapshotError(Exception):
    """The value sets hold an ICD-10-CM filter or code the package does not know; ``problems`` lists them."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def generate(directory: Path = KNOWLEDGE_DIR) -> dict[str, Any]:
    """The snapshot for the value sets in ``directory``, from the installed ``simple-icd-10-cm`` package.

    Raises :class:`SnapshotError` naming every filter value or listed code the package rejects.
    """
    filter_items, listed_items = _valueset_items(directory)
    problems: list[str] = []
    filters: dict[str, list[str]] = {}
    for where, value in filter_items:
        if value in filters:
            continue
        try:
            filters[value] = package_expand(value)
        except ValueError as error:
            problems.append(f"{where}: {error}")
    codes = {code for expansion in filters.values() for code in expansion}
    for where, code in listed_items:
        if package_is_code(code):
            codes.add(_dotted(code))
        else:
            problems.append(f"{where}: {code} is not an ICD-10-CM code")
    if problems:
        raise SnapshotError(problems)
    package = _package()
    return {
        "data_version": data_version(),
        "generated_by": REGENERATE,
        "filters": filters,
        "descriptions": {code: str(package.get_description(code)) for code in codes},
    }


def render(snapshot: Mapping[str, Any]) -> str:
    """The file text: sorted keys, one item a line, UTF-8 as is; the same snapshot always gives the same text."""
    return json.dumps(snapshot, sort_keys=True, ensure_ascii=False, indent=1) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cds_service.knowledge.icd10cm",
        description=f"Generate {SNAPSHOT_FILE} from the installed simple-icd-10-cm package.",
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help=f"write {SNAPSHOT_PATH}")
    action.add_argument("--check", action="store_true", help="exit 1 if the shipped snapshot differs from a fresh one")
    arguments = parser.parse_args(argv)
    try:
        text = render(generate())
    except SnapshotError as error:
        for problem in error.problems:
            print(problem, file=sys.stderr)
        return 2
    if arguments.write:
        SNAPSHOT_PATH.write_text(text, encoding="utf-8")
        print(f"wrote {SNAPSHOT_PATH} ({data_version()})")
        return 0
    try:
        shipped = SNAPSHOT_PATH.read_text(encoding="utf-8")
    except OSError:
        shipped = None
    if shipped != text:
        print(f"{SNAPSHOT_PATH} is out of date ({data_version()}); run `{REGENERATE}`", file=sys.stderr)
        return 1
    print(f"{SNAPSHOT_PATH} is up to date ({data_version()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
