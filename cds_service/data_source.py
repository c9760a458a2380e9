"""The FHIR data path: from a request's prefetch and its FHIR server to one :class:`PatientRecord`.

For every prefetch template of the service definition (CDS Hooks 2.0, "Prefetch Template":
https://cds-hooks.hl7.org/2.0/; docs/clinical-rules.md#partial-data):

* a value is used as given: a searchset Bundle's entries, or a single resource. A Bundle that is
  only the first page (``link`` ``next``) is completed through the FHIR server when that server is
  allowed and the next page is on the same base; otherwise the first page is kept with a warning;
* ``null`` means the data was obtained and is empty (a fact, not an unknown);
* an ``OperationOutcome`` means the EHR could not provide it: that resource type is unknown;
* an absent key is fetched from ``fhirServer`` with the ``fhirAuthorization`` bearer token, all absent
  keys in parallel, within one deadline for the whole request, with bounded retries on 429/5xx and
  never through a redirect to another host.

``fhirServer`` is untrusted input (CDS Hooks 2.0, "Security and Safety": https://cds-hooks.hl7.org/2.0/):
nothing is sent unless :func:`is_allowed_server` accepts it, which requires an exact match with an allowed base URL and
``https`` outside loopback. The access token goes into the ``Authorization`` header of requests to
that server and nowhere else: not into logs, warnings, reasons or exception messages.

Nothing here raises out of :meth:`FhirDataSource.resolve`: whatever cannot be obtained becomes an
``unavailable`` entry of the record, because unknown data must stay unknown rather than fail the
request (the clinical engine decides what it can still say). Each entry says why, precisely enough
for an integrator to act on it: a reason for cards (no URL) and a detail for the OperationOutcome
of a 412 and the logs (which may name the FHIR server's base URL). Results cut short (the page bound,
a next page that could not be read) are partial: the type is unknown, the resources read are kept
(what they show is true), and a warning goes to the response's data-quality extension.
"""

from __future__ import annotations

import contextvars
import http.cookiejar
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from functools import lru_cache
from typing import Any, Final, Literal, TypeGuard
from urllib.parse import SplitResult, urljoin, urlsplit, urlunsplit

import orjson
import requests
from requests.adapters import HTTPAdapter

from cds_service.protocol.request import HookRequest
from cds_service.record import PatientRecord, Resource
from cds_service.urls import is_loopback_host

__all__ = ["FetchOutcome", "FhirDataSource", "is_allowed_server", "normalise_base_url", "render_template"]

log = logging.getLogger("cds_service.data_source")

FetchOutcome = Literal["ok", "error", "timeout", "not_allowed", "http_4xx", "http_5xx"]

FHIR_JSON: Final = "application/fhir+json"
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_RETRYABLE_STATUS: Final = frozenset({429, 500, 502, 503, 504})
_REDIRECT_STATUS: Final = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS: Final = 3
# Below this much budget a request cannot usefully start; treat it as already timed out.
_MIN_REQUEST_BUDGET: Final = 0.01
_USER_AGENT: Final = "cds-service-fhir-data"

# Prefetch tokens allowed by CDS Hooks 2.0 for order-select / order-sign (CDS Hooks 2.0, "Prefetch tokens": https://cds-hooks.hl7.org/2.0/).
_TOKEN_PATTERN: Final = re.compile(r"\{\{\s*([A-Za-z.]+)\s*\}\}")
# A FHIR id (R4 datatype `id`). Token values are checked against it before they go into a URL, so a
# crafted patientId ("../x", "1?_format=xml", "a#b") cannot change the path or query that is sent.
_FHIR_ID: Final = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_FHIR_REFERENCE: Final = re.compile(r"([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})")
_USER_TOKENS: Final = {
    "userPractitionerId": "Practitioner",
    "userPractitionerRoleId": "PractitionerRole",
    "userPatientId": "Patient",
    "userRelatedPersonId": "RelatedPerson",
}

