"""Replay protection: each ``(iss, jti)`` pair is accepted once until the token can no longer be valid.

Two implementations of one small protocol: an in-process cache (one worker, or tests) and a Redis cache shared
by every worker and replica (``CDS_REDIS_URL``). Both fail closed: when they cannot tell whether a ``jti`` was
seen, they raise ReplayCacheError and the authenticator refuses the token.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Protocol

import redis

logger = logging.getLogger("cds_service.security")

DEFAULT_MAX_ENTRIES = 200_000
DEFAULT_REDIS_KEY_PREFIX = "cds:jti:"


class ReplayCacheError(Exception):
    """The replay cache cannot tell whether a ``jti`` was seen (for example Redis is down): refuse the token."""


class ReplayCache(Protocol):
    """Remembers token ids until they expire."""

    def claim(self, jti: str, iss: str, expires_at: float) -> bool:
        """Record ``jti`` for ``iss`` until ``expires_at`` (Unix time); False if it was already recorded.

        Raises ReplayCacheError when the answer is unknown.
        """
        ...


def replay_key(jti: str, iss: str) -> str:
    """A fixed-length key for one issuer's ``jti``: ids are unique per issuer, and a hash bounds memory and keys."""
    return hashlib.sha256(f"{iss}\x00{jti}".encode()).hexdigest()


class InProcessReplayCache:
    """A thread-safe in-memory replay cache with expiring entries and a size bound.

    When the bound is reached and no entry has expired, new tokens are refused (ReplayCacheError) rather than
    evicting live entries, since evicting one would let that token be replayed.
    """

    def __init__(self, *, max_entries: int = DEFAULT_MAX_ENTRIES, clock: Callable[[], float] = time.time) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._expiry_by_key: dict[str, float] = {}
        # (expires_at, key) in expiry order, so expired entries are dropped in O(log n) each.
        self._expiry_heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        with self._lock:
            self._drop_expired(self._clock())
            return len(self._expiry_by_key)

    def claim(self, jti: str, iss: str, expires_at: float) -> bool:
        """Record ``jti`` until ``expires_at``; False if it is already recorded and not expired."""
        key = replay_key(jti, iss)
        with self._lock:
            now = self._clock()
            self._drop_expired(now)
            if key in self._expiry_by_key:
                return False
            if len(self._expiry_by_key) >= self._max_entries:
                logger.error("replay cache full (%d live entries); refusing new tokens", self._max_entries)
                raise ReplayCacheError(f"in-process replay cache full ({self._max_entries} live entries)")
            self._expiry_by_key[key] = expires_at
            heapq.heappush(self._expiry_heap, (expires_at, key))
            return True

    def _drop_expired(self, now: float) -> None:
        heap = self._expiry_heap
        while heap and heap[0][0] <= now:
            expires_at, key = heapq.heappop(heap)
            if self._expiry_by_key.get(key) == expires_at:
                del self._expiry_by_key[key]


class RedisReplayCache:
    """A replay cache in Redis, shared by every process: ``SET <prefix><hash> 1 NX EX <seconds>``.

    ``SET NX`` is atomic, so when two workers receive the same token at once exactly one of them accepts it.
    """

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = DEFAULT_REDIS_KEY_PREFIX,
        socket_timeout: float = 1.0,
        clock: Callable[[], float] = time.time,
        client: redis.Redis | None = None,
    ) -> None:
        self._key_prefix = key_prefix
        self._clock = clock
        # The client holds a connection pool; build it once per process, never per request.
        self._redis = client or redis.Redis.from_url(
            url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout
        )

    def claim(self, jti: str, iss: str, expires_at: float) -> bool:
        """Atomically record ``jti`` until ``expires_at``; False if another process or request already did."""
        seconds = max(1, math.ceil(expires_at - self._clock()))
        key = self._key_prefix + replay_key(jti, iss)
        try:
            stored = self._redis.set(key, b"1", nx=True, ex=seconds)
        except redis.RedisError as error:
            # Fail closed: without the shared cache a replayed token could not be told from a new one.
            logger.error("replay cache unavailable (%s); refusing the token", type(error).__name__)
            raise ReplayCacheError(f"Redis replay cache unavailable ({type(error).__name__})") from None
        return bool(stored)

    def close(self) -> None:
        """Release the connection pool."""
        self._redis.close()
