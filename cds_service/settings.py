"""Settings: read once from the ``CDS_*`` environment variables (PRODUCT.md §2.3) and validated at start-up."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cds_service.errors import ConfigurationError
from cds_service.protocol.response import SystemActionsLocation

DEFAULT_MAX_BODY_BYTES = 5 * 1024 * 1024
DEFAULT_MAX_JSON_DEPTH = 64


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


def _flag(name: str, value: str) -> bool:
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"{name}={value!r}: expected 1 or 0")


def _positive_number(name: str, value: str, kind: type[float] | type[int]) -> Any:
    try:
        number = kind(value)
    except ValueError:
        raise ConfigurationError(f"{name}={value!r}: expected a positive number") from None
    if number <= 0:
        raise ConfigurationError(f"{name}={value!r}: expected a positive number")
    return number


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
        values["fhir_timeout"] = _positive_number("CDS_FHIR_TIMEOUT", timeout, float)
    if location := env.get("CDS_SYSTEM_ACTIONS", "").strip():
        try:
            values["system_actions"] = SystemActionsLocation(location)
        except ValueError:
            raise ConfigurationError(f"CDS_SYSTEM_ACTIONS={location!r}: expected top, extension or both") from None
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
