"""CDS client JWT authentication (CDS Hooks 2.0, "Trusting CDS Clients": https://cds-hooks.hl7.org/2.0/).

Verification order (cheap checks on the still-unverified token first, so a stale or misdirected token never
causes a JWKS fetch; the replay cache is written only after the signature verified, so a forger cannot burn
someone else's ``jti``):

1. ``Authorization: Bearer <compact JWS>``, bounded size;
2. header: ``alg`` in the asymmetric allow-list, ``typ`` JWT when present, ``kid`` present;
3. ``iss`` is a trusted client; a ``jku`` header must equal that client's configured ``jwks_url`` (never fetched);
4. ``aud`` (string or list) equals the endpoint URL, one trailing slash tolerated;
5. ``exp`` required and not passed; ``iat`` required, not in the future, not older than ``max_token_age``;
   ``nbf`` honoured (all with ``leeway`` seconds of clock skew);
6. ``tenant`` equals the configured one when the client has one; ``jti`` present;
7. signature: the issuer's key ``kid`` (JWKS cache), verified by PyJWT with the algorithms of that key's type;
8. ``jti`` claimed in the replay cache until the token can no longer be valid.

Any failure raises ``Unauthorized(reason)``; the reason is logged (never the token) and the HTTP layer answers 401
without details.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from jwt.api_jws import PyJWS
from jwt.exceptions import InvalidSignatureError, PyJWTError

from cds_service.errors import Unauthorized
from cds_service.security.clients import TrustedClient, load_trusted_clients
from cds_service.security.jwks import JwksCache
from cds_service.security.keys import ALLOWED_ALGORITHMS
from cds_service.security.replay import (
    DEFAULT_REDIS_KEY_PREFIX,
    InProcessReplayCache,
    RedisReplayCache,
    ReplayCache,
    ReplayCacheError,
)

logger = logging.getLogger("cds_service.security")

MAX_TOKEN_LENGTH = 16 * 1024
MAX_JTI_LENGTH = 512
# Three base64url segments: a compact JWS. Five segments (JWE) and anything else are refused before parsing.
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


class ClientAuthenticator:
    """Verifies CDS client JWTs against the trusted clients; build once per process and share between threads."""

    def __init__(
        self,
        clients: Iterable[TrustedClient],
        *,
        replay_cache: ReplayCache,
        jwks_cache: JwksCache | None = None,
        leeway: int = 60,
        max_token_age: int = 3600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clients: dict[str, TrustedClient] = {}
        for client in clients:
            if client.iss in self._clients:
                raise ValueError(f"duplicate trusted client iss {client.iss!r}")
            self._clients[client.iss] = client
        self._replay_cache = replay_cache
        self._jwks_cache = jwks_cache if jwks_cache is not None else JwksCache()
        self._leeway = leeway
        self._max_token_age = max_token_age
        self._clock = clock
        # enforce_minimum_key_length: refuse (not just warn about) RSA keys below 2048 bits.
        self._jws = PyJWS(options={"enforce_minimum_key_length": True})
        self._header_parser = PyJWS(options={"verify_signature": False})

    @property
    def clients(self) -> tuple[TrustedClient, ...]:
        """The trusted clients, in configuration order."""
        return tuple(self._clients.values())

    def authenticate(self, authorization_header: str | None, audience: str) -> TrustedClient:
        """Return the trusted client whose valid JWT is in ``authorization_header``, for endpoint URL ``audience``.

        Raises ``Unauthorized(reason)`` on any failure; the reason is also logged to ``cds_service.security``.
        """
        try:
            client = self._authenticate(authorization_header, audience)
        except Unauthorized as refusal:
            logger.warning("client JWT refused: %s", refusal.reason)
            raise
        except Exception as error:  # any surprise from parsing untrusted input is a refusal, never a 500
            # A bug rather than a bad token: logged as an error, by exception type only (no token data).
            reason = f"unexpected {type(error).__name__} while verifying the token"
            logger.error("client JWT refused: %s", reason)
            raise Unauthorized(reason) from None
        logger.debug("client JWT accepted: iss=%s", client.iss)
        return client

    def _authenticate(self, authorization_header: str | None, audience: str) -> TrustedClient:
        token = _bearer_token(authorization_header)
        header, claims = self._unverified_parts(token)

        alg = header.get("alg")
        if alg not in ALLOWED_ALGORITHMS:
            raise Unauthorized(f"algorithm {_shown(alg)} not allowed")
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.upper() != "JWT"):
            raise Unauthorized(f"typ {_shown(typ)} is not JWT")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Unauthorized("no kid in the token header")

        iss = claims.get("iss")
        client = self._clients.get(iss) if isinstance(iss, str) else None
        if client is None:
            raise Unauthorized(f"issuer {_shown(iss)} is not a trusted client")
        if "jku" in header and header["jku"] != client.jwks_url:
            # Never fetched: fetching a URL chosen by the token is key substitution and SSRF.
            raise Unauthorized(f"jku {_shown(header['jku'])} is not the configured JWKS URL of iss={client.iss}")

        if not _audience_matches(claims.get("aud"), audience):
            raise Unauthorized(f"aud {_shown(claims.get('aud'))} is not {audience!r} (iss={client.iss})")

        expires_at = self._checked_times(claims, client)

        if client.tenant is not None and claims.get("tenant") != client.tenant:
            raise Unauthorized(f"tenant {_shown(claims.get('tenant'))} is not the configured one (iss={client.iss})")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise Unauthorized(f"no jti (iss={client.iss})")
        if len(jti) > MAX_JTI_LENGTH:
            raise Unauthorized(f"jti longer than {MAX_JTI_LENGTH} characters (iss={client.iss})")

        key = self._jwks_cache.get_key(client, kid)
        if key is None:
            raise Unauthorized(f"unknown kid {_shown(kid)} for iss={client.iss}")
        if alg not in key.algorithms:
            raise Unauthorized(f"alg {alg} does not fit key kid={kid!r} of iss={client.iss}")
        try:
            # A cryptography public-key object and the algorithms of its key type only: PyJWT then cannot treat
            # the key as an HMAC secret, whatever the header claims.
            self._jws.decode_complete(token, key=key.public_key, algorithms=sorted(key.algorithms))
        except InvalidSignatureError:
            raise Unauthorized(f"bad signature (iss={client.iss}, kid={kid!r})") from None
        except PyJWTError as error:
            raise Unauthorized(f"signature not verifiable: {error} (iss={client.iss}, kid={kid!r})") from None

        try:
            first_use = self._replay_cache.claim(jti, client.iss, expires_at)
        except ReplayCacheError as error:
            raise Unauthorized(f"{error} (iss={client.iss})") from None
        if not first_use:
            raise Unauthorized(f"replayed jti (iss={client.iss})")
        return client

    def _unverified_parts(self, token: str) -> tuple[dict[str, Any], dict[str, Any]]:
        try:
            decoded = self._header_parser.decode_complete(token, options={"verify_signature": False})
            claims = json.loads(decoded["payload"])
        except (PyJWTError, ValueError) as error:
            raise Unauthorized(f"malformed token ({type(error).__name__})") from None
        header = decoded["header"]
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise Unauthorized("malformed token (header or claims not a JSON object)")
        return header, claims

    def _checked_times(self, claims: Mapping[str, Any], client: TrustedClient) -> float:
        """Check exp, iat and nbf; return until when the ``jti`` must be remembered."""
        now = self._clock()
        leeway = self._leeway
        exp = _time_claim(claims, "exp", client)
        iat = _time_claim(claims, "iat", client)
        if exp is None or iat is None:
            raise Unauthorized(f"missing {'exp' if exp is None else 'iat'} (iss={client.iss})")
        if exp <= now - leeway:
            raise Unauthorized(f"expired {now - exp:.0f} s ago (iss={client.iss})")
        if iat > now + leeway:
            raise Unauthorized(f"iat {iat - now:.0f} s in the future (iss={client.iss})")
        if now - iat > self._max_token_age + leeway:
            raise Unauthorized(f"issued {now - iat:.0f} s ago, older than {self._max_token_age} s (iss={client.iss})")
        nbf = _time_claim(claims, "nbf", client)
        if nbf is not None and nbf > now + leeway:
            raise Unauthorized(f"not valid for another {nbf - now:.0f} s (nbf, iss={client.iss})")
        # After min(exp, iat + max age) + leeway the token is refused anyway, so the jti need not be kept longer;
        # this bounds the replay cache even for tokens with a far-away exp.
        return min(exp, iat + self._max_token_age) + leeway


def expected_audience(public_url: str | None, request_url_root: str, path: str) -> str:
    """The ``aud`` a client must use: ``CDS_PUBLIC_URL`` (behind a proxy) or the request's own URL root, + path.

    ``request_url_root`` is Flask's ``request.url_root`` (with its trailing slash); ``path`` is the endpoint path
    such as ``/cds-services`` or ``/cds-services/lumbar-imaging-order-select``.
    """
    base = public_url if public_url else request_url_root
    return base.rstrip("/") + "/" + path.lstrip("/")


def build_authenticator(
    trusted_clients_path: str | None,
    redis_url: str | None = None,
    *,
    redis_key_prefix: str = DEFAULT_REDIS_KEY_PREFIX,
) -> ClientAuthenticator | None:
    """The process-wide authenticator from the settings, or None when ``CDS_TRUSTED_CLIENTS`` is unset (open mode).

    The replay cache is Redis (shared by all workers and replicas) when ``redis_url`` is set, otherwise in-process.
    Raises ConfigurationError for a bad trusted-clients file.
    """
    if not trusted_clients_path:
        return None
    clients = load_trusted_clients(trusted_clients_path)
    replay_cache: ReplayCache
    if redis_url:
        replay_cache = RedisReplayCache(redis_url, key_prefix=redis_key_prefix)
    else:
        replay_cache = InProcessReplayCache()
    return ClientAuthenticator(clients, replay_cache=replay_cache)


def _bearer_token(authorization_header: str | None) -> str:
    if authorization_header is None or not authorization_header.strip():
        raise Unauthorized("no Authorization header")
    scheme, _, token = authorization_header.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise Unauthorized("Authorization header is not a Bearer token")
    token = token.strip()
    if len(token) > MAX_TOKEN_LENGTH:
        raise Unauthorized(f"token longer than {MAX_TOKEN_LENGTH} characters")
    if not _COMPACT_JWS.fullmatch(token):
        raise Unauthorized("malformed token (not a compact JWS)")
    return token


def _audience_matches(aud: Any, audience: str) -> bool:
    wanted = _without_trailing_slash(audience)
    if isinstance(aud, str):
        return _without_trailing_slash(aud) == wanted
    if isinstance(aud, list) and aud and all(isinstance(item, str) for item in aud):
        return any(_without_trailing_slash(item) == wanted for item in aud)
    return False


def _without_trailing_slash(url: str) -> str:
    return url[:-1] if url.endswith("/") else url


def _time_claim(claims: Mapping[str, Any], name: str, client: TrustedClient) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    # bool is an int in Python, and json accepts NaN/Infinity: neither is a NumericDate.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Unauthorized(f"{name} is not a NumericDate (iss={client.iss})")
    return float(value)


def _shown(value: Any) -> str:
    """An untrusted claim or header value, quoted and shortened for a log line (repr escapes control chars)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
