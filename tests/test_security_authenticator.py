"""ClientAuthenticator with real keys, real signatures (PyJWT + cryptography) and a real loopback JWKS server."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from jwks_server import JwksServer, SigningKey, jwks_of
from support import free_port

from cds_service.errors import Unauthorized
from cds_service.security import (
    ClientAuthenticator,
    InProcessReplayCache,
    JwksCache,
    RedisReplayCache,
    TrustedClient,
    expected_audience,
)

ISS = "https://ehr.example.org/interconnect/api/FHIR/R4"
AUD = "https://cds.example.org/cds-services/lumbar-imaging-order-select"
START = 1_800_000_000.0


class FakeClock:
    """Wall clock for the authenticator and the JWKS cache, moved by the test."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def ec_key() -> SigningKey:
    return SigningKey("EC-P384", kid="ec-2026-1")


@pytest.fixture(scope="module")
def rsa_key() -> SigningKey:
    return SigningKey("RSA", kid="rsa-2026-1")


@pytest.fixture(scope="module")
def attacker_key() -> SigningKey:
    return SigningKey("EC-P384", kid="attacker")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def jwks_server(ec_key: SigningKey, rsa_key: SigningKey) -> Iterator[JwksServer]:
    with JwksServer(jwks_of(ec_key, rsa_key)) as server:
        yield server


@pytest.fixture
def client(jwks_server: JwksServer) -> TrustedClient:
    return TrustedClient(iss=ISS, fhir_servers=(ISS,), tenant=None, jwks_url=jwks_server.url, jwks=None)


def make_authenticator(client: TrustedClient, clock: FakeClock, **kwargs: Any) -> ClientAuthenticator:
    return ClientAuthenticator(
        [client],
        replay_cache=kwargs.pop("replay_cache", InProcessReplayCache(clock=clock)),
        jwks_cache=JwksCache(clock=clock),
        clock=clock,
        **kwargs,
    )


@pytest.fixture
def authenticator(client: TrustedClient, clock: FakeClock) -> ClientAuthenticator:
    return make_authenticator(client, clock)


def claims(clock: FakeClock, **overrides: Any) -> dict[str, Any]:
    """CDS Hooks client claims, valid now; an override of None removes the claim."""
    values: dict[str, Any] = {
        "iss": ISS,
        "aud": AUD,
        "exp": int(clock.now) + 300,
        "iat": int(clock.now),
        "jti": str(uuid.uuid4()),
    }
    values.update(overrides)
    return {name: value for name, value in values.items() if value is not None}


def bearer(token: str) -> str:
    return "Bearer " + token


