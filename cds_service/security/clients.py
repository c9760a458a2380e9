"""Trusted CDS clients: the ``CDS_TRUSTED_CLIENTS`` file, read and validated once at start-up.

The file is a JSON list; each entry is one client (one JWT issuer)::

    [{"iss": "https://ehr.example.org/fhir",
      "jwks_url": "https://ehr.example.org/.well-known/jwks.json",
      "jwks": {"keys": [...]},                # optional pinned public keys, used without fetching
      "fhir_servers": ["https://ehr.example.org/fhir/R4"],
      "tenant": "example-health"}]            # optional; when set, the JWT's tenant claim must equal it

Keys starting with ``_`` (such as ``_comment``) are ignored; any other unknown key is an error, so that a typo
(``jwks_uri``) cannot silently disable a setting.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from cds_service.errors import ConfigurationError
from cds_service.security.keys import JwksFormatError, parse_jwks, private_members_in
from cds_service.urls import is_loopback_url

KNOWN_CLIENT_KEYS: frozenset[str] = frozenset({"iss", "jwks_url", "jwks", "fhir_servers", "tenant"})


@dataclass(frozen=True)
class TrustedClient:
    """One CDS client allowed to call the service, identified by the JWT ``iss`` it signs with."""

    iss: str
    fhir_servers: tuple[str, ...] = ()
    tenant: str | None = None
    jwks_url: str | None = None
    # A read-only JWK Set of public keys pinned in the configuration; not hashable, so excluded from hash().
    jwks: Mapping[str, Any] | None = field(default=None, hash=False)

    def allows_fhir_server(self, fhir_server: str) -> bool:
        """Whether ``fhir_server`` (a request's ``fhirServer``) is one of this client's FHIR base URLs.

        The comparison is exact except for one trailing slash, which clients add or drop inconsistently.
        """
        wanted = _without_trailing_slash(fhir_server)
        return any(_without_trailing_slash(allowed) == wanted for allowed in self.fhir_servers)


def load_trusted_clients(path: str) -> tuple[TrustedClient, ...]:
    """Read and validate the trusted-clients file; raise ConfigurationError naming the file and the problem.

    Refused: unreadable file, invalid JSON, anything but a non-empty list of objects, a missing or empty ``iss``,
    a duplicate ``iss``, neither ``jwks_url`` nor ``jwks``, a ``jwks_url`` or FHIR server that is not https
    (plain http is allowed only for loopback hosts, for tests and local development), an inline JWK Set with
    private key material or no usable key, and unknown keys.
    """
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except OSError as error:
        raise ConfigurationError(f"{path}: cannot read the trusted clients file ({error.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigurationError(f"{path}: not UTF-8 text") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigurationError(
            f"{path}: not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})"
        ) from None
    if not isinstance(document, list):
        raise ConfigurationError(f"{path}: expected a JSON list of trusted clients, found {_json_type(document)}")
    if not document:
        raise ConfigurationError(f"{path}: the list of trusted clients is empty, so no client could call the service")

    clients: list[TrustedClient] = []
    first_position: dict[str, int] = {}
    for position, entry in enumerate(document, start=1):
        client = _parse_client(path, position, entry)
        if client.iss in first_position:
            raise ConfigurationError(
                f"{path}: duplicate iss {client.iss!r} (clients #{first_position[client.iss]} and #{position})"
            )
        first_position[client.iss] = position
        clients.append(client)
    return tuple(clients)


def _parse_client(path: str, position: int, entry: Any) -> TrustedClient:
    where = f"{path}: client #{position}"
    if not isinstance(entry, dict):
        raise ConfigurationError(f"{where}: expected an object, found {_json_type(entry)}")
    iss = entry.get("iss")
    if not isinstance(iss, str) or not iss.strip():
        raise ConfigurationError(f'{where}: missing "iss" (the issuer the client puts in its JWTs)')
    if iss != iss.strip():
        raise ConfigurationError(f'{where}: "iss" {iss!r} has surrounding white space')
    where = f"{path}: client #{position} ({iss})"

    unknown = sorted(key for key in entry if key not in KNOWN_CLIENT_KEYS and not key.startswith("_"))
    if unknown:
        raise ConfigurationError(
            f"{where}: unknown key {unknown[0]!r} (expected {', '.join(sorted(KNOWN_CLIENT_KEYS))}; "
            "prefix comments with _)"
        )

    jwks_url = entry.get("jwks_url")
    jwks = entry.get("jwks")
    if jwks_url is None and jwks is None:
        raise ConfigurationError(f'{where}: needs "jwks_url" or "jwks" (where its public keys are)')
    if jwks_url is not None:
        if not isinstance(jwks_url, str):
            raise ConfigurationError(f'{where}: "jwks_url" must be a string')
        _check_url(where, "jwks_url", jwks_url)
    if jwks is not None:
        jwks = _checked_inline_jwks(where, jwks)

    fhir_servers = entry.get("fhir_servers", [])
    if not isinstance(fhir_servers, list) or not all(isinstance(url, str) for url in fhir_servers):
        raise ConfigurationError(f'{where}: "fhir_servers" must be a list of FHIR base URLs')
    for url in fhir_servers:
        _check_url(where, "fhir_servers", url)

    tenant = entry.get("tenant")
    if tenant is not None and (not isinstance(tenant, str) or not tenant):
        raise ConfigurationError(f'{where}: "tenant" must be a non-empty string when present')

    return TrustedClient(
        iss=iss,
        fhir_servers=tuple(fhir_servers),
        tenant=tenant,
        jwks_url=jwks_url,
        jwks=jwks,
    )


def _checked_inline_jwks(where: str, jwks: Any) -> Mapping[str, Any]:
    if not isinstance(jwks, dict):
        raise ConfigurationError(f'{where}: "jwks" must be a JWK Set object ({{"keys": [...]}})')
    private = private_members_in(jwks)
    if private:
        # Someone pasted a key pair: refuse rather than keep a private key in a config file.
        raise ConfigurationError(
            f'{where}: "jwks" key {private[0]} contains private key material; configure public keys only'
        )
    try:
        parse_jwks(jwks, source=where)
    except JwksFormatError as error:
        raise ConfigurationError(f'{where}: "jwks": {error}') from None
    return MappingProxyType(jwks)


def _check_url(where: str, name: str, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigurationError(f"{where}: {name} {url!r} is not an absolute http(s) URL")
    if parts.scheme != "https" and not is_loopback_url(url):
        raise ConfigurationError(f"{where}: {name} {url!r} must use https (plain http only for loopback hosts)")
    if parts.username or parts.password:
        raise ConfigurationError(f"{where}: {name} {url!r} must not carry credentials")


def _without_trailing_slash(url: str) -> str:
    return url[:-1] if url.endswith("/") else url


def _json_type(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"
