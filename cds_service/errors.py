"""Typed errors, each mapped to one HTTP status in one place (``cds_service.app``).

Exception hierarchy::

    CdsError
    ├── BadRequest            400  malformed body, missing field, wrong hook for the service
    ├── Unauthorized          401  failed client JWT (the body never says why)
    ├── NotFound              404  unknown service id or route
    ├── MethodNotAllowed      405
    ├── PayloadTooLarge       413
    ├── UnsupportedMediaType  415
    ├── PreconditionFailed    412  no patient data at all could be obtained and the draft orders determine nothing
    └── store.StoreUnavailable 503  the feedback store cannot be reached (the client should retry)

Every error is answered with a FHIR OperationOutcome. ``ConfigurationError`` is separate: it
stops start-up (bad definition file, bad setting) and never reaches a client.
"""

from __future__ import annotations

from typing import Any, ClassVar


class CdsError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "exception"  # OperationOutcome.issue.code (http://hl7.org/fhir/issue-type)
    # The message may go into the log line: it is built by the service and carries no client value (a 400's
    # message can quote any member of the body, patient identifiers included, so only its JSON path is logged).
    loggable: ClassVar[bool] = True

    def __init__(self, message: str, *, expression: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.expression = expression

    def to_operation_outcome(self) -> dict[str, Any]:
        issue: dict[str, Any] = {"severity": "error", "code": self.code, "diagnostics": self.message}
        if self.expression:
            issue["expression"] = [self.expression]
        return {"resourceType": "OperationOutcome", "issue": [issue]}


class BadRequest(CdsError):
    status = 400
    code = "invalid"
    loggable = False


class Unauthorized(CdsError):
    status = 401
    code = "login"
    loggable = False  # logged with its own reason, never with the client's message

    def __init__(self, reason: str) -> None:
        # The reason is for the log only; clients get a fixed message.
        super().__init__("Authentication required")
        self.reason = reason


class NotFound(CdsError):
    status = 404
    code = "not-found"


class MethodNotAllowed(CdsError):
    status = 405
    code = "not-supported"


class PayloadTooLarge(CdsError):
    status = 413
    code = "too-costly"


class UnsupportedMediaType(CdsError):
    status = 415
    code = "not-supported"


class PreconditionFailed(CdsError):
    status = 412
    code = "incomplete"


class InternalError(CdsError):
    """A bug: the client gets a fixed message, the trace goes to the log."""

    status = 500
    code = "exception"


class ConfigurationError(Exception):
    """A definition file, knowledge file or setting is wrong; the message names the file or variable."""
