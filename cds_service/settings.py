"""Settings: read once from the ``CDS_*`` environment variables (README.md, 'Settings') and validated at start-up."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cds_service.errors import ConfigurationError
from cds_service.protocol.response import SystemActionsLocation

DEFAULT_MAX_BODY_BYTES = 5 * 1024 * 1024
DEFAULT_MAX_JSON_DEPTH = 64
# CDS_FHIR_TIMEOUT bounds: an EHR waits a few seconds at most for cards (CDS Hooks asks for about 500 ms), and a
# gunicorn worker that spends longer than its timeout (30 s) on a request is killed.
MAX_FHIR_TIMEOUT = 20.0
# The service's endpoint base when no request URL exists (``evaluate``) and CDS_PUBLIC_URL is unset: the address
# ``cds-service serve`` binds by default, so that evaluate and a default local server print the same response.
LOCAL_BASE_URL = "http://127.0.0.1:8080"
_URI_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")


@dataclass(frozen=True)
class Settings:
    trusted_clients_path: str | None = None  # CDS_TRUSTED_CLIENTS
    allow_open: bool = False  # CDS_ALLOW_OPEN
    fhir_servers: tuple[str, ...] = ()  # CDS_FHIR_SERVERS (open mode only)
    public_url: str | None = None  # CDS_PUBLIC_URL
    database_url: str | None = None  # CDS_DATABASE_URL; None: SQLite in data_dir
    redis_url: str | None = None  # CDS_REDIS_URL
    fhir_timeout: float = 2.5  # CDS_FHIR_TIMEOUT, seconds, for all fallback fetches of one request
    system_actions: SystemActionsLocation = SystemActionsLocation.BOTH  # CDS_SYSTEM_ACTIONS
    qcdsm_uri: str | None = None  # CDS_QCDSM_URI; None: the invoked service's endpoint URL
    data_dir: str = field(default_factory=lambda: str(Path.cwd() / "data"))  # CDS_DATA_DIR
    hooks_dir: str | None = None  # CDS_HOOKS_DIR; None: the definitions shipped with the package
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES  # CDS_MAX_BODY_BYTES
    max_json_depth: int = DEFAULT_MAX_JSON_DEPTH  # CDS_MAX_JSON_DEPTH
    cors_origins: tuple[str, ...] = ("*",)  # CDS_CORS_ORIGINS, comma-separated; "*" for sandbox work
    log_level: str = "INFO"  # CDS_LOG_LEVEL

    @property
    def open_mode(self) -> bool:
        """No trusted clients configured: requests are not authenticated."""
        return self.trusted_clients_path is None

    def with_overrides(self, overrides: Mapping[str, Any]) -> Settings:
        return replace(self, **overrides)

    def endpoint_url(self, service_id: str, request_url_root: str | None = None) -> str:
        """The URL a client invokes for ``service_id``: CDS_PUBLIC_URL, else the request's own URL root, else
        (offline, ``evaluate``) the default local server's address."""
        base = self.public_url or request_url_root or LOCAL_BASE_URL
        return f"{base.rstrip('/')}/cds-services/{service_id}"

    def qcdsm_uri_for(self, service_id: str, request_url_root: str | None = None) -> str:
        """The ``pama-rating-qcdsm-consulted`` value: CDS_QCDSM_URI, else the invoked service's endpoint URL."""
        return self.qcdsm_uri or self.endpoint_url(service_id, request_url_root)


def _flag(name: str, value: str) -> bool:
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"{name}={value!r}: expected 1 or 0")


def _positive_number(name: str, value: str, kind: type[float] | type[int], maximum: float | None = None) -> Any:
    expected = "a positive number" + (f" of at most {maximum:g}" if maximum is not None else "")
    try:
        number = kind(value)
    except (ValueError, OverflowError):
        raise ConfigurationError(f"{name}={value!r}: expected {expected}") from None
    # float() accepts "nan", "inf" and "1e400" (= inf): none of them is a usable number of seconds, and NaN even
    # passes "<= 0" (every comparison with NaN is false).
    if not math.isfinite(number) or number <= 0 or (maximum is not None and number > maximum):
        raise ConfigurationError(f"{name}={value!r}: expected {expected}")
    return number