# Reasons can be shown to clinicians in cards ("... could not be obtained: <reason>") and are logged; they
# never contain URLs, ids or tokens. Details (OperationOutcome diagnostics of a 412, log lines) may add the FHIR
# server's base URL (without user-info, query or fragment) and the exception class; never a token or an id.
REASON_NOT_ALLOWED: Final = "the FHIR server is not allowed for this client"
REASON_NO_SERVER: Final = "not in the prefetch, and the request has no fhirServer to fetch from"
REASON_UNREACHABLE: Final = "the FHIR server could not be reached"
REASON_NOT_FHIR: Final = "the FHIR server's answer was not FHIR JSON"
REASON_REDIRECT: Final = "the FHIR server redirected to another host"
REASON_TOO_LARGE: Final = "the FHIR server's answer was too large"
REASON_SHUTTING_DOWN: Final = "the service was shutting down"
REASON_EHR_OUTCOME: Final = "the EHR sent an OperationOutcome instead of the data"
REASON_SERVER_OUTCOME: Final = "the FHIR server could not provide it (it answered with an OperationOutcome)"
# What an HTTP error status most likely means for the service's queries (a hint for the integrator).
_STATUS_HINTS: Final = {
    400: "query refused",
    401: "token rejected",
    403: "access refused for this token",
    404: "not found",
    429: "too many requests",
}
_MAX_SHOWN_URL: Final = 200
_ISSUE_CODE: Final = re.compile(r"[a-z-]{1,40}")  # http://hl7.org/fhir/issue-type codes


def reason_timeout(seconds: float) -> str:
    """The reason for a fetch that the request's deadline (CDS_FHIR_TIMEOUT) cut off."""
    return f"the FHIR server did not answer within {seconds:g} s"


def reason_http_status(status: int, token_sent: bool) -> str:
    """``the FHIR server answered 401 to the service's queries (token rejected)``."""
    if status == 401 and not token_sent:
        hint: str | None = "no token: the request has no fhirAuthorization"
    else:
        hint = _STATUS_HINTS.get(status) or ("server error" if status >= 500 else None)
    return f"the FHIR server answered {status} to the service's queries" + (f" ({hint})" if hint else "")


def reason_pages_cut(pages: int) -> str:
    """The reason for results cut short by the page bound: what was not read is unknown."""
    if pages == 1:
        return "only the first page of results was read"
    return f"only the first {pages} pages of results were read"


def display_url(url: object) -> str:
    """A FHIR base URL as it may be shown in an OperationOutcome or a log line: no user-info, query or fragment."""
    if not isinstance(url, str):
        return "(none)"
    try:
        parts = _split_http_url(url)
        scheme, host, port = _origin(parts)
    except ValueError:
        return "(not an http(s) URL)"
    netloc = f"[{host}]" if ":" in host else host
    if port != _DEFAULT_PORTS[scheme]:
        netloc = f"{netloc}:{port}"
    shown = f"{scheme}://{netloc}{parts.path.rstrip('/')}"
    return shown if len(shown) <= _MAX_SHOWN_URL else shown[: _MAX_SHOWN_URL - 3] + "..."


def not_allowed_detail(url: str | None, allowed: Collection[str]) -> str:
    """Why ``fhirServer`` may not be called, for the OperationOutcome and the log (see :func:`is_allowed_server`)."""
    shown = display_url(url)
    try:
        parts = _split_http_url(url or "")
    except ValueError:
        return f"fhirServer {shown} is not allowed for this client: it is not an absolute http(s) URL"
    scheme, host, _port = _origin(parts)
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        return (
            f"fhirServer {shown} is not allowed for this client: a FHIR base URL carries no user name, password, "
            "query or fragment"
        )
    if scheme != "https" and not is_loopback_host(host):
        return f"fhirServer {shown} is not allowed for this client: https is required outside loopback"
    if not _normalised_allowed(tuple(allowed)):
        return (
            f"fhirServer {shown} is not allowed for this client: no FHIR server is allowed (the trusted client's "
            "fhir_servers, or CDS_FHIR_SERVERS in open mode, is empty)"
        )
    return f"fhirServer {shown} is not allowed for this client"


# ---------------------------------------------------------------------------------------------
# Base URLs and the outbound allow-list
# ---------------------------------------------------------------------------------------------


def _split_http_url(url: str) -> SplitResult:
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError("not an absolute http(s) URL")
    parts.port  # noqa: B018 - raises ValueError for a malformed port; checked here, once
    return parts


def _origin(parts: SplitResult) -> tuple[str, str, int]:
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    return scheme, host, parts.port or _DEFAULT_PORTS[scheme]


