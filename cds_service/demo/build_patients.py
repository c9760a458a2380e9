"""Build the demo page's patient catalogue (``data/patients.json``) from the golden scenarios.

The demo patients are the records of a few golden scenarios in ``fixtures/*/request.json``: the
prefetch answers an EHR would send, unchanged, plus the reason the scenario's clinician gave for the
order. Each keeps its scenario's evaluation time (``recordedAt``): the page shifts every date by the
days between that time and today, so a 3-week sciatica stays 3 weeks old whenever the demo runs.

Deterministic: the same fixtures give the same bytes (sorted keys, fixed order). Run from the
repository root after a scenario changes, and commit the result::

    python -m cds_service.demo.build_patients          # rewrite data/patients.json
    python -m cds_service.demo.build_patients --check  # exit 1 when the file is out of date

``fixtures/`` is not in the wheel, so this runs in a checkout only.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_FIXTURES = PACKAGE_DIR.parent.parent / "fixtures"
OUTPUT = PACKAGE_DIR / "data" / "patients.json"


@dataclass(frozen=True)
class DemoPatient:
    """One catalogue entry: which scenario's record, and how the page presents it."""

    key: str  # stable id used by the page (and the tests)
    scenario: str  # folder under fixtures/
    label: str  # the patient picker's line
    try_this: str  # a hint: what to order to see the service at work


# The order of the patient picker. Labels and hints are written for the page (scenario titles speak to
# developers); they describe the record, never the service's answer, which the page shows live.
PATIENTS: tuple[DemoPatient, ...] = (
    DemoPatient(
        "acute-lbp",
        "ct-lumbar-wwo-for-uncomplicated-acute-lbp",
        "Acute low back pain, 12 days, no red flags",
        "Order a lumbar MRI or CT: imaging this early is usually not appropriate.",
    ),
    DemoPatient(
        "sciatica-3-weeks",
        "mri-lumbar-wo-for-sciatica-under-6-weeks",
        "Sciatica for 3 weeks, one week of ibuprofen",
        "Order MRI lumbar spine without contrast (72148).",
    ),
    DemoPatient(
        "chronic-lbp-no-therapy",
        "xr-lumbar-for-chronic-lbp-without-documented-therapy",
        "Axial back pain for 10 weeks, no therapy documented",
        "Order lumbar radiographs (72100).",
    ),
    DemoPatient(
        "failed-therapy-radiculopathy",
        "ct-lumbar-wo-after-failed-therapy-converts-to-mri",
        "Radiculopathy for 8 weeks after 3 weeks of ibuprofen",
        "Order CT lumbar spine without contrast (72131), then an NSAID or a spine-surgery referral.",
    ),
    DemoPatient(
        "failed-therapy-sciatica",
        "mri-lumbar-wo-after-failed-nsaid-trial-with-sciatica",
        "Sciatica for 9 weeks after 4 weeks of naproxen",
        "Order MRI lumbar spine without contrast (72148): an appropriate order needs no card.",
    ),
    DemoPatient(
        "spine-surgery-candidate",
        "spine-surgery-referral-after-failed-therapy-creates-mri",
        "S1 radiculopathy for 14 weeks after naproxen",
        "Order a spine-surgery referral or an epidural steroid injection.",
    ),
    DemoPatient(
        "cauda-equina",
        "cauda-equina-ct-lumbar-converts-to-urgent-mri",
        "Suspected cauda equina syndrome, urinary retention",
        "Order any lumbar study, or ibuprofen.",
    ),
    DemoPatient(
        "prostate-cancer",
        "active-prostate-cancer-ct-lumbar-converts-to-mri-wwo",
        "Prostate cancer on treatment, back pain for 3 weeks",
        "Order CT lumbar spine without contrast (72131).",
    ),
    DemoPatient(
        "breast-cancer-history",
        "resolved-breast-cancer-history-mri-wwo-appropriate",
        "Breast cancer history (resolved), new back pain",
        "Order MRI lumbar spine without and with contrast (72158).",
    ),
    DemoPatient(
        "osteoporosis",
        "osteoporosis-xr-lumbar-appropriate-with-warning",
        "Osteoporosis, back pain after lifting, 5 days",
        "Order lumbar radiographs (72100).",
    ),
    DemoPatient(
        "age-76",
        "age-76-fracture-risk-ct-lumbar-wwo",
        "Age 76, back pain for 10 days",
        "Order CT lumbar spine without and with contrast (72133).",
    ),
    DemoPatient(
        "long-term-prednisone",
        "long-term-prednisone-is-red-flag-not-trial",
        "Long-term prednisone for asthma, sciatica for 8 weeks",
        "Order lumbar radiographs (72100).",
    ),
    DemoPatient(
        "prior-laminectomy",
        "prior-laminectomy-with-radiculopathy-ct-converts-to-mri",
        "Prior laminectomy and discectomy, new radiculopathy",
        "Order CT lumbar spine without contrast (72131).",
    ),
    DemoPatient(
        "pregnancy-prior-discectomy",
        "pregnancy-after-discectomy-mri-wwo-converts-to-mri-wo",
        "Pregnant, prior discectomy, recurrent sciatica",
        "Order MRI lumbar spine without and with contrast (72158).",
    ),
    DemoPatient(
        "pacemaker",
        "pacemaker-with-mri-wo-after-failed-therapy",
        "Pacemaker, sciatica for 9 weeks after naproxen",
        "Order MRI lumbar spine without contrast (72148).",
    ),
    DemoPatient(
        "ckd-egfr-22",
        "ckd-egfr-below-30-mri-wwo-after-failed-therapy",
        "CKD stage 4 (eGFR 22), radiculopathy after a steroid burst",
        "Order MRI lumbar spine without and with contrast (72158).",
    ),
    DemoPatient(
        "gadolinium-allergy",
        "gadolinium-allergy-cancer-mri-wwo-converts-to-mri-wo",
        "Gadolinium allergy and breast cancer history",
        "Order MRI lumbar spine without and with contrast (72158).",
    ),
    DemoPatient(
        "recent-lumbar-mri",
        "prior-lumbar-mri-within-12-months-duplicate-order",
        "Sciatica, lumbar MRI done 5 months ago",
        "Order MRI lumbar spine without contrast (72148) again.",
    ),
    DemoPatient(
        "no-record",
        "no-patient-history-mri-wo-precondition-failed",
        "Record not available (the EHR sends the orders only)",
        "Order MRI lumbar spine without contrast (72148): the service cannot decide and says why.",
    ),
)