def _absolute_uri(name: str, value: str) -> str:
    """An absolute URI (RFC 3986: a scheme, then something): ``https://host/...``, ``urn:oid:...``, ``urn:uuid:...``."""
    parts = urlsplit(value)
    problem = None
    if any(character.isspace() or ord(character) < 32 for character in value):
        problem = "contains white space or control characters"
    elif not parts.scheme or not _URI_SCHEME.fullmatch(parts.scheme) or ":" not in value:
        problem = "has no scheme (expected an absolute URI such as https://... or urn:...)"
    elif parts.scheme.lower() in ("http", "https") and not parts.hostname:
        problem = "has no host"
    elif not value.split(":", 1)[1]:
        problem = "has nothing after the scheme"
    if problem:
        raise ConfigurationError(f"{name}={value!r}: not an absolute URI: it {problem}")
    return value


def _urls(name: str, value: str) -> tuple[str, ...]:
    urls = tuple(part.strip() for part in value.split(",") if part.strip())
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise ConfigurationError(f"{name}: {url!r} is not an http(s) URL")
    return urls


def settings_from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the ``CDS_*`` variables; raise ConfigurationError naming the bad variable."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    if trusted := env.get("CDS_TRUSTED_CLIENTS", "").strip():
        if not Path(trusted).is_file():
            raise ConfigurationError(f"CDS_TRUSTED_CLIENTS={trusted!r}: no such file")
        values["trusted_clients_path"] = trusted
    values["allow_open"] = _flag("CDS_ALLOW_OPEN", env.get("CDS_ALLOW_OPEN", "").strip().lower())
    if servers := env.get("CDS_FHIR_SERVERS", "").strip():
        values["fhir_servers"] = _urls("CDS_FHIR_SERVERS", servers)
    if public_url := env.get("CDS_PUBLIC_URL", "").strip():
        _urls("CDS_PUBLIC_URL", public_url)
        values["public_url"] = public_url.rstrip("/")
    if database_url := env.get("CDS_DATABASE_URL", "").strip():
        if not database_url.startswith(("sqlite:///", "postgresql://", "postgres://")):
            scheme = database_url.split(":")[0]
            raise ConfigurationError(f"CDS_DATABASE_URL: expected sqlite:///path or postgresql://..., got {scheme!r}")
        values["database_url"] = database_url
    if redis_url := env.get("CDS_REDIS_URL", "").strip():
        if not redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigurationError("CDS_REDIS_URL: expected redis://host:port/db")
        values["redis_url"] = redis_url
    if timeout := env.get("CDS_FHIR_TIMEOUT", "").strip():
        values["fhir_timeout"] = _positive_number("CDS_FHIR_TIMEOUT", timeout, float, MAX_FHIR_TIMEOUT)
    if location := env.get("CDS_SYSTEM_ACTIONS", "").strip():
        try:
            values["system_actions"] = SystemActionsLocation(location)
        except ValueError:
            raise ConfigurationError(f"CDS_SYSTEM_ACTIONS={location!r}: expected top, extension or both") from None
    if qcdsm_uri := env.get("CDS_QCDSM_URI", "").strip():
        values["qcdsm_uri"] = _absolute_uri("CDS_QCDSM_URI", qcdsm_uri)
    if data_dir := env.get("CDS_DATA_DIR", "").strip():
        values["data_dir"] = data_dir
    if hooks_dir := env.get("CDS_HOOKS_DIR", "").strip():
        values["hooks_dir"] = hooks_dir
    if max_body := env.get("CDS_MAX_BODY_BYTES", "").strip():
        values["max_body_bytes"] = _positive_number("CDS_MAX_BODY_BYTES", max_body, int)
    if max_depth := env.get("CDS_MAX_JSON_DEPTH", "").strip():
        values["max_json_depth"] = _positive_number("CDS_MAX_JSON_DEPTH", max_depth, int)
    if origins := env.get("CDS_CORS_ORIGINS", "").strip():
        values["cors_origins"] = tuple(o.strip() for o in origins.split(",") if o.strip())
    if level := env.get("CDS_LOG_LEVEL", "").strip():
        if level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigurationError(f"CDS_LOG_LEVEL={level!r}: expected DEBUG, INFO, WARNING or ERROR")
        values["log_level"] = level.upper()
    return Settings(**values)
