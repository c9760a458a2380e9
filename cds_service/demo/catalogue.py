"""The demo page's data: bundled synthetic patients and orderables, read from package data.

Pure functions, no Flask. The patients are golden-scenario records (see ``build_patients.py``);
each was written for a fixed evaluation time, so :func:`patients_for` moves every ISO date of a
record by the whole days between that time and ``today``: durations, look-backs and ages stay what
the scenario meant, whenever the demo runs.
"""

from __future__ import annotations

import json
import re
from datetime import date, datetime, timedelta
from functools import lru_cache
from importlib import resources
from typing import Any, Final

# An ISO 8601 calendar date, alone or as the date part of a dateTime/instant, also inside free text
# ("Implanted 2022-06-05."). Codes never look like this (RxNorm, SNOMED CT and CPT codes are digits
# only; LOINC codes have one dash), so nothing but dates is moved.
_ISO_DATE: Final = re.compile(r"(?<![\d-])(\d{4})-(\d{2})-(\d{2})(?![\d])")


def _read_json(name: str) -> Any:
    return json.loads(resources.files("cds_service.demo").joinpath("data", name).read_text("utf-8"))


@lru_cache(maxsize=1)
def _catalogue() -> dict[str, Any]:
    value: dict[str, Any] = _read_json("patients.json")
    return value


@lru_cache(maxsize=1)
def orderables() -> dict[str, Any]:
    """The orderables document (draft-order templates), as shipped."""
    value: dict[str, Any] = _read_json("orderables.json")
    return value


def shift_dates(value: Any, days: int) -> Any:
    """A copy of a JSON value with every ISO date in its strings moved by ``days`` days."""
    if days == 0:
        return value
    if isinstance(value, str):
        return _ISO_DATE.sub(lambda match: _shifted(match, days), value)
    if isinstance(value, list):
        return [shift_dates(item, days) for item in value]
    if isinstance(value, dict):
        return {key: shift_dates(item, days) for key, item in value.items()}
    return value


def _shifted(match: re.Match[str], days: int) -> str:
    try:
        moved = date(int(match.group(1)), int(match.group(2)), int(match.group(3))) + timedelta(days=days)
    except ValueError:  # not a calendar date after all (month 13): leave the text alone
        return match.group(0)
    return moved.isoformat()


def days_since(recorded_at: str, today: date) -> int:
    """Whole days from a scenario's evaluation time to ``today``."""
    recorded = datetime.fromisoformat(recorded_at.replace("Z", "+00:00")).date()
    return (today - recorded).days


@lru_cache(maxsize=2)
def patients_for(today: date) -> dict[str, Any]:
    """The patient catalogue with every record moved to ``today`` (cached: one shift per day)."""
    catalogue = _catalogue()
    patients = []
    for patient in catalogue["patients"]:
        days = days_since(patient["recordedAt"], today)
        moved = {key: value for key, value in patient.items() if key != "recordedAt"}
        moved["prefetch"] = shift_dates(patient["prefetch"], days)
        moved["shiftedDays"] = days
        patients.append(moved)
    return {"patients": patients}