def normalise_base_url(url: str) -> str:
    """Canonical form of a FHIR base URL, for comparing a request's ``fhirServer`` with allowed servers.

    Lower-cases scheme and host, drops the scheme's default port, a fragment and trailing slashes;
    the path keeps its case (FHIR base paths are case-sensitive). Raises ``ValueError`` when the
    value is not an absolute http(s) URL.
    """
    parts = _split_http_url(url)
    scheme, host, port = _origin(parts)
    netloc = f"[{host}]" if ":" in host else host
    if port != _DEFAULT_PORTS[scheme]:
        netloc = f"{netloc}:{port}"
    if parts.username is not None or parts.password is not None:
        # Keep credentials visible to the comparison (so they never match a plain allowed base), but
        # lower-case nothing in them.
        userinfo = parts.netloc.rsplit("@", 1)[0]
        netloc = f"{userinfo}@{netloc}"
    return urlunsplit((scheme, netloc, parts.path.rstrip("/"), parts.query, ""))


def is_allowed_server(url: str | None, allowed: Collection[str]) -> bool:
    """True when ``url`` (a request's ``fhirServer``) may be called.

    It must equal one of ``allowed`` after :func:`normalise_base_url`, carry no user-info, and use
    ``https`` unless its host is loopback (127.0.0.0/8, ``localhost``, ``::1``). Allowed entries that
    are not URLs are ignored rather than raising: a bad setting is reported by ``check-config``.
    """
    if not isinstance(url, str) or not url or not allowed:
        return False
    try:
        parts = _split_http_url(url)
        candidate = normalise_base_url(url)
    except ValueError:
        return False
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        return False
    scheme, host, _port = _origin(parts)
    if scheme != "https" and not is_loopback_host(host):
        return False
    return candidate in _normalised_allowed(tuple(allowed))


@lru_cache(maxsize=256)
def _normalised_allowed(allowed: tuple[str, ...]) -> frozenset[str]:
    # Allowed lists are per process or per trusted client: a handful of distinct tuples, so cache them.
    normalised: set[str] = set()
    for entry in allowed:
        if not isinstance(entry, str):
            continue
        try:
            normalised.add(normalise_base_url(entry))
        except ValueError:
            continue
    return frozenset(normalised)


def _is_under_base(url: str, base: str) -> bool:
    """True when absolute ``url`` lies on the FHIR server whose normalised base is ``base``."""
    try:
        target = normalise_base_url(url)
        base_parts = _split_http_url(base)
        target_parts = _split_http_url(url)
    except ValueError:
        return False
    if _origin(base_parts) != _origin(target_parts) or target_parts.username is not None:
        return False
    base_path = base_parts.path.rstrip("/")
    target_path = urlsplit(target).path
    if ".." in target_path.split("/"):
        return False  # "<base>/../elsewhere" would leave the base once the path is normalised
    return target_path == base_path or target_path.startswith(base_path + "/")


def _same_origin(url: str, other: str) -> bool:
    try:
        first, second = _split_http_url(url), _split_http_url(other)
    except ValueError:
        return False
    return _origin(first) == _origin(second) and second.username is None


# ---------------------------------------------------------------------------------------------
# Prefetch templates
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RenderedTemplate:
    """A prefetch template with its tokens replaced, or why it could not be."""

    resource_type: str | None  # from the first path segment; None when even that is unknown
    relative_url: str | None  # None when a token had no (valid) value
    missing: str | None = None  # the token without a value, for the reason


def _token_value(token: str, request: HookRequest) -> tuple[str | None, bool]:
    """(value, is_reference) for a 2.0 prefetch token, value None when the request has none."""
    if token == "context.patientId":
        return request.patient_id, False
    if token == "context.encounterId":
        return request.encounter_id, False
    if token == "context.userId":
        return request.user_id, True
    if token in _USER_TOKENS:
        match = _FHIR_REFERENCE.fullmatch(request.user_id or "")
        if match and match.group(1) == _USER_TOKENS[token]:
            return match.group(2), False
        return None, False
    return None, False  # not a 2.0 token (for example 3.0 FHIRPath): never guessed


def _valid_token_value(value: str, is_reference: bool) -> bool:
    if is_reference:
        return _FHIR_REFERENCE.fullmatch(value) is not None
    return _FHIR_ID.fullmatch(value) is not None and value.strip(".") != ""


def _resource_type_of(relative_url: str) -> str | None:
    first = re.split(r"[/?]", relative_url, maxsplit=1)[0]
    return first if re.fullmatch(r"[A-Z][A-Za-z]+", first) else None


