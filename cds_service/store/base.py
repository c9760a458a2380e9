"""The store contract: what the HTTP layer calls, and the records it keeps.

Two kinds of record, with different guarantees (README.md, 'Security' and 'Deployment'):

* **Feedback** is durable once acknowledged: :meth:`Store.record_feedback` returns only after the
  transaction is committed (fsync'ed), and raises :class:`StoreUnavailable` otherwise, so the client
  can retry. Retries are harmless: each item has an idempotency key and is stored once.
* **Decision audit** records are best effort: :meth:`Store.record_decision` only enqueues, a
  background thread writes batches, and a full queue or a failing database drops records (counted)
  rather than delaying a card.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NamedTuple, Protocol

from cds_service.errors import CdsError
from cds_service.feedback import FeedbackItem

SCHEMA_VERSION = 1

DropReason = Literal["queue_full", "write_failed", "closed"]
# Called with the reason and the number of audit records lost; for the lead's Prometheus counter.
DropCallback = Callable[[DropReason, int], None]


class StoreUnavailable(CdsError):
    """The database cannot be reached or refused the write; feedback was NOT stored.

    Answered as 503 with an OperationOutcome. ``message`` is safe for clients; ``detail`` (the
    driver's error, without credentials) is for the log.
    """

    status = 503
    code = "transient"

    def __init__(self, detail: str) -> None:
        super().__init__("The feedback store is unavailable; retry later")
        self.detail = detail


class RatingAudit(NamedTuple):
    """One rated (or unrated) order in a decision: references and codes only."""

    order_ref: str  # e.g. "ServiceRequest/abc"
    procedure_key: str  # normalised procedure key, e.g. "mri_lumbar_without"
    rating: str | None  # appropriate | not-appropriate | no-criteria-apply, or None when not determined
    consult_id: str | None  # the pama-rating-consult-id urn:uuid


@dataclass(frozen=True)
class DecisionAudit:
    """The audit record of one hook call. Codes and ids only: no clinical text, no patient id."""

    hook_instance: str
    service_id: str
    hook: str
    client_iss: str | None
    evaluated_at: datetime
    ratings: tuple[RatingAudit, ...]
    card_ids: tuple[str, ...]
    card_indicators: tuple[str, ...]
    duration_ms: float

    def ratings_json(self) -> list[dict[str, Any]]:
        """The ratings as JSON objects (the stored form)."""
        return [
            {"order": r.order_ref, "procedure": r.procedure_key, "rating": r.rating, "consultId": r.consult_id}
            for r in self.ratings
        ]


def ratings_from_json(values: Sequence[dict[str, Any]]) -> tuple[RatingAudit, ...]:
    """Inverse of :meth:`DecisionAudit.ratings_json`."""
    return tuple(RatingAudit(v["order"], v["procedure"], v.get("rating"), v.get("consultId")) for v in values)


@dataclass(frozen=True)
class StoredFeedback:
    """A feedback item as read back from the store."""

    service_id: str
    client_iss: str | None
    received_at: datetime
    item: FeedbackItem


class Store(Protocol):
    """The feedback and audit store. Implementations are thread-safe and safe across worker processes."""

    def record_feedback(self, service_id: str, items: Sequence[FeedbackItem], client_iss: str | None) -> int:
        """Store feedback items durably; return how many were new (repeats are stored once).

        Raises :class:`StoreUnavailable` when nothing could be committed.
        """
        ...

    def record_decision(self, record: DecisionAudit) -> None:
        """Queue an audit record for the background writer; never blocks, never raises."""
        ...

    def ping(self) -> bool:
        """True when the database answers a trivial query (for ``/readyz``)."""
        ...

    def close(self) -> None:
        """Flush queued audit records (bounded wait) and close connections."""
        ...

    def audit_dropped_total(self) -> int:
        """Audit records lost in this process so far (queue full, write failed, or queued after close)."""
        ...

    def flush_audit(self, timeout: float = 5.0) -> bool:
        """Wait until every queued audit record is written or dropped; False on timeout."""
        ...

    def recent_feedback(self, limit: int = 100) -> list[StoredFeedback]:
        """The most recently received feedback, newest first (operators and tests)."""
        ...

    def recent_decisions(self, limit: int = 100) -> list[DecisionAudit]:
        """The most recently written audit records, newest first (operators and tests)."""
        ...
