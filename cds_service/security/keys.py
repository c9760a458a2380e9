"""Turning a JWK Set into verification keys: public keys only, each bound to the algorithms of its key type.

This module decides, once per key, which JWS algorithms may ever verify a signature with it. The authenticator then
passes exactly those algorithms to PyJWT together with a ``cryptography`` public-key object (never a ``str`` or
``bytes`` key), so an RSA or EC public key can never be misread as an HMAC secret, whatever a token's header says.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from jwt.exceptions import PyJWTError

logger = logging.getLogger("cds_service.security")

RSA_ALGORITHMS: frozenset[str] = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_ALGORITHM_BY_CURVE: Mapping[str, str] = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
# CDS Hooks: asymmetric algorithms only; `none` and every HS* are refused (ES384 and RS384 recommended).
ALLOWED_ALGORITHMS: frozenset[str] = RSA_ALGORITHMS | frozenset(EC_ALGORITHM_BY_CURVE.values())

MINIMUM_RSA_KEY_BITS = 2048
# Members that only a private JWK carries (RFC 7518 §6.2.2 and §6.3.2).
PRIVATE_JWK_MEMBERS: frozenset[str] = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

PublicKey = RSAPublicKey | EllipticCurvePublicKey


class JwksFormatError(ValueError):
    """A JWK Set document is not shaped like one (no ``keys`` list) or holds no usable signing key."""


@dataclass(frozen=True)
class VerificationKey:
    """One public key from a client's JWK Set and the algorithms that may verify signatures with it."""

    kid: str
    algorithms: frozenset[str]
    public_key: PublicKey


def parse_jwk(jwk: Mapping[str, Any]) -> VerificationKey:
    """Build a VerificationKey from one JWK; raise ValueError saying why the key cannot be used for JWT signatures.

    Only the public members are read, so a JWK Set that (wrongly) publishes private material still yields a
    public key. ``use`` other than ``sig``, ``key_ops`` without ``verify``, symmetric (``oct``) keys, unknown
    curves, RSA keys under 2048 bits and an ``alg`` that does not fit the key type are refused.
    """
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid:
        raise ValueError("no \"kid\"")
    use = jwk.get("use")
    if use is not None and use != "sig":
        raise ValueError(f"\"use\" is {use!r}, not \"sig\"")
    key_ops = jwk.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        raise ValueError("\"key_ops\" does not include \"verify\"")
    declared_alg = jwk.get("alg")
    if declared_alg is not None and not isinstance(declared_alg, str):
        raise ValueError("\"alg\" is not a string")

    kty = jwk.get("kty")
    public_key: PublicKey
    if kty == "EC":
        curve = jwk.get("crv")
        curve_alg = EC_ALGORITHM_BY_CURVE.get(curve) if isinstance(curve, str) else None
        if curve_alg is None:
            raise ValueError(f"unsupported EC curve {curve!r}")
        if declared_alg is not None and declared_alg != curve_alg:
            raise ValueError(f"\"alg\" {declared_alg!r} does not match curve {curve} ({curve_alg})")
        algorithms = frozenset({curve_alg})
        public_members = {name: jwk.get(name) for name in ("kty", "crv", "x", "y")}
        loaded_ec = _load(ECAlgorithm.from_jwk, public_members)
        if not isinstance(loaded_ec, EllipticCurvePublicKey):  # defensive: only public members were passed
            raise ValueError("not an EC public key")
        public_key = loaded_ec
    elif kty == "RSA":
        if declared_alg is not None and declared_alg not in RSA_ALGORITHMS:
            raise ValueError(f"\"alg\" {declared_alg!r} is not an allowed RSA algorithm")
        algorithms = frozenset({declared_alg}) if declared_alg is not None else RSA_ALGORITHMS
        public_members = {name: jwk.get(name) for name in ("kty", "n", "e")}
        loaded_rsa = _load(RSAAlgorithm.from_jwk, public_members)
        if not isinstance(loaded_rsa, RSAPublicKey):
            raise ValueError("not an RSA public key")
        if loaded_rsa.key_size < MINIMUM_RSA_KEY_BITS:
            raise ValueError(f"RSA key of {loaded_rsa.key_size} bits (minimum {MINIMUM_RSA_KEY_BITS})")
        public_key = loaded_rsa
    else:
        # `oct` (symmetric) keys are refused on purpose: CDS Hooks forbids HMAC client JWTs.
        raise ValueError(f"unsupported key type {kty!r}")
    return VerificationKey(kid=kid, algorithms=algorithms, public_key=public_key)


def _load(loader: Any, public_members: dict[str, Any]) -> Any:
    if any(value is None for value in public_members.values()):
        missing = sorted(name for name, value in public_members.items() if value is None)
        raise ValueError(f"missing {', '.join(missing)}")
    try:
        return loader(public_members)
    except (PyJWTError, ValueError, TypeError) as error:
        raise ValueError(f"invalid key material ({error})") from None


def parse_jwks(document: Any, *, source: str) -> dict[str, VerificationKey]:
    """Parse a JWK Set into ``{kid: VerificationKey}``, skipping (and logging) keys that cannot verify JWTs.

    ``source`` names where the set came from (a URL or a config file) for the log. Raises JwksFormatError when
    the document is not a JWK Set or contains no usable key. A ``kid`` used twice keeps its first key.
    """
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise JwksFormatError("not a JWK Set (expected an object with a \"keys\" list)")
    keys: dict[str, VerificationKey] = {}
    for index, jwk in enumerate(document["keys"]):
        if not isinstance(jwk, Mapping):
            logger.warning("JWKS %s: key #%d skipped: not an object", source, index)
            continue
        try:
            key = parse_jwk(jwk)
        except ValueError as error:
            logger.warning("JWKS %s: key #%d skipped: %s", source, index, error)
            continue
        if key.kid in keys:
            logger.warning("JWKS %s: key #%d skipped: duplicate kid %r", source, index, key.kid)
            continue
        keys[key.kid] = key
    if not keys:
        raise JwksFormatError("no usable signing key (each needs a kid and an RSA >= 2048-bit or EC P-256/384/521 key)")
    return keys


def private_members_in(document: Mapping[str, Any]) -> list[str]:
    """The kids (or positions) of keys in a JWK Set that carry private key material (a configuration mistake)."""
    found: list[str] = []
    keys = document.get("keys")
    if not isinstance(keys, list):
        return found
    for index, jwk in enumerate(keys):
        if isinstance(jwk, Mapping) and PRIVATE_JWK_MEMBERS & set(jwk):
            kid = jwk.get("kid")
            found.append(repr(kid) if isinstance(kid, str) else f"#{index}")
    return found