def refusal(authenticator: ClientAuthenticator, header: str | None, audience: str = AUD) -> str:
    """Authenticate, expecting Unauthorized; return its (log-only) reason."""
    with pytest.raises(Unauthorized) as caught:
        authenticator.authenticate(header, audience)
    assert caught.value.message == "Authentication required"  # what a client may see: no details
    return caught.value.reason


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_token(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    return ".".join(
        [b64url(json.dumps(header).encode()), b64url(json.dumps(payload).encode()), b64url(signature)]
    )


# ---------------------------------------------------------------------------------------------------- accepted


def test_accepts_es384_token(authenticator: ClientAuthenticator, ec_key: SigningKey, clock: FakeClock) -> None:
    token = ec_key.sign(claims(clock), "ES384")
    assert authenticator.authenticate(bearer(token), AUD).iss == ISS


def test_accepts_rs384_token(authenticator: ClientAuthenticator, rsa_key: SigningKey, clock: FakeClock) -> None:
    token = rsa_key.sign(claims(clock), "RS384")
    assert authenticator.authenticate(bearer(token), AUD).iss == ISS


@pytest.mark.parametrize("algorithm", ["RS256", "RS512", "PS256", "PS384", "PS512"])
def test_accepts_every_rsa_algorithm_for_an_rsa_key_without_alg(
    authenticator: ClientAuthenticator, rsa_key: SigningKey, clock: FakeClock, algorithm: str
) -> None:
    token = rsa_key.sign(claims(clock), algorithm)
    assert authenticator.authenticate(bearer(token), AUD).iss == ISS


def test_accepts_audience_list(authenticator: ClientAuthenticator, ec_key: SigningKey, clock: FakeClock) -> None:
    token = ec_key.sign(claims(clock, aud=["https://other.example.org/cds-services", AUD]), "ES384")
    assert authenticator.authenticate(bearer(token), AUD).iss == ISS


def test_accepts_one_trailing_slash_either_way(
    authenticator: ClientAuthenticator, ec_key: SigningKey, clock: FakeClock
) -> None:
    with_slash = ec_key.sign(claims(clock, aud=AUD + "/"), "ES384")
    assert authenticator.authenticate(bearer(with_slash), AUD).iss == ISS
    without_slash = ec_key.sign(claims(clock, aud=AUD), "ES384")
    assert authenticator.authenticate(bearer(without_slash), AUD + "/").iss == ISS


def test_refuses_two_trailing_slashes(authenticator: ClientAuthenticator, ec_key: SigningKey, clock: FakeClock) -> None:
    token = ec_key.sign(claims(clock, aud=AUD + "//"), "ES384")
    assert "aud" in refusal(authenticator, bearer(token))


def test_accepts_epic_style_token_with_nbf_and_sub(
    authenticator: ClientAuthenticator, rsa_key: SigningKey, clock: FakeClock
) -> None:
    # Epic: RS384, sub = client id, nbf about 5 minutes before iat, 15 minutes of validity.
    iat = int(clock.now) - 20
    token = rsa_key.sign(claims(clock, iat=iat, nbf=iat - 300, exp=iat + 900, sub="epic-client-id"), "RS384")
    assert authenticator.authenticate(bearer(token), AUD).iss == ISS


def test_accepts_small_clock_skew(authenticator: ClientAuthenticator, ec_key: SigningKey, clock: FakeClock) -> None:
    token = ec_key.sign(claims(clock, iat=int(clock.now) + 45, nbf=int(clock.now) + 45), "ES384")
    assert authenticator.authenticate(bearer(token), AUD).iss == ISS


def test_accepts_lowercase_bearer_scheme(
    authenticator: ClientAuthenticator, ec_key: SigningKey, clock: FakeClock
) -> None:
    token = ec_key.sign(claims(clock), "ES384")
    assert authenticator.authenticate("bearer " + token, AUD).iss == ISS


def test_accepts_jku_equal_to_the_configured_url(
    authenticator: ClientAuthenticator, ec_key: SigningKey, clock: FakeClock, jwks_server: JwksServer
) -> None:
    token = ec_key.sign(claims(clock), "ES384", jku=jwks_server.url)
    assert authenticator.authenticate(bearer(token), AUD).iss == ISS


def test_accepts_tenant_when_it_matches(jwks_server: JwksServer, ec_key: SigningKey, clock: FakeClock) -> None:
    client = TrustedClient(iss=ISS, fhir_servers=(), tenant="north-health", jwks_url=jwks_server.url, jwks=None)
    token = ec_key.sign(claims(clock, tenant="north-health"), "ES384")
    assert make_authenticator(client, clock).authenticate(bearer(token), AUD) is client


def test_pinned_keys_verify_without_any_fetch(ec_key: SigningKey, clock: FakeClock) -> None:
    client = TrustedClient(iss=ISS, fhir_servers=(), tenant=None, jwks_url=None, jwks=jwks_of(ec_key))
    token = ec_key.sign(claims(clock), "ES384")
    assert make_authenticator(client, clock).authenticate(bearer(token), AUD) is client


def test_returns_the_client_of_the_issuer(jwks_server: JwksServer, ec_key: SigningKey, clock: FakeClock) -> None:
    other = TrustedClient(iss="https://other.example.org", fhir_servers=(), tenant=None, jwks_url=None,
                          jwks=jwks_of(SigningKey("EC-P256", kid="other")))
    ours = TrustedClient(iss=ISS, fhir_servers=("https://fhir.example.org/r4",), tenant=None,
                         jwks_url=jwks_server.url, jwks=None)
    authenticator = ClientAuthenticator([other, ours], replay_cache=InProcessReplayCache(clock=clock),
                                        jwks_cache=JwksCache(clock=clock), clock=clock)
    token = ec_key.sign(claims(clock), "ES384")
    assert authenticator.authenticate(bearer(token), AUD) is ours


# ---------------------------------------------------------------------------------------------------- refused


@pytest.mark.parametrize("header", [None, "", "   "])
def test_refuses_missing_authorization_header(authenticator: ClientAuthenticator, header: str | None) -> None:
    assert refusal(authenticator, header) == "no Authorization header"


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("Basic dXNlcjpwYXNz", "Authorization header is not a Bearer token"),
        ("Bearer", "malformed token (not a compact JWS)"),
        ("Bearer ", "malformed token (not a compact JWS)"),
        ("Bearer abc.def", "malformed token (not a compact JWS)"),
        ("Bearer a.b.c.d.e", "malformed token (not a compact JWS)"),
        ("Bearer e30.e30.!!!", "malformed token (not a compact JWS)"),
        ("Bearer x.y.z", "malformed token (DecodeError)"),
        ("Bearer " + "a" * 20000 + ".b.c", "token longer than 16384 characters"),
    ],
)
def test_refuses_malformed_authorization_header(
    authenticator: ClientAuthenticator, header: str, reason: str
) -> None:
    assert refusal(authenticator, header) == reason


