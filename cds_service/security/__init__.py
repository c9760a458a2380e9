"""CDS client authentication: trusted clients, their keys, replay protection and JWT verification.

Public API (see README.md in this package for the verification order and the attacks covered)::

    clients = load_trusted_clients(path)                      # CDS_TRUSTED_CLIENTS; ConfigurationError if bad
    authenticator = build_authenticator(path, redis_url)      # None in open mode (no trusted clients)
    client = authenticator.authenticate(request.headers.get("Authorization"),
                                        expected_audience(public_url, request.url_root, request.path))
    # -> TrustedClient, or raises cds_service.errors.Unauthorized(reason)
"""

from cds_service.security.authenticator import ClientAuthenticator, build_authenticator, expected_audience
from cds_service.security.clients import TrustedClient, load_trusted_clients
from cds_service.security.jwks import JwksCache
from cds_service.security.keys import ALLOWED_ALGORITHMS, VerificationKey
from cds_service.security.replay import (
    InProcessReplayCache,
    RedisReplayCache,
    ReplayCache,
    ReplayCacheError,
)
from cds_service.urls import is_loopback_url

__all__ = [
    "ALLOWED_ALGORITHMS",
    "ClientAuthenticator",
    "InProcessReplayCache",
    "JwksCache",
    "RedisReplayCache",
    "ReplayCache",
    "ReplayCacheError",
    "TrustedClient",
    "VerificationKey",
    "build_authenticator",
    "expected_audience",
    "is_loopback_url",
    "load_trusted_clients",
]
