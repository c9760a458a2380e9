"""ICD-10-CM through the ``simple-icd-10-cm`` package: code checks, displays and range expansion.

Value sets write ICD-10-CM ranges as compose filters (``{"property": "concept", "op": "is-a",
"value": ...}``), and this module expands them when the knowledge base loads, so no file lists
thousands of codes by hand. The filter value is either

* one ICD-10-CM item (a category such as ``Z85``, a subcategory such as ``F11.1``, or a
  chapter/block code the package knows): the item itself, if it is a code, and all its
  descendants; or
* a category range ``A00-B99``: every code from the first category to the last code under the
  last category, in the tabular list's own order. Tabular order matters: ``C7A``/``C7B`` sit
  inside ``C00-C96`` and ``O9A`` closes the pregnancy chapter, while ``D3A`` (benign carcinoid)
  sits before ``D37`` although it sorts after it alphabetically.

Only codes (categories, subcategories and 7th-character extensions) are returned, never the
chapter or block headings themselves.
"""

from __future__ import annotations

import gc
import re
import sys
import warnings
from functools import lru_cache
from types import ModuleType
from typing import Final

_RANGE: Final = re.compile(r"^([A-Z][0-9][0-9A-Z])-([A-Z][0-9][0-9A-Z])$")


_imported_here: list[bool] = []  # whether _package() was the first to import the package


@lru_cache(maxsize=1)
def _package() -> ModuleType:
    _imported_here[:] = ["simple_icd_10_cm" not in sys.modules]
    # The package reads its data with a deprecated importlib.resources call at import time;
    # the warning is the package's, not ours, and must not fail a warnings-as-errors run.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import simple_icd_10_cm

    module: ModuleType = simple_icd_10_cm
    return module


def data_version() -> str:
    """The ICD-10-CM release inside the installed package (the name of its tabular file)."""
    import importlib.metadata

    package_version = importlib.metadata.version("simple-icd-10-cm")
    return f"simple-icd-10-cm {package_version}"


def is_code(code: str) -> bool:
    """True for an ICD-10-CM category, subcategory or extension (with or without the dot)."""
    package = _package()
    return bool(package.is_valid_item(code)) and _is_code(package, code)


def description(code: str) -> str:
    """The tabular-list description of an ICD-10-CM item (KeyError-free: raise ValueError if unknown)."""
    package = _package()
    if not package.is_valid_item(code):
        raise ValueError(f"{code!r} is not an ICD-10-CM code")
    return str(package.get_description(code))


def _is_code(package: ModuleType, item: str) -> bool:
    # Some items (C7A, D49) are both a block and a category: being a category is what counts.
    return bool(package.is_category_or_subcategory(item) or package.is_extended_subcategory(item))


@lru_cache(maxsize=1)
def _tabular_codes() -> tuple[str, ...]:
    """Every code (no chapter or block headings) in tabular order, dotted; built once, for range expansion."""
    package = _package()
    return tuple(code for code in package.get_all_codes(True) if _is_code(package, code))


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


def is_valid_filter(value: str) -> bool:
    """True when ``value`` is a category range or a known ICD-10-CM item."""
    match = _RANGE.match(value)
    if match:
        try:
            _expand_range(match.group(1), match.group(2))
        except ValueError:
            return False
        return True
    return bool(_package().is_valid_item(value))


def expand(value: str) -> tuple[tuple[str, str], ...]:
    """``(dotted code, description)`` for every code the filter value denotes (see the module docstring)."""
    package = _package()
    match = _RANGE.match(value)
    if match:
        codes = _expand_range(match.group(1), match.group(2))
    elif package.is_valid_item(value):
        dotted = value if len(value) <= 3 or "." in value else f"{value[:3]}.{value[3:]}"
        codes = [dotted] if _is_code(package, value) else []
        codes += [code for code in package.get_descendants(value) if _is_code(package, code)]
    else:
        raise ValueError(f"{value!r} is neither an ICD-10-CM code nor a category range such as C00-C96")
    return tuple((code, str(package.get_description(code))) for code in codes)


def release() -> None:
    """Let the package's in-memory ICD-10-CM tree go once the knowledge base is built.

    The package parses the whole tabular list at import (about 180 MB resident); the service
    needs none of it after load-time expansion. Only a package this module imported itself is
    released: if other code imported it first, it is theirs to keep. Calling a function of this
    module again later simply imports the package again.
    """
    if not _imported_here or not _imported_here[0]:
        return
    _package.cache_clear()
    _tabular_codes.cache_clear()
    for name in [name for name in sys.modules if name == "simple_icd_10_cm" or name.startswith("simple_icd_10_cm.")]:
        del sys.modules[name]
    _imported_here.clear()
    gc.collect()
