"""The clinical engine: FHIR record and draft orders in, CDS Hooks response out.

Public surface (used by the HTTP service and by ``cds-service evaluate``)::

    engine = ClinicalEngine.from_config(service_config)     # once per process per service
    evaluation = engine.evaluate(request, record, now=now)   # pure: no I/O, no clock

``service_config`` is the private ``_config`` object of a definition in ``hooks/``.
``evaluate`` returns an :class:`Evaluation`; it raises ``cds_service.errors.PreconditionFailed``
only when nothing at all can be determined (docs/clinical-rules.md#partial-data).
"""

from cds_service.clinical.engine import ClinicalEngine, Evaluation, RatingRecord

__all__ = ["ClinicalEngine", "Evaluation", "RatingRecord"]