def test_refuses_claims_that_are_not_an_object(
    authenticator: ClientAuthenticator, ec_key: SigningKey
) -> None:
    token = unsigned_token({"alg": "ES384", "kid": ec_key.kid}, ["not", "an", "object"])  # type: ignore[arg-type]
    assert refusal(authenticator, bearer(token)) == "malformed token (header or claims not a JSON object)"


def test_refuses_expired_token(authenticator: ClientAuthenticator, ec_key: SigningKey, clock: FakeClock) -> None:
    token = ec_key.sign(claims(clock, iat=int(clock.now) - 400, exp=int(clock.now) - 61), "ES384")
    assert refusal(authenticator, bearer(token)).startswith("expired 61 s ago")


def test_expiry_allows_the_leeway(authenticator: ClientAuthenticator, ec_key: SigningKey, clock: FakeClock) -> None:
    token = ec_key.sign(claims(clock, iat=int(clock.now) - 400, exp=int(clock.now) - 59), "ES384")
    assert authenticator.authenticate(bearer(token), AUD).iss == ISS


def test_refuses_iat_in_the_future(authenticator: ClientAuthenticator, ec_key: SigningKey, clock: FakeClock) -> None:
    token = ec_key.sign(claims(clock, iat=int(clock.now) + 120, exp=int(clock.now) + 420), "ES384")
    assert refusal(authenticator, bearer(token)).startswith("iat 120 s in the future")


def test_refuses_too_old_iat(authenticator: ClientAuthenticator, ec_key: SigningKey, clock: FakeClock) -> None:
    # exp is still in the future: a long-lived token is refused once it is older than max_token_age.
    token = ec_key.sign(claims(clock, iat=int(clock.now) - 3600 - 61, exp=int(clock.now) + 3600), "ES384")
    assert refusal(authenticator, bearer(token)).startswith("issued 3661 s ago, older than 3600 s")


def test_max_token_age_is_configurable(client: TrustedClient, ec_key: SigningKey, clock: FakeClock) -> None:
    authenticator = make_authenticator(client, clock, max_token_age=300, leeway=0)
    token = ec_key.sign(claims(clock, iat=int(clock.now) - 301), "ES384")
    assert "older than 300 s" in refusal(authenticator, bearer(token))


def test_refuses_nbf_in_the_future(authenticator: ClientAuthenticator, ec_key: SigningKey, clock: FakeClock) -> None:
    token = ec_key.sign(claims(clock, nbf=int(clock.now) + 120), "ES384")
    assert refusal(authenticator, bearer(token)).startswith("not valid for another 120 s")


