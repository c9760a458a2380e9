"""Per-issuer public keys: pinned in the configuration and/or fetched from the client's CONFIGURED ``jwks_url``.

No URL from a token (``jku``, ``x5u``) is ever fetched: a token only chooses a ``kid`` among keys that the
configuration already ties to its issuer.

Keys pinned in the configuration (``jwks``) are used as configured and never cause a fetch; the other keys of
an issuer with a ``jwks_url`` come from that URL.

Caching (in-process, one cache per worker: a worker fetches each JWK Set about once an hour, which is cheap, and
keeps Redis out of the signature path):
- fetched keys live ``ttl`` seconds (default 1 h), then are refreshed on the next lookup;
- an unknown ``kid`` triggers one refetch, at most once per ``refetch_interval`` (30 s) per issuer, so a flood of
  tokens with random kids cannot turn the service into a load generator against the client's JWKS host;
- a failed refresh keeps the previous keys (logged) for up to ``max_stale`` (24 h), so a brief outage of the
  JWKS host does not stop clinical decision support, and a removed key stops working at the next good refresh;
- fetches use a shared requests session, a 2 s timeout, no redirects and a size limit.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import requests

from cds_service.security.clients import TrustedClient
from cds_service.security.keys import JwksFormatError, VerificationKey, parse_jwks

logger = logging.getLogger("cds_service.security")

DEFAULT_TTL = 3600.0
DEFAULT_REFETCH_INTERVAL = 30.0
DEFAULT_MAX_STALE = 24 * 3600.0
DEFAULT_TIMEOUT = 2.0
DEFAULT_MAX_BYTES = 256 * 1024


class JwksFetchError(Exception):
    """A JWK Set could not be fetched or parsed; the message is safe to log."""


@dataclass
class _IssuerKeys:
    pinned: dict[str, VerificationKey]
    fetched: dict[str, VerificationKey] = field(default_factory=dict)
    fetched_at: float | None = None  # last successful fetch
    last_attempt_at: float | None = None  # last fetch attempt for any reason
    last_unknown_kid_fetch_at: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class JwksCache:
    """Keys per issuer, looked up by ``kid``; thread-safe, one instance per process."""

    def __init__(
        self,
        *,
        ttl: float = DEFAULT_TTL,
        refetch_interval: float = DEFAULT_REFETCH_INTERVAL,
        max_stale: float = DEFAULT_MAX_STALE,
        timeout: float = DEFAULT_TIMEOUT,
        max_bytes: int = DEFAULT_MAX_BYTES,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl
        self._refetch_interval = refetch_interval
        self._max_stale = max_stale
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._session = session or requests.Session()
        self._clock = clock
        self._issuers: dict[str, _IssuerKeys] = {}
        self._issuers_lock = threading.Lock()
        self.fetch_count = 0  # successful and failed fetches, for tests and metrics

    def get_key(self, client: TrustedClient, kid: str) -> VerificationKey | None:
        """The key ``kid`` of ``client``, fetching the configured JWK Set when needed; None if it has no such key."""
        state = self._state_for(client)
        pinned = state.pinned.get(kid)
        if pinned is not None or client.jwks_url is None:
            return pinned  # pinned keys are trusted as configured and need no fetch
        with state.lock:
            now = self._clock()
            if self._refresh_due(state, now):
                self._refresh(state, client.iss, client.jwks_url, now,
                              reason="cache expired" if state.fetched_at else "first use")
                return self._lookup_fetched(state, kid, now)  # just fetched: an unknown kid stays unknown
            key = self._lookup_fetched(state, kid, now)
            if key is not None:
                return key
            # Unknown kid: the client may have rotated its keys. Refetch, but not more than once per interval.
            last = state.last_unknown_kid_fetch_at
            if last is not None and now - last < self._refetch_interval:
                logger.info("JWKS refetch for unknown kid skipped: iss=%s (rate limited)", client.iss)
                return None
            state.last_unknown_kid_fetch_at = now
            self._refresh(state, client.iss, client.jwks_url, now, reason="unknown kid")
            return self._lookup_fetched(state, kid, now)

    def _state_for(self, client: TrustedClient) -> _IssuerKeys:
        with self._issuers_lock:
            state = self._issuers.get(client.iss)
            if state is None:
                pinned = parse_jwks(client.jwks, source=f"config {client.iss}") if client.jwks is not None else {}
                state = _IssuerKeys(pinned=pinned)
                self._issuers[client.iss] = state
            return state

    def _refresh_due(self, state: _IssuerKeys, now: float) -> bool:
        if state.fetched_at is not None and now - state.fetched_at < self._ttl:
            return False
        # Expired or never fetched: try, but retry a failing host only once per interval.
        return state.last_attempt_at is None or now - state.last_attempt_at >= self._refetch_interval

    def _lookup_fetched(self, state: _IssuerKeys, kid: str, now: float) -> VerificationKey | None:
        if state.fetched_at is not None and now - state.fetched_at > self._ttl + self._max_stale:
            if state.fetched:
                logger.warning("JWKS keys dropped: no successful fetch for %.0f s", now - state.fetched_at)
            state.fetched = {}
        return state.fetched.get(kid)

    def _refresh(self, state: _IssuerKeys, iss: str, url: str, now: float, *, reason: str) -> None:
        state.last_attempt_at = now
        self.fetch_count += 1
        try:
            keys = self._fetch(url)
        except JwksFetchError as error:
            logger.warning("JWKS fetch failed: iss=%s url=%s (%s): %s", iss, url, reason, error)
            return
        state.fetched = keys
        state.fetched_at = now
        logger.info("JWKS fetched: iss=%s (%s): %d key(s)", iss, reason, len(keys))

    def _fetch(self, url: str) -> dict[str, VerificationKey]:
        deadline = time.monotonic() + self._timeout
        try:
            response = self._session.get(
                url,
                timeout=self._timeout,
                allow_redirects=False,  # a redirect could lead anywhere; the configured URL is the only source
                stream=True,
                headers={"Accept": "application/json, application/jwk-set+json"},
            )
        except requests.RequestException as error:
            raise JwksFetchError(type(error).__name__) from None
        try:
            if response.status_code != 200:
                raise JwksFetchError(f"HTTP {response.status_code}")
            body = bytearray()
            try:
                for chunk in response.iter_content(chunk_size=16384):
                    body.extend(chunk)
                    if len(body) > self._max_bytes:
                        raise JwksFetchError(f"larger than {self._max_bytes} bytes")
                    if time.monotonic() > deadline:
                        raise JwksFetchError(f"slower than {self._timeout} s")
            except requests.RequestException as error:
                raise JwksFetchError(type(error).__name__) from None
        finally:
            response.close()
        try:
            document = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise JwksFetchError("not JSON") from None
        try:
            return parse_jwks(document, source=url)
        except JwksFormatError as error:
            raise JwksFetchError(str(error)) from None