def render_template(template: str, request: HookRequest) -> RenderedTemplate:
    """Replace the CDS Hooks 2.0 tokens of a prefetch template with the request's values.

    A token without a value in this request (``encounterId`` is optional in the order hooks), an
    unknown token, or a value that is not a FHIR id makes the template unfetchable: never guess.
    """
    missing: str | None = None

    def substitute(match: re.Match[str]) -> str:
        nonlocal missing
        token = match.group(1)
        value, is_reference = _token_value(token, request)
        if value is None or not _valid_token_value(value, is_reference):
            missing = missing or token
            return ""
        return value

    rendered = _TOKEN_PATTERN.sub(substitute, template.strip())
    resource_type = _resource_type_of(template.strip()) or (_resource_type_of(rendered) if missing is None else None)
    if missing is not None or "{{" in rendered:
        return RenderedTemplate(resource_type, None, missing or "an unsupported token")
    return RenderedTemplate(resource_type, rendered.lstrip("/"))


# ---------------------------------------------------------------------------------------------
# Results of one prefetch key
# ---------------------------------------------------------------------------------------------


@dataclass
class _KeyResult:
    """What one prefetch key contributed (built by one worker thread, read by the caller)."""

    key: str
    resource_type: str | None
    resources: list[Resource] = field(default_factory=list)
    unavailable: str | None = None  # reason, when the key's type could not be obtained (or only partly)
    detail: str | None = None  # the reason for the OperationOutcome and logs, when it says more than ``unavailable``
    # Cut short (page bound, a page that could not be read): unknown, but the resources read so far are kept.
    partial: bool = False
    warnings: list[str] = field(default_factory=list)
    outcome: FetchOutcome | None = None  # set when the network was used (or refused)
    # True when the first page came in the prefetch and the network only completes it: a failure then
    # keeps that page (real data) and warns, instead of making the type unknown.
    from_prefetch: bool = False
    given: tuple[Resource, ...] = ()