@pytest.mark.parametrize("missing", ["exp", "iat"])
def test_refuses_missing_time_claim(
    authenticator: ClientAuthenticator, ec_key: SigningKey, clock: FakeClock, missing: str
) -> None:
    token = ec_key.sign(claims(clock, **{missing: None}), "ES384")
    assert refusal(authenticator, bearer(token)).startswith(f"missing {missing}")


@pytest.mark.parametrize("value", ["1800000300", True, [1800000300]])
def test_refuses_exp_that_is_not_a_number(
    authenticator: ClientAuthenticator, ec_key: SigningKey, clock: FakeClock, value: Any
) -> None:
    token = unsigned_token({"alg": "ES384", "kid": ec_key.kid}, claims(clock, exp=value), b"x" * 96)
    assert refusal(authenticator, bearer(token)).startswith("exp is not a NumericDate")


def test_refuses_wrong_audience(authenticator: ClientAuthenticator, ec_key: SigningKey, clock: FakeClock) -> None:
    # A token minted for another service of ours must not open this one.
    token = ec_key.sign(claims(clock, aud="https://cds.example.org/cds-services/lumbar-imaging-order-sign"), "ES384")
    assert refusal(authenticator, bearer(token)).startswith("aud ")


@pytest.mark.parametrize("aud", [None, [], [42], {"url": AUD}])
def test_refuses_missing_or_ill_typed_audience(
    authenticator: ClientAuthenticator, ec_key: SigningKey, clock: FakeClock, aud: Any
) -> None:
    values = claims(clock)
    values["aud"] = aud
    if aud is None:
        del values["aud"]
    token = unsigned_token({"alg": "ES384", "kid": ec_key.kid}, values, b"x" * 96)
    assert refusal(authenticator, bearer(token)).startswith("aud ")


def test_refuses_unknown_issuer(authenticator: ClientAuthenticator, attacker_key: SigningKey, clock: FakeClock,
                                jwks_server: JwksServer) -> None:
    token = attacker_key.sign(claims(clock, iss="https://evil.example.net"), "ES384")
    assert refusal(authenticator, bearer(token)) == "issuer 'https://evil.example.net' is not a trusted client"
    assert jwks_server.request_paths == []  # nothing fetched for an unknown issuer


def test_refuses_missing_kid(authenticator: ClientAuthenticator, ec_key: SigningKey, clock: FakeClock) -> None:
    token = ec_key.sign(claims(clock), "ES384", kid=None)
    assert refusal(authenticator, bearer(token)) == "no kid in the token header"


def test_unknown_kid_refetches_once_then_is_rate_limited(
    authenticator: ClientAuthenticator, ec_key: SigningKey, clock: FakeClock, jwks_server: JwksServer
) -> None:
    assert authenticator.authenticate(bearer(ec_key.sign(claims(clock), "ES384")), AUD).iss == ISS
    assert len(jwks_server.request_paths) == 1  # the first use fetched the set

    stranger = SigningKey("EC-P384", kid="not-published")
    first = stranger.sign(claims(clock), "ES384")
    assert refusal(authenticator, bearer(first)) == f"unknown kid 'not-published' for iss={ISS}"
    assert len(jwks_server.request_paths) == 2  # one refetch for the unknown kid

    for _ in range(5):
        again = stranger.sign(claims(clock), "ES384")
        assert refusal(authenticator, bearer(again)).startswith("unknown kid")
    assert len(jwks_server.request_paths) == 2  # rate-limited: no further fetch within 30 s

    clock.now += 31
    assert refusal(authenticator, bearer(stranger.sign(claims(clock), "ES384"))).startswith("unknown kid")
    assert len(jwks_server.request_paths) == 3  # allowed again after the interval
    assert set(jwks_server.request_paths) == {"/.well-known/jwks.json"}


