"""Deterministic CDS Hooks requests for the benchmark (bench/README.md, 'Budgets').

One request is an ``order-select`` call for a patient with low back pain and sciatica, about ten
weeks into the episode, with an NSAID history, a steroid burst and physical therapy on record (the
"failed conservative therapy" path, which exercises most of the engine), plus a long tail of
unrelated but realistic data: vital signs, laboratory results, chronic conditions and their
medications, procedures, referrals and reports. A draft CT lumbar spine (even variants) or MRI
lumbar spine (odd variants) order is selected.

Sizes are exact: ``build_request(SIZES["large"])`` carries exactly 2,000 resources in its prefetch.
The same arguments always produce the same bytes (a seeded ``random.Random``, no clock, no uuid4):
a benchmark that changes its input between runs measures nothing.

Every resource is valid FHIR R4 (checked by ``tests/test_bench_generate.py`` with the R4B models)
and the prefetch keys are exactly those of ``hooks/lumbar-imaging-order-select.json``; there is no
``fhirServer``, so the service never fetches.

Usage::

    python bench/generate.py --size typical > request.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

Resource = dict[str, Any]

SIZES: dict[str, int] = {"typical": 50, "medium": 200, "large": 2000}
SERVICE_ID = "lumbar-imaging-order-select"
DEFAULT_SEED = 20260
# A fixed anchor keeps the output byte-identical across runs; ``bench/run.py`` passes today's date so
# that the record stays "ten weeks into the episode" relative to the service's real clock.
DEFAULT_ANCHOR = date(2026, 11, 2)
# hookInstance is a fixed-length placeholder: the load generator swaps in a fresh uuid per request
# without re-serialising the body (a service may reasonably treat a repeated hookInstance as a retry).
HOOK_INSTANCE_PLACEHOLDER = "00000000-0000-4000-8000-000000000000"

SNOMED = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOINC = "http://loinc.org"
CPT = "http://www.ama-assn.org/go/cpt"
UCUM = "http://unitsofmeasure.org"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"

# The prefetch keys of hooks/*.json and the resource type each one holds (the test checks they match).
PREFETCH_TYPES: dict[str, str] = {
    "patient": "Patient",
    "conditions": "Condition",
    "medicationStatements": "MedicationStatement",
    "medicationRequests": "MedicationRequest",
    "procedures": "Procedure",
    "observations": "Observation",
    "allergies": "AllergyIntolerance",
    "devices": "Device",
    "serviceRequests": "ServiceRequest",
    "diagnosticReports": "DiagnosticReport",
    "imagingStudies": "ImagingStudy",
}

# (system, code, display) tuples used by the filler; displays are the ones public code lists agree on.
CHRONIC_CONDITIONS = [
    (ICD10, "I10", "Essential (primary) hypertension"),
    (ICD10, "E78.5", "Hyperlipidemia, unspecified"),
    (ICD10, "E11.9", "Type 2 diabetes mellitus without complications"),
    (ICD10, "J45.909", "Unspecified asthma, uncomplicated"),
    (ICD10, "K21.9", "Gastro-esophageal reflux disease without esophagitis"),
    (ICD10, "F41.1", "Generalized anxiety disorder"),
    (ICD10, "E66.9", "Obesity, unspecified"),
    (ICD10, "G47.33", "Obstructive sleep apnea (adult) (pediatric)"),
    (ICD10, "M17.11", "Unilateral primary osteoarthritis, right knee"),
    (ICD10, "J30.9", "Allergic rhinitis, unspecified"),
]
CHRONIC_MEDICATIONS = [
    ("314076", "lisinopril 10 MG Oral Tablet"),
    ("617312", "atorvastatin 10 MG Oral Tablet"),
    ("860975", "24 HR metformin hydrochloride 500 MG Extended Release Oral Tablet"),
    ("197361", "amlodipine 5 MG Oral Tablet"),
    ("310798", "hydrochlorothiazide 25 MG Oral Tablet"),
    ("198211", "simvastatin 40 MG Oral Tablet"),
    ("312961", "simvastatin 20 MG Oral Tablet"),
    ("745679", "albuterol 0.09 MG/ACTUAT Metered Dose Inhaler"),
    ("313782", "acetaminophen 325 MG Oral Tablet"),
]
# LOINC code, display, unit, low, high, decimals
VITAL_SIGNS = [
    ("8867-4", "Heart rate", "/min", 58.0, 96.0, 0),
    ("9279-1", "Respiratory rate", "/min", 12.0, 20.0, 0),
    ("8310-5", "Body temperature", "Cel", 36.1, 37.4, 1),
    ("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry", "%", 94.0, 100.0, 0),
    ("29463-7", "Body weight", "kg", 78.0, 84.0, 1),
    ("8302-2", "Body height", "cm", 176.0, 178.0, 1),
    ("39156-5", "Body mass index (BMI) [Ratio]", "kg/m2", 25.0, 27.0, 1),
    ("72514-3", "Pain severity - 0-10 verbal numeric rating [Score] - Reported", "{score}", 3.0, 8.0, 0),
]
LABORATORY = [
    ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.7, 1.1, 2),
    ("62238-1", "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum, Plasma or Blood by "
     "Creatinine-based formula (CKD-EPI)", "mL/min/{1.73_m2}", 75.0, 105.0, 0),
    ("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 80.0, 140.0, 0),
    ("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 135.0, 145.0, 0),
    ("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 3.5, 5.0, 1),
    ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 13.0, 17.0, 1),
    ("6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*3/uL", 4.0, 10.0, 1),
    ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 5.6, 7.2, 1),
    ("1988-5", "C reactive protein [Mass/volume] in Serum or Plasma", "mg/L", 0.5, 4.0, 1),
]
ROUTINE_PROCEDURES = [
    (SNOMED, "183519002", "Referral to physiotherapy service"),
    (SNOMED, "410410006", "Screening surveillance"),
    (SNOMED, "430193006", "Medication reconciliation"),
    (SNOMED, "171207006", "Depression screening"),
    (SNOMED, "225358003", "Wound care"),
    (SNOMED, "86013001", "Periodic reevaluation and management of healthy individual"),
]
ROUTINE_SERVICE_REQUESTS = [
    (LOINC, "24323-8", "Comprehensive metabolic 2000 panel - Serum or Plasma"),
    (LOINC, "58410-2", "CBC panel - Blood by Automated count"),
    (LOINC, "4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood"),
    (LOINC, "24357-6", "Urinalysis macro (dipstick) panel - Urine"),
    (LOINC, "36643-5", "XR Chest 2 Views"),
]
REPORT_PANELS = [
    ("24323-8", "Comprehensive metabolic 2000 panel - Serum or Plasma"),
    ("58410-2", "CBC panel - Blood by Automated count"),
    ("57698-3", "Lipid panel with direct LDL - Serum or Plasma"),
    ("24357-6", "Urinalysis macro (dipstick) panel - Urine"),
]


def coding(system: str, code: str, display: str) -> dict[str, str]:
    """One FHIR Coding."""
    return {"system": system, "code": code, "display": display}


def concept(*codings: dict[str, str], text: str | None = None) -> dict[str, Any]:
    """A CodeableConcept with the given codings (and text when given)."""
    value: dict[str, Any] = {"coding": list(codings)}
    if text:
        value["text"] = text
    return value


def instant(day: date, minutes: int = 9 * 60) -> str:
    """An ISO 8601 dateTime with offset on ``day``, ``minutes`` after midnight UTC."""
    moment = datetime.combine(day, time(0, 0), tzinfo=UTC) + timedelta(minutes=minutes)
    return moment.isoformat()


class _RecordBuilder:
    """Accumulates the resources of one patient record; ids are sequential so that output is stable."""

    def __init__(self, rng: random.Random, anchor: date, patient_id: str) -> None:
        self.rng = rng
        self.anchor = anchor
        self.patient_id = patient_id
        self.subject = {"reference": f"Patient/{patient_id}"}
        self.by_type: dict[str, list[Resource]] = {resource_type: [] for resource_type in PREFETCH_TYPES.values()}
        self._counter = 0

    def count(self) -> int:
        return sum(len(resources) for resources in self.by_type.values())

    def next_id(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}-{self._counter:05d}"

    def day(self, weeks_ago: float) -> date:
        return self.anchor - timedelta(days=round(weeks_ago * 7))

    def add(self, resource: Resource) -> Resource:
        self.by_type[resource["resourceType"]].append(resource)
        return resource

    # --- resources -------------------------------------------------------------------------------

    def condition(self, code: dict[str, Any], onset: date, *, status: str = "active",
                  category: str = "problem-list-item", abatement: date | None = None) -> Resource:
        resource: Resource = {
            "resourceType": "Condition",
            "id": self.next_id("cond"),
            "clinicalStatus": concept(coding(CONDITION_CLINICAL, status, status.capitalize())),
            "verificationStatus": concept(coding(CONDITION_VERIFICATION, "confirmed", "Confirmed")),
            "category": [concept(coding(CONDITION_CATEGORY, category, category.replace("-", " ").capitalize()))],
            "code": code,
            "subject": self.subject,
            "onsetDateTime": instant(onset),
            "recordedDate": instant(onset, 10 * 60),
        }
        if abatement is not None:
            resource["abatementDateTime"] = instant(abatement)
        return self.add(resource)

    def medication_statement(self, rxcui: str, display: str, start: date, end: date | None, *, dose_text: str,
                             status: str = "completed", reasons: list[Resource] | None = None) -> Resource:
        period: dict[str, str] = {"start": instant(start)}
        if end is not None:
            period["end"] = instant(end)
        resource: Resource = {
            "resourceType": "MedicationStatement",
            "id": self.next_id("medstmt"),
            "status": status,
            "medicationCodeableConcept": concept(coding(RXNORM, rxcui, display), text=display),
            "subject": self.subject,
            "effectivePeriod": period,
            "dateAsserted": instant(start, 11 * 60),
            "dosage": [{"text": dose_text, "route": concept(coding(SNOMED, "26643006", "Oral route"))}],
        }
        if reasons:
            resource["reasonReference"] = [{"reference": f"Condition/{reason['id']}"} for reason in reasons]
        return self.add(resource)

    def medication_request(self, rxcui: str, display: str, authored: date, *, days: int, per_day: int, status: str,
                           reasons: list[Resource] | None = None) -> Resource:
        resource: Resource = {
            "resourceType": "MedicationRequest",
            "id": self.next_id("medreq"),
            "status": status,
            "intent": "order",
            "medicationCodeableConcept": concept(coding(RXNORM, rxcui, display), text=display),
            "subject": self.subject,
            "authoredOn": instant(authored),
            "dosageInstruction": [{
                "text": f"1 tablet by mouth {per_day} times daily",
                "timing": {"repeat": {"frequency": per_day, "period": 1, "periodUnit": "d"}},
                "route": concept(coding(SNOMED, "26643006", "Oral route")),
                "doseAndRate": [{"doseQuantity": {"value": 1, "unit": "tablet", "system": UCUM, "code": "{tbl}"}}],
            }],
            "dispenseRequest": {
                "validityPeriod": {"start": instant(authored), "end": instant(authored + timedelta(days=days))},
                "quantity": {"value": days * per_day, "unit": "tablet", "system": UCUM, "code": "{tbl}"},
                "expectedSupplyDuration": {"value": days, "unit": "days", "system": UCUM, "code": "d"},
            },
        }
        if reasons:
            resource["reasonReference"] = [{"reference": f"Condition/{reason['id']}"} for reason in reasons]
        return self.add(resource)

    def observation(self, category: str, loinc: tuple[str, str, str, float, float, int], taken: date,
                    minutes: int) -> Resource:
        code, display, unit, low, high, decimals = loinc
        value = round(self.rng.uniform(low, high), decimals)
        return self.add({
            "resourceType": "Observation",
            "id": self.next_id("obs"),
            "status": "final",
            "category": [concept(coding(OBSERVATION_CATEGORY, category, category.replace("-", " ").title()))],
            "code": concept(coding(LOINC, code, display), text=display),
            "subject": self.subject,
            "effectiveDateTime": instant(taken, minutes),
            "issued": instant(taken, minutes + 5),
            "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
        })

    def blood_pressure(self, taken: date, minutes: int) -> Resource:
        systolic = self.rng.randint(112, 146)
        diastolic = self.rng.randint(68, 92)
        return self.add({
            "resourceType": "Observation",
            "id": self.next_id("obs"),
            "status": "final",
            "category": [concept(coding(OBSERVATION_CATEGORY, "vital-signs", "Vital Signs"))],
            "code": concept(coding(LOINC, "85354-9", "Blood pressure panel with all children optional")),
            "subject": self.subject,
            "effectiveDateTime": instant(taken, minutes),
            "component": [
                {"code": concept(coding(LOINC, "8480-6", "Systolic blood pressure")),
                 "valueQuantity": {"value": systolic, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}},
                {"code": concept(coding(LOINC, "8462-4", "Diastolic blood pressure")),
                 "valueQuantity": {"value": diastolic, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}},
            ],
        })

    def procedure(self, code: dict[str, Any], performed: date, *, reasons: list[Resource] | None = None) -> Resource:
        resource: Resource = {
            "resourceType": "Procedure",
            "id": self.next_id("proc"),
            "status": "completed",
            "code": code,
            "subject": self.subject,
            "performedPeriod": {"start": instant(performed), "end": instant(performed, 10 * 60)},
        }
        if reasons:
            resource["reasonReference"] = [{"reference": f"Condition/{reason['id']}"} for reason in reasons]
        return self.add(resource)

    def service_request(self, code: dict[str, Any], authored: date, *, status: str = "completed",
                        reasons: list[Resource] | None = None) -> Resource:
        resource: Resource = {
            "resourceType": "ServiceRequest",
            "id": self.next_id("sr"),
            "status": status,
            "intent": "order",
            "code": code,
            "subject": self.subject,
            "authoredOn": instant(authored),
        }
        if reasons:
            resource["reasonReference"] = [{"reference": f"Condition/{reason['id']}"} for reason in reasons]
        return self.add(resource)

    def diagnostic_report(self, panel: tuple[str, str], issued: date, results: list[Resource]) -> Resource:
        code, display = panel
        resource: Resource = {
            "resourceType": "DiagnosticReport",
            "id": self.next_id("dr"),
            "status": "final",
            "category": [concept(coding("http://terminology.hl7.org/CodeSystem/v2-0074", "LAB", "Laboratory"))],
            "code": concept(coding(LOINC, code, display), text=display),
            "subject": self.subject,
            "effectiveDateTime": instant(issued, 8 * 60),
            "issued": instant(issued, 14 * 60),
        }
        if results:
            resource["result"] = [{"reference": f"Observation/{result['id']}"} for result in results]
        return self.add(resource)


def _patient(patient_id: str) -> Resource:
    return {
        "resourceType": "Patient",
        "id": patient_id,
        "active": True,
        "name": [{"use": "official", "family": "Benchmark", "given": ["Synthetic"]}],
        "gender": "male",
        "birthDate": "1978-04-12",
    }


def _clinical_core(builder: _RecordBuilder) -> None:
    """The resources that matter to the rules: LBP + sciatica for 10 weeks, NSAIDs, a steroid burst, PT."""
    back_pain = builder.condition(
        concept(coding(ICD10, "M54.50", "Low back pain, unspecified"), coding(SNOMED, "279039007", "Low back pain"),
                text="Low back pain"),
        builder.day(10), category="encounter-diagnosis")
    sciatica = builder.condition(
        concept(coding(ICD10, "M54.41", "Lumbago with sciatica, right side"), text="Lumbago with sciatica, right side"),
        builder.day(8), category="encounter-diagnosis")
    episode = [back_pain, sciatica]
    builder.medication_statement("198014", "naproxen 500 MG Oral Tablet", builder.day(9.5), builder.day(5.5),
                                 dose_text="500 mg by mouth twice daily", reasons=episode)
    builder.medication_request("198014", "naproxen 500 MG Oral Tablet", builder.day(9.5), days=28, per_day=2,
                               status="completed", reasons=episode)
    builder.medication_request("197806", "ibuprofen 600 MG Oral Tablet", builder.day(5), days=14, per_day=3,
                               status="completed", reasons=episode)
    builder.medication_statement("8640", "prednisone", builder.day(4), builder.day(3),
                                 dose_text="prednisone 40 mg daily for 5 days, then taper", reasons=episode)
    builder.medication_statement("313782", "acetaminophen 325 MG Oral Tablet", builder.day(10), None,
                                 dose_text="650 mg by mouth as needed", status="active", reasons=[back_pain])
    builder.service_request(concept(coding(SNOMED, "183519002", "Referral to physiotherapy service")),
                            builder.day(7), reasons=episode)
    for session in range(3):
        builder.procedure(concept(coding(SNOMED, "91251008", "Physical therapy procedure")),
                          builder.day(6.5 - session), reasons=episode)
    builder.observation("vital-signs", VITAL_SIGNS[2], builder.day(0.3), 9 * 60)
    builder.observation("laboratory", LABORATORY[1], builder.day(2), 8 * 60)
    builder.add({
        "resourceType": "AllergyIntolerance",
        "id": builder.next_id("allergy"),
        "clinicalStatus": concept(coding("http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "active",
                                         "Active")),
        "verificationStatus": concept(coding("http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
                                             "confirmed", "Confirmed")),
        "code": concept(coding(SNOMED, "91936005", "Allergy to penicillin")),
        "patient": builder.subject,
        "recordedDate": instant(builder.day(400)),
    })
    builder.add({
        "resourceType": "ImagingStudy",
        "id": builder.next_id("img"),
        "status": "available",
        "subject": builder.subject,
        "started": instant(builder.day(150)),
        "modality": [coding("http://dicom.nema.org/resources/ontology/DCM", "DX", "Digital Radiography")],
        "procedureCode": [concept(coding(LOINC, "36643-5", "XR Chest 2 Views"))],
        "numberOfSeries": 1,
        "numberOfInstances": 2,
    })


def _filler_makers(builder: _RecordBuilder) -> list[tuple[int, Callable[[], None]]]:
    """Weighted makers of irrelevant-but-realistic resources; vital signs dominate, as in real records."""
    rng = builder.rng

    def visit_vitals() -> None:
        weeks = rng.uniform(0.5, 260)
        taken = builder.day(weeks)
        minutes = rng.randint(8 * 60, 17 * 60)
        if rng.random() < 0.3:
            builder.blood_pressure(taken, minutes)
        else:
            builder.observation("vital-signs", rng.choice(VITAL_SIGNS), taken, minutes)

    def lab_report() -> None:
        issued = builder.day(rng.uniform(1, 260))
        results = [builder.observation("laboratory", rng.choice(LABORATORY), issued, 8 * 60)
                   for _ in range(rng.randint(1, 3))]
        builder.diagnostic_report(rng.choice(REPORT_PANELS), issued, results)

    def chronic_condition() -> None:
        system, code, display = rng.choice(CHRONIC_CONDITIONS)
        onset = builder.day(rng.uniform(30, 600))
        if rng.random() < 0.2:
            builder.condition(concept(coding(system, code, display)), onset, status="resolved",
                              abatement=onset + timedelta(days=rng.randint(20, 200)))
        else:
            builder.condition(concept(coding(system, code, display)), onset)

    def chronic_medication() -> None:
        rxcui, display = rng.choice(CHRONIC_MEDICATIONS)
        start = builder.day(rng.uniform(20, 500))
        if rng.random() < 0.5:
            builder.medication_statement(rxcui, display, start, None, dose_text="1 tablet by mouth daily",
                                         status="active")
        else:
            builder.medication_request(rxcui, display, start, days=90, per_day=1,
                                       status=rng.choice(["active", "completed", "stopped"]))

    def routine_procedure() -> None:
        system, code, display = rng.choice(ROUTINE_PROCEDURES)
        builder.procedure(concept(coding(system, code, display)), builder.day(rng.uniform(2, 400)))

    def routine_order() -> None:
        system, code, display = rng.choice(ROUTINE_SERVICE_REQUESTS)
        builder.service_request(concept(coding(system, code, display)), builder.day(rng.uniform(1, 400)))

    return [(60, visit_vitals), (10, lab_report), (8, chronic_condition), (10, chronic_medication),
            (6, routine_procedure), (6, routine_order)]


def build_record(size: int, *, seed: int = DEFAULT_SEED, variant: int = 0, anchor: date = DEFAULT_ANCHOR,
                 patient_id: str | None = None) -> dict[str, list[Resource]]:
    """The patient record: resourceType -> resources, exactly ``size`` resources including the Patient."""
    if size < 20:
        raise ValueError(f"size must be at least 20 (the clinical core alone has 16 resources), got {size}")
    rng = random.Random(f"{seed}:{size}:{variant}")
    patient_id = patient_id or f"bench-{size}-{variant}"
    builder = _RecordBuilder(rng, anchor, patient_id)
    builder.add(_patient(patient_id))
    _clinical_core(builder)
    makers = _filler_makers(builder)
    weights = [weight for weight, _ in makers]
    while builder.count() < size:
        rng.choices(makers, weights=weights)[0][1]()
    _trim_to(builder, size)
    return builder.by_type


def _trim_to(builder: _RecordBuilder, size: int) -> None:
    """Drop the last filler observations that a multi-resource maker overshot, keeping references intact."""
    observations = builder.by_type["Observation"]
    referenced = {reference["reference"] for report in builder.by_type["DiagnosticReport"]
                  for reference in report.get("result", [])}
    while builder.count() > size:
        for index in range(len(observations) - 1, -1, -1):
            if f"Observation/{observations[index]['id']}" not in referenced:
                del observations[index]
                break
        else:  # pragma: no cover - the filler always produces unreferenced vitals long before this
            raise RuntimeError("cannot trim the record to the requested size")


def searchset(resources: list[Resource], base: str) -> Resource:
    """A searchset Bundle as a FHIR server returns it (no ``entry`` member when empty)."""
    bundle: Resource = {"resourceType": "Bundle", "type": "searchset", "total": len(resources)}
    if resources:
        bundle["entry"] = [
            {"fullUrl": f"{base}/{resource['resourceType']}/{resource['id']}", "resource": resource,
             "search": {"mode": "match"}}
            for resource in resources
        ]
    return bundle


def draft_order(variant: int, patient_id: str, anchor: date) -> Resource:
    """The draft imaging order being selected: CT lumbar without contrast (even variants) or MRI (odd)."""
    if variant % 2 == 0:
        code = concept(coding(CPT, "72131", "CT lumbar spine without contrast material"),
                       coding(LOINC, "30620-9", "CT Lumbar spine WO contrast"),
                       text="CT lumbar spine without contrast")
    else:
        code = concept(coding(CPT, "72148", "MRI lumbar spine without contrast material"),
                       coding(LOINC, "30679-5", "MR Lumbar spine WO contrast"),
                       text="MRI lumbar spine without contrast")
    return {
        "resourceType": "ServiceRequest",
        "id": f"draft-imaging-{variant}",
        "status": "draft",
        "intent": "order",
        "category": [concept(coding(SNOMED, "363679005", "Imaging"))],
        "code": code,
        "subject": {"reference": f"Patient/{patient_id}"},
        "authoredOn": instant(anchor, 15 * 60),
        "reasonCode": [concept(coding(ICD10, "M54.41", "Lumbago with sciatica, right side"))],
    }


def build_request(size: int, *, seed: int = DEFAULT_SEED, variant: int = 0,
                  anchor: date = DEFAULT_ANCHOR, fresh_patient: bool = False) -> dict[str, Any]:
    """A complete ``order-select`` request whose prefetch holds exactly ``size`` resources.

    ``fresh_patient``: the patient id carries the hookInstance placeholder too, so that the load
    generator's fresh uuid makes every request a patient the service has never seen (every resource
    references the patient): no content-keyed memo can help, the cold case.
    """
    patient_id = f"bench-{size}-{variant}" + (f"-{HOOK_INSTANCE_PLACEHOLDER}" if fresh_patient else "")
    record = build_record(size, seed=seed, variant=variant, anchor=anchor, patient_id=patient_id)
    base = "https://fhir.example.org/r4"
    prefetch: dict[str, Any] = {}
    for key, resource_type in PREFETCH_TYPES.items():
        resources = record[resource_type]
        prefetch[key] = resources[0] if resource_type == "Patient" else searchset(resources, base)
    order = draft_order(variant, patient_id, anchor)
    return {
        "hook": "order-select",
        "hookInstance": HOOK_INSTANCE_PLACEHOLDER,
        "context": {
            "userId": "Practitioner/bench-practitioner",
            "patientId": patient_id,
            "encounterId": f"bench-encounter-{variant}",
            "selections": [f"ServiceRequest/{order['id']}"],
            "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": order}]},
        },
        "prefetch": prefetch,
    }


def prefetch_resource_count(request: dict[str, Any]) -> int:
    """How many resources a request's prefetch carries (a Patient counts as one)."""
    total = 0
    for value in request.get("prefetch", {}).values():
        if value is None:
            continue
        if value.get("resourceType") == "Bundle":
            total += len(value.get("entry", []))
        else:
            total += 1
    return total


def encode(request: dict[str, Any]) -> bytes:
    """The request body as sent: compact UTF-8 JSON (deterministic for a given request)."""
    return json.dumps(request, separators=(",", ":"), ensure_ascii=False).encode()


def main(argv: list[str] | None = None) -> int:
    """Print one generated request (for inspection or ``cds-service evaluate``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="typical", help="typical | medium | large | a number of resources")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--variant", type=int, default=0, help="even: CT lumbar order; odd: MRI lumbar order")
    parser.add_argument("--anchor", type=date.fromisoformat, default=DEFAULT_ANCHOR, help="the record's 'today'")
    args = parser.parse_args(argv)
    size = SIZES[args.size] if args.size in SIZES else int(args.size)
    request = build_request(size, seed=args.seed, variant=args.variant, anchor=args.anchor)
    sys.stdout.write(json.dumps(request, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