class _Deadline:
    """The time budget of one resolve() call, shared by all its fetches."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.at - time.monotonic()


class _FetchFailed(Exception):
    """A fetch that ended without usable FHIR JSON: an outcome, a reason (no URL) and optionally a detail."""

    def __init__(
        self, outcome: FetchOutcome, reason: str, status: int | None = None, detail: str | None = None
    ) -> None:
        super().__init__(reason)
        self.outcome: FetchOutcome = outcome
        self.reason = reason
        self.status = status
        self.detail = detail


def _next_link(bundle: Mapping[str, Any]) -> str | None:
    links = bundle.get("link")
    if not isinstance(links, list):
        return None
    for link in links:
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return str(link["url"])
    return None


def _is_resource(value: object) -> TypeGuard[Mapping[str, Any]]:
    return isinstance(value, dict) and isinstance(value.get("resourceType"), str)


def _bundle_resources(bundle: Mapping[str, Any]) -> Iterator[Resource]:
    entries = bundle.get("entry")
    if not isinstance(entries, list):
        return
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        resource = entry.get("resource")
        # OperationOutcome entries (search.mode "outcome") are messages about the search, not patient data.
        if _is_resource(resource) and resource["resourceType"] != "OperationOutcome":
            yield resource


# ---------------------------------------------------------------------------------------------
# The data source
# ---------------------------------------------------------------------------------------------


def _build_session(pool_size: int) -> requests.Session:
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=16, pool_maxsize=pool_size, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    # One session serves every patient and every EHR: a cookie set by one FHIR server must never be
    # sent on another patient's request, and ~/.netrc or proxy variables must not add credentials
    # or reroute bearer-token requests behind the operator's back.
    session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    session.trust_env = False
    return session


class FhirDataSource:
    """Resolves a service's prefetch templates for one request into a :class:`PatientRecord`.

    Build it once per process: it owns the pooled HTTP session and the thread pool that fetches
    absent keys in parallel. It is thread-safe; concurrent requests share both pools.
    """

    def __init__(
        self,
        *,
        total_timeout: float = 2.5,
        max_retries: int = 2,
        max_pages: int = 20,
        session: requests.Session | None = None,
        on_fetch: Callable[[str], None] | None = None,
        max_workers: int = 32,
        max_response_bytes: int = 32 * 1024 * 1024,
    ) -> None:
        if total_timeout <= 0:
            raise ValueError("total_timeout must be positive")
        if max_retries < 0 or max_pages < 1 or max_workers < 1:
            raise ValueError("max_retries must be >= 0, max_pages and max_workers >= 1")
        self.total_timeout = total_timeout
        self.max_retries = max_retries
        self.max_pages = max_pages
        self.max_response_bytes = max_response_bytes
        self._on_fetch = on_fetch
        # The HTTP pool must hold at least one connection per concurrently fetched key, or parallel
        # fetches queue for a connection and the deadline is spent waiting.
        self._session = session if session is not None else _build_session(max_workers)
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="fhir-fetch")
        self._closed = threading.Event()

    def close(self) -> None:
        """Stop the worker threads and close pooled connections (at process shutdown, or in tests)."""
        self._closed.set()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._session.close()

    def __enter__(self) -> FhirDataSource:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- public entry point -------------------------------------------------------------------

    def resolve(
        self, templates: Mapping[str, str], request: HookRequest, allowed_servers: Collection[str]
    ) -> PatientRecord:
        """The patient record for ``request``: prefetch values as given, absent keys fetched.

        ``templates`` are the service definition's prefetch templates (key -> relative FHIR URL);
        ``allowed_servers`` the FHIR base URLs this client may make the service call. Never raises
        for anything in the request or anything a FHIR server answers.
        """
        started = time.monotonic()
        deadline = _Deadline(self.total_timeout)
        prefetch = request.prefetch if isinstance(request.prefetch, Mapping) else {}
        server_allowed = is_allowed_server(request.fhir_server, allowed_servers)
        base = normalise_base_url(request.fhir_server) if server_allowed and request.fhir_server else None
        token = request.fhir_authorization.access_token if request.fhir_authorization else None

        results: dict[str, _KeyResult] = {}
        pending: dict[Future[_KeyResult], str] = {}
        not_allowed = not_allowed_detail(request.fhir_server, allowed_servers) if not server_allowed else None
        for key, template in templates.items():
            try:
                if key in prefetch:
                    result, needs_network = self._from_prefetch_value(key, template, prefetch[key], request, base)
                else:
                    result, needs_network = self._plan_fetch(key, template, request, base, not_allowed)
            except Exception:  # a malformed value must cost one key, never the request
                log.exception("prefetch key could not be processed", extra={"fields": {"prefetch_key": key}})
                reason = "the prefetch value could not be read"
                result, needs_network = _KeyResult(key, _resource_type_of(template), unavailable=reason), None
            results[key] = result
            if needs_network is not None and base is not None:
                try:
                    # The worker runs in a copy of this context, so its log lines carry the request's hookInstance.
                    future = self._executor.submit(
                        contextvars.copy_context().run,
                        self._run_network_step,
                        result,
                        needs_network,
                        base,
                        token,
                        deadline,
                    )
                except RuntimeError:  # closed (process shutting down): no new fetches, still no exception
                    results[key] = _cut_short(result, "error", REASON_SHUTTING_DOWN)
                    continue
                pending[future] = key

        self._wait_for(pending, results, deadline)
        record = _assemble(templates, results)
        # The request's own log line already carries data_ms and why each unavailable type is missing; this
        # detail is worth an INFO line only when the network was used.
        log.log(
            logging.INFO if pending else logging.DEBUG,
            "prefetch resolved",
            extra={
                "fields": {
                    "prefetch_keys": len(templates),
                    "fetched_keys": len(pending),
                    "unavailable": record.diagnostics(),
                    "elapsed_ms": round((time.monotonic() - started) * 1000, 1),
                }
            },
        )
        return record

    # -- planning -----------------------------------------------------------------------------

    def _from_prefetch_value(
        self, key: str, template: str, value: Any, request: HookRequest, base: str | None
    ) -> tuple[_KeyResult, str | None]:
        """Use a prefetch value; returns the result and a next-page URL to follow, if any."""
        # The type is in the template's first segment; rendering (regex substitution) is needed only
        # for a template that starts with a token, such as "{{context.userId}}".
        resource_type = _resource_type_of(template.strip()) or render_template(template, request).resource_type
        result = _KeyResult(key, resource_type)
        if value is None:
            return result, None  # obtained, and there is nothing: a fact
        if not _is_resource(value):
            result.unavailable = f"the prefetch value for {key} is not a FHIR resource"
            return result, None
        if value["resourceType"] == "OperationOutcome":
            # The EHR's own reason (diagnostics) may name the patient: only the issue code goes further.
            result.unavailable = REASON_EHR_OUTCOME
            result.detail = f"the EHR answered prefetch {key} with an OperationOutcome{_issue_codes(value)}"
            return result, None
        if value["resourceType"] != "Bundle":
            result.resources.append(value)
            return result, None
        result.resources.extend(_bundle_resources(value))
        next_url = _next_link(value)
        if next_url is None:
            return result, None
        if base is None:
            why = "no allowed FHIR server" if request.fhir_server else "no FHIR server"
            _mark_partial(result, f"the prefetch holds only the first page of the results ({why} to read the rest)")
            return result, None
        if not _is_under_base(next_url, base):
            why = "the next page is not on the FHIR server"
            _mark_partial(result, f"the prefetch holds only the first page of the results ({why})")
            return result, None
        result.from_prefetch = True
        result.given = tuple(result.resources)
        return result, next_url

    def _plan_fetch(
        self, key: str, template: str, request: HookRequest, base: str | None, not_allowed: str | None
    ) -> tuple[_KeyResult, str | None]:
        """An absent key: the URL to fetch, or why it cannot be fetched (``not_allowed``: why the server may not be)."""
        rendered = render_template(template, request)
        result = _KeyResult(key, rendered.resource_type)
        if rendered.relative_url is None:
            result.unavailable = f"the request has no {rendered.missing} for prefetch {key}"
            return result, None
        if not request.fhir_server:
            result.unavailable = REASON_NO_SERVER
            return result, None
        if not_allowed is not None or base is None:
            result.unavailable = REASON_NOT_ALLOWED
            result.detail = not_allowed
            result.outcome = "not_allowed"
            return result, None
        return result, f"{base}/{rendered.relative_url}"

    # -- network ------------------------------------------------------------------------------

    def _run_network_step(
        self, result: _KeyResult, first_url: str, base: str, token: str | None, deadline: _Deadline
    ) -> _KeyResult:
        """Worker: fetch ``first_url`` and its next pages into ``result``. Runs in the thread pool."""
        started = time.monotonic()
        url: str | None = first_url
        pages = 1 if result.from_prefetch else 0
        status: int | None = None
        try:
            while url is not None:
                if pages >= self.max_pages:
                    # A next link that never ends (or a huge result) must not hold the request; what was not read
                    # is unknown, not absent.
                    _mark_partial(result, reason_pages_cut(self.max_pages))
                    break
                body, status = self._get_json(url, base, token, deadline)
                if not _is_resource(body):
                    raise _FetchFailed("error", REASON_NOT_FHIR, status)
                if body["resourceType"] == "OperationOutcome":
                    detail = f"the FHIR server answered with an OperationOutcome{_issue_codes(body)}"
                    raise _FetchFailed("error", REASON_SERVER_OUTCOME, status, detail)
                pages += 1
                if body["resourceType"] != "Bundle":
                    result.resources.append(body)
                    break
                result.resources.extend(_bundle_resources(body))
                next_url = _next_link(body)
                if next_url is not None and not _is_under_base(urljoin(url, next_url), base):
                    _mark_partial(result, "the next page of results is not on the FHIR server and was not read")
                    next_url = None
                url = urljoin(url, next_url) if next_url else None
            result.outcome = "ok"
        except _FetchFailed as failure:
            result.outcome = failure.outcome
            status = failure.status
            if pages == 0:
                result.unavailable = failure.reason
                result.detail = failure.detail
                result.resources.clear()
            else:
                # Earlier pages were read: keep them (they are real data); the rest is unknown.
                _mark_partial(
                    result,
                    f"page {pages + 1} of the results could not be read: {failure.reason}",
                    f"page {pages + 1} of the results could not be read: {failure.detail or failure.reason}",
                )
        log.info(
            "fhir fetch",
            extra={
                "fields": {
                    "prefetch_key": result.key,
                    "resource_type": result.resource_type,
                    "outcome": result.outcome,
                    "status": status,
                    "pages": pages,
                    "reason": result.detail or result.unavailable,
                    "elapsed_ms": round((time.monotonic() - started) * 1000, 1),
                }
            },
        )
        return result

    def _get_json(self, url: str, base: str, token: str | None, deadline: _Deadline) -> tuple[Any, int]:
        """GET one URL on ``base`` with retries and same-origin redirects; the parsed JSON and status."""
        headers = {"Accept": FHIR_JSON, "User-Agent": _USER_AGENT}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        attempt = 0
        redirects = 0
        while True:
            response = self._send(url, base, headers, deadline)
            try:
                status = response.status_code
                if status in _REDIRECT_STATUS:
                    location = response.headers.get("Location")
                    target = urljoin(url, location) if location else None
                    # A redirect elsewhere would hand the bearer token to a server nobody allowed.
                    if target is None or not _same_origin(base, target) or redirects >= _MAX_REDIRECTS:
                        if target is None:
                            raise _FetchFailed("error", REASON_NOT_FHIR, status)
                        if _same_origin(base, target):
                            raise _FetchFailed("error", f"the FHIR server redirected more than {_MAX_REDIRECTS} times")
                        detail = f"{REASON_REDIRECT} ({display_url(base)} answered {status} to {_host_of(target)})"
                        raise _FetchFailed("error", REASON_REDIRECT, status, detail)
                    redirects += 1
                    url = target
                    continue
                if status in _RETRYABLE_STATUS and attempt < self.max_retries:
                    pause = _retry_pause(response.headers.get("Retry-After"), attempt)
                    if pause is not None and pause < deadline.remaining() - _MIN_REQUEST_BUDGET:
                        attempt += 1
                        time.sleep(pause)
                        continue
                if status >= 400:
                    kind: FetchOutcome = "http_5xx" if status >= 500 else "http_4xx"
                    raise _FetchFailed(kind, reason_http_status(status, token_sent=bool(token)), status)
                if status != 200:
                    raise _FetchFailed("error", reason_http_status(status, token_sent=bool(token)), status)
                content = self._read_body(response, deadline)
            finally:
                response.close()
            try:
                return orjson.loads(content), status
            except orjson.JSONDecodeError:
                raise _FetchFailed("error", REASON_NOT_FHIR, status) from None

    def _send(self, url: str, base: str, headers: Mapping[str, str], deadline: _Deadline) -> requests.Response:
        remaining = deadline.remaining()
        if self._closed.is_set():
            raise _FetchFailed("error", REASON_SHUTTING_DOWN)
        if remaining < _MIN_REQUEST_BUDGET:
            raise _FetchFailed("timeout", reason_timeout(self.total_timeout))
        try:
            return self._session.get(url, headers=headers, timeout=remaining, allow_redirects=False, stream=True)
        except requests.Timeout:
            raise _FetchFailed("timeout", reason_timeout(self.total_timeout)) from None
        except requests.RequestException as error:
            # The exception text holds the URL (with the patient id in its query): name the class only.
            kind = type(error).__name__
            log.info("fhir request failed", extra={"fields": {"error": kind}})
            detail = f"the FHIR server {display_url(base)} could not be reached ({kind})"
            raise _FetchFailed("error", REASON_UNREACHABLE, detail=detail) from None

    def _read_body(self, response: requests.Response, deadline: _Deadline) -> bytes:
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in response.iter_content(chunk_size=64 * 1024):
                size += len(chunk)
                if size > self.max_response_bytes:
                    detail = f"the FHIR server's answer was larger than {self.max_response_bytes} bytes"
                    raise _FetchFailed("error", REASON_TOO_LARGE, response.status_code, detail)
                if deadline.remaining() <= 0:
                    raise _FetchFailed("timeout", reason_timeout(self.total_timeout), response.status_code)
                chunks.append(chunk)
        except requests.Timeout:
            raise _FetchFailed("timeout", reason_timeout(self.total_timeout), response.status_code) from None
        except requests.RequestException as error:
            detail = f"the FHIR server's answer broke off ({type(error).__name__})"
            raise _FetchFailed("error", REASON_UNREACHABLE, response.status_code, detail) from None
        return b"".join(chunks)

    # -- collecting ---------------------------------------------------------------------------

    def _wait_for(
        self, pending: Mapping[Future[_KeyResult], str], results: dict[str, _KeyResult], deadline: _Deadline
    ) -> None:
        """Collect finished fetches until the deadline; what is still running then counts as timed out."""
        not_done = set(pending)
        while not_done and (remaining := deadline.remaining()) > 0:
            _done, not_done = wait(not_done, timeout=remaining, return_when=FIRST_COMPLETED)
        for future, key in pending.items():
            if not future.done():
                future.cancel()
                reason = reason_timeout(self.total_timeout)
                results[key] = _cut_short(results[key], "timeout", reason)
                log.info("fhir fetch timed out", extra={"fields": {"prefetch_key": key, "reason": reason}})
            elif future.cancelled():  # close() during the request: the process is shutting down
                results[key] = _cut_short(results[key], "error", REASON_SHUTTING_DOWN)
            elif (error := future.exception()) is not None:  # a bug, not a server answer: still one key only
                log.error("fhir fetch failed unexpectedly", exc_info=error, extra={"fields": {"prefetch_key": key}})
                results[key] = _cut_short(results[key], "error", "the service failed while reading the answer")
        for result in results.values():
            if result.outcome is not None:
                self._report(result.outcome)

    def _report(self, outcome: FetchOutcome) -> None:
        if self._on_fetch is None:
            return
        try:
            self._on_fetch(outcome)
        except Exception:  # metrics must never break a request
            log.exception("on_fetch callback failed")


def _cut_short(late: _KeyResult, outcome: FetchOutcome, reason: str) -> _KeyResult:
    """The result of a key whose fetch did not finish (deadline, shutdown, or a bug in the worker).

    The worker may still be writing into ``late``, so a new result is built: the prefetch's own first
    page (kept in ``late.given``) stays, anything the worker added does not.
    """
    if late.from_prefetch:
        kept = _KeyResult(late.key, late.resource_type, resources=list(late.given), outcome=outcome, from_prefetch=True)
        _mark_partial(kept, f"the remaining pages of results could not be read: {reason}")
        return kept
    return _KeyResult(late.key, late.resource_type, unavailable=reason, outcome=outcome)


def _mark_partial(result: _KeyResult, reason: str, detail: str | None = None) -> None:
    """Results cut short: the type is unknown (the engine must not read absence into it), the resources read so far
    stay (what they show is true), and the response's data-quality extension says what was not read."""
    result.partial = True
    result.unavailable = reason
    result.detail = detail if detail != reason else None
    result.warnings.append(f"{result.resource_type or result.key}: {reason}; the rest is unknown")