def test_key_rotation_is_accepted_after_one_refetch(
    authenticator: ClientAuthenticator, ec_key: SigningKey, clock: FakeClock, jwks_server: JwksServer
) -> None:
    assert authenticator.authenticate(bearer(ec_key.sign(claims(clock), "ES384")), AUD).iss == ISS
    assert len(jwks_server.request_paths) == 1

    rotated = SigningKey("EC-P384", kid="ec-2026-2")
    jwks_server.set_jwks(jwks_of(rotated))  # the client rotates: new kid in, old kid out
    clock.now += 5  # well inside the 1 h cache lifetime
    assert authenticator.authenticate(bearer(rotated.sign(claims(clock), "ES384")), AUD).iss == ISS
    assert len(jwks_server.request_paths) == 2
    # The refetched set no longer holds the old key, so the old kid stops working.
    assert refusal(authenticator, bearer(ec_key.sign(claims(clock), "ES384"))).startswith("unknown kid 'ec-2026-1'")


def test_refuses_alg_none(authenticator: ClientAuthenticator, ec_key: SigningKey, clock: FakeClock,
                          jwks_server: JwksServer) -> None:
    token = unsigned_token({"alg": "none", "typ": "JWT", "kid": ec_key.kid}, claims(clock))
    assert refusal(authenticator, bearer(token)) == "algorithm 'none' not allowed"
    assert jwks_server.request_paths == []


def test_refuses_missing_alg(authenticator: ClientAuthenticator, ec_key: SigningKey, clock: FakeClock) -> None:
    token = unsigned_token({"typ": "JWT", "kid": ec_key.kid}, claims(clock), b"x" * 96)
    assert refusal(authenticator, bearer(token)) == "algorithm None not allowed"


@pytest.mark.parametrize("algorithm", ["HS256", "HS384", "HS512"])
def test_refuses_hmac_signed_with_the_public_key_pem_as_secret(
    authenticator: ClientAuthenticator, rsa_key: SigningKey, ec_key: SigningKey, clock: FakeClock, algorithm: str
) -> None:
    # The classic key-confusion forgery: the attacker knows the public key and HMACs with it.
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[algorithm]
    for key in (rsa_key, ec_key):
        header = {"alg": algorithm, "typ": "JWT", "kid": key.kid}
        signing_input = ".".join([b64url(json.dumps(header).encode()), b64url(json.dumps(claims(clock)).encode())])
        signature = hmac.new(key.public_pem(), signing_input.encode(), digest).digest()
        token = signing_input + "." + b64url(signature)
        assert refusal(authenticator, bearer(token)) == f"algorithm {algorithm!r} not allowed"


def test_refuses_alg_that_does_not_fit_the_key(
    authenticator: ClientAuthenticator, ec_key: SigningKey, clock: FakeClock
) -> None:
    # An RS384 header naming the EC key's kid: the key decides which algorithms apply, not the header.
    other_rsa = SigningKey("RSA", kid=ec_key.kid)
    token = other_rsa.sign(claims(clock), "RS384")
    assert refusal(authenticator, bearer(token)) == f"alg RS384 does not fit key kid='ec-2026-1' of iss={ISS}"


def test_refuses_signature_by_another_key_under_a_known_kid(
    authenticator: ClientAuthenticator, ec_key: SigningKey, attacker_key: SigningKey, clock: FakeClock
) -> None:
    token = attacker_key.sign(claims(clock), "ES384", kid=ec_key.kid)
    assert refusal(authenticator, bearer(token)) == f"bad signature (iss={ISS}, kid='ec-2026-1')"


def test_refuses_tampered_claims(authenticator: ClientAuthenticator, ec_key: SigningKey, clock: FakeClock) -> None:
    header, payload, signature = ec_key.sign(claims(clock, tenant="a"), "ES384").split(".")
    tampered = b64url(json.dumps(claims(clock, tenant="b")).encode())
    assert refusal(authenticator, bearer(f"{header}.{tampered}.{signature}")).startswith("bad signature")