def _first_order_reason(request: dict[str, Any]) -> list[Any] | None:
    """The reasonCode of the scenario's first selected order (what the clinician gave as the reason)."""
    context = request["context"]
    selected = set(context.get("selections", ()))
    entries = [entry["resource"] for entry in context["draftOrders"].get("entry", ())]
    chosen = [r for r in entries if f"{r['resourceType']}/{r['id']}" in selected] or entries
    for resource in chosen:
        if resource.get("reasonCode"):
            reasons: list[Any] = resource["reasonCode"]
            return reasons
    return None


def build_catalogue(fixtures: Path) -> dict[str, Any]:
    patients = []
    for patient in PATIENTS:
        folder = fixtures / patient.scenario
        request = json.loads((folder / "request.json").read_text("utf-8"))
        scenario = json.loads((folder / "scenario.json").read_text("utf-8"))
        context = request["context"]
        entry: dict[str, Any] = {
            "key": patient.key,
            "label": patient.label,
            "tryThis": patient.try_this,
            "scenario": patient.scenario,
            "recordedAt": scenario["now"],
            "patientId": context["patientId"],
            "encounterId": context.get("encounterId"),
            "userId": context["userId"],
            # None: the EHR sends no prefetch at all (the page then sends none either).
            "prefetch": request.get("prefetch"),
        }
        if (reason := _first_order_reason(request)) is not None:
            entry["orderReason"] = reason
        patients.append({key: value for key, value in entry.items() if value is not None or key == "prefetch"})
    return {
        "description": (
            "Synthetic demo patients: the records of golden scenarios in fixtures/, built by "
            "cds_service/demo/build_patients.py. Do not edit by hand."
        ),
        "patients": patients,
    }


def render(catalogue: dict[str, Any]) -> str:
    return json.dumps(catalogue, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--fixtures", type=Path, default=DEFAULT_FIXTURES, help="the fixtures/ folder")
    parser.add_argument("--check", action="store_true", help="exit 1 when data/patients.json is out of date")
    args = parser.parse_args(argv)
    text = render(build_catalogue(args.fixtures))
    if args.check:
        current = OUTPUT.read_text("utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT} is out of date: run python -m cds_service.demo.build_patients", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, "utf-8")
    print(f"wrote {OUTPUT} ({len(PATIENTS)} patients)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