def _issue_codes(outcome: Mapping[str, Any]) -> str:
    """`` (issue: not-found)``: the codes of an OperationOutcome's issues (a FHIR value set, so safe to show)."""
    issues = outcome.get("issue")
    codes = [
        code
        for issue in (issues if isinstance(issues, list) else [])
        if isinstance(issue, dict) and isinstance(code := issue.get("code"), str) and _ISSUE_CODE.fullmatch(code)
    ]
    return f" (issue: {', '.join(dict.fromkeys(codes))})" if codes else ""


def _host_of(url: str) -> str:
    try:
        return _split_http_url(url).hostname or "(no host)"
    except ValueError:
        return "(not an http(s) URL)"


def _retry_pause(retry_after: str | None, attempt: int) -> float | None:
    """Seconds to wait before retry number ``attempt + 1``: Retry-After when given, else a short backoff."""
    if retry_after is None or not retry_after.strip():
        return 0.05 * (2.0**attempt) * (0.5 + random.random())  # jitter: replicas must not retry in step
    value = retry_after.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _assemble(templates: Mapping[str, str], results: Mapping[str, _KeyResult]) -> PatientRecord:
    """Group every key's resources by their own resourceType, de-duplicated by (type, id), in order."""
    by_type: dict[str, list[Resource]] = {}
    seen: set[tuple[str, str]] = set()
    unavailable: dict[str, str] = {}
    details: dict[str, str] = {}
    warnings: list[str] = []
    for key in templates:
        result = results[key]
        warnings.extend(result.warnings)
        if result.unavailable is not None:
            type_key = result.resource_type or key
            if type_key not in unavailable:
                unavailable[type_key] = result.unavailable
                if result.detail is not None:
                    details[type_key] = result.detail
            if not result.partial:
                continue
        for resource in result.resources:
            resource_type = resource["resourceType"]
            resource_id = resource.get("id")
            if isinstance(resource_id, str):
                if (resource_type, resource_id) in seen:
                    continue
                seen.add((resource_type, resource_id))
            by_type.setdefault(resource_type, []).append(resource)
    return PatientRecord(
        resources={resource_type: tuple(items) for resource_type, items in by_type.items()},
        unavailable=unavailable,
        warnings=tuple(warnings),
        unavailable_details=details,
    )