def test_refuses_replayed_jti(authenticator: ClientAuthenticator, ec_key: SigningKey, clock: FakeClock) -> None:
    token = ec_key.sign(claims(clock), "ES384")
    assert authenticator.authenticate(bearer(token), AUD).iss == ISS
    clock.now += 10
    assert refusal(authenticator, bearer(token)) == f"replayed jti (iss={ISS})"


def test_refuses_reused_jti_in_a_new_token(
    authenticator: ClientAuthenticator, ec_key: SigningKey, clock: FakeClock
) -> None:
    jti = "fixed-nonce"
    assert authenticator.authenticate(bearer(ec_key.sign(claims(clock, jti=jti), "ES384")), AUD).iss == ISS
    clock.now += 1
    assert refusal(authenticator, bearer(ec_key.sign(claims(clock, jti=jti), "ES384"))).startswith("replayed jti")


def test_forged_signature_does_not_burn_the_jti(
    authenticator: ClientAuthenticator, ec_key: SigningKey, attacker_key: SigningKey, clock: FakeClock
) -> None:
    values = claims(clock)
    forged = attacker_key.sign(values, "ES384", kid=ec_key.kid)
    assert refusal(authenticator, bearer(forged)).startswith("bad signature")
    assert authenticator.authenticate(bearer(ec_key.sign(values, "ES384")), AUD).iss == ISS


def test_refuses_forged_jku_and_never_fetches_it(
    authenticator: ClientAuthenticator, attacker_key: SigningKey, ec_key: SigningKey, clock: FakeClock,
    jwks_server: JwksServer,
) -> None:
    with JwksServer(jwks_of(attacker_key)) as attacker_server:
        # Attacker's own kid, and also a trusted kid: neither may make the service look at the attacker's URL.
        for kid in (attacker_key.kid, ec_key.kid):
            token = attacker_key.sign(claims(clock), "ES384", kid=kid, jku=attacker_server.url)
            reason = refusal(authenticator, bearer(token))
            assert reason.startswith(f"jku '{attacker_server.url}' is not the configured JWKS URL")
        assert attacker_server.request_paths == []
    assert jwks_server.request_paths == []


def test_refuses_any_jku_when_keys_are_pinned(attacker_key: SigningKey, ec_key: SigningKey, clock: FakeClock) -> None:
    client = TrustedClient(iss=ISS, fhir_servers=(), tenant=None, jwks_url=None, jwks=jwks_of(ec_key))
    with JwksServer(jwks_of(attacker_key)) as attacker_server:
        token = ec_key.sign(claims(clock), "ES384", jku=attacker_server.url)
        assert refusal(make_authenticator(client, clock), bearer(token)).startswith("jku ")
        assert attacker_server.request_paths == []


@pytest.mark.parametrize("tenant", ["south-health", None])
def test_refuses_tenant_mismatch(
    jwks_server: JwksServer, ec_key: SigningKey, clock: FakeClock, tenant: str | None
) -> None:
    client = TrustedClient(iss=ISS, fhir_servers=(), tenant="north-health", jwks_url=jwks_server.url, jwks=None)
    token = ec_key.sign(claims(clock, tenant=tenant), "ES384")
    assert refusal(make_authenticator(client, clock), bearer(token)) == (
        f"tenant {tenant!r} is not the configured one (iss={ISS})"
    )


@pytest.mark.parametrize("jti", [None, "", 12345])
def test_refuses_missing_jti(authenticator: ClientAuthenticator, ec_key: SigningKey, clock: FakeClock,
                             jti: Any) -> None:
    token = ec_key.sign(claims(clock, jti=jti), "ES384")
    assert refusal(authenticator, bearer(token)) == f"no jti (iss={ISS})"


def test_refuses_overlong_jti(authenticator: ClientAuthenticator, ec_key: SigningKey, clock: FakeClock) -> None:
    token = ec_key.sign(claims(clock, jti="j" * 513), "ES384")
    assert refusal(authenticator, bearer(token)).startswith("jti longer than 512")


def test_refuses_a_typ_other_than_jwt(authenticator: ClientAuthenticator, ec_key: SigningKey,
                                      clock: FakeClock) -> None:
    token = ec_key.sign(claims(clock), "ES384", typ="at+jwt")
    assert refusal(authenticator, bearer(token)) == "typ 'at+jwt' is not JWT"


def test_refuses_when_the_jwks_host_is_down_and_nothing_is_cached(
    ec_key: SigningKey, clock: FakeClock
) -> None:
    client = TrustedClient(iss=ISS, fhir_servers=(), tenant=None,
                           jwks_url=f"http://127.0.0.1:{free_port()}/jwks.json", jwks=None)
    token = ec_key.sign(claims(clock), "ES384")
    assert refusal(make_authenticator(client, clock), bearer(token)).startswith("unknown kid")


def test_replay_cache_failure_refuses_the_token(
    client: TrustedClient, ec_key: SigningKey, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    dead_redis = RedisReplayCache(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.5, clock=clock)
    authenticator = make_authenticator(client, clock, replay_cache=dead_redis)
    token = ec_key.sign(claims(clock), "ES384")
    with caplog.at_level(logging.WARNING, logger="cds_service.security"):
        reason = refusal(authenticator, bearer(token))
    assert reason == f"Redis replay cache unavailable (ConnectionError) (iss={ISS})"
    assert "replay cache unavailable" in caplog.text


def test_reasons_are_logged_without_the_token(
    authenticator: ClientAuthenticator, ec_key: SigningKey, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    tokens = [
        ec_key.sign(claims(clock, aud="https://wrong.example.org"), "ES384"),
        ec_key.sign(claims(clock), "ES384", kid="nope"),
        unsigned_token({"alg": "none", "kid": ec_key.kid}, claims(clock)),
    ]
    replayed = ec_key.sign(claims(clock), "ES384")
    authenticator.authenticate(bearer(replayed), AUD)
    tokens.append(replayed)
    with caplog.at_level(logging.DEBUG, logger="cds_service.security"):
        for token in tokens:
            refusal(authenticator, bearer(token))
    refused = [record for record in caplog.records if record.getMessage().startswith("client JWT refused: ")]
    assert len(refused) == len(tokens)
    for token in tokens:
        for part in token.split("."):
            if len(part) > 8:
                assert part not in caplog.text


def test_control_characters_in_claims_are_escaped_in_the_reason(
    authenticator: ClientAuthenticator, attacker_key: SigningKey, clock: FakeClock
) -> None:
    token = attacker_key.sign(claims(clock, iss="evil\nclient JWT accepted: iss=x"), "ES384")
    reason = refusal(authenticator, bearer(token))
    assert "\n" not in reason and "\\n" in reason


# ---------------------------------------------------------------------------------------------------- audience


@pytest.mark.parametrize(
    ("public_url", "url_root", "path", "expected"),
    [
        (None, "http://127.0.0.1:8080/", "/cds-services", "http://127.0.0.1:8080/cds-services"),
        ("", "http://127.0.0.1:8080/", "/cds-services/x", "http://127.0.0.1:8080/cds-services/x"),
        ("https://cds.example.org/", "http://10.0.0.5:8080/", "/cds-services", "https://cds.example.org/cds-services"),
        ("https://cds.example.org/lbp", "http://pod/", "/cds-services/x", "https://cds.example.org/lbp/cds-services/x"),
    ],
)
def test_expected_audience(public_url: str | None, url_root: str, path: str, expected: str) -> None:
    assert expected_audience(public_url, url_root, path) == expected


class BrokenReplayCache:
    def claim(self, jti: str, iss: str, expires_at: float) -> bool:
        raise RuntimeError("bug")


def test_an_unexpected_error_is_a_refusal_not_a_crash(
    client: TrustedClient, ec_key: SigningKey, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    authenticator = make_authenticator(client, clock, replay_cache=BrokenReplayCache())
    with caplog.at_level(logging.ERROR, logger="cds_service.security"):
        reason = refusal(authenticator, bearer(ec_key.sign(claims(clock), "ES384")))
    assert reason == "unexpected RuntimeError while verifying the token"
    assert "unexpected RuntimeError" in caplog.text
