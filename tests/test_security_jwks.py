"""JwksCache against a real loopback server, and the per-key rules of parse_jwk."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from jwks_server import JwksServer, SigningKey, jwks_of
from support import free_port

from cds_service.security import JwksCache, TrustedClient
from cds_service.security.keys import RSA_ALGORITHMS, JwksFormatError, parse_jwk, parse_jwks

ISS = "https://ehr.example.org/fhir"


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def ec_key() -> SigningKey:
    return SigningKey("EC-P384", kid="ec-1")


@pytest.fixture(scope="module")
def rsa_key() -> SigningKey:
    return SigningKey("RSA", kid="rsa-1")


@pytest.fixture
def server(ec_key: SigningKey) -> Iterator[JwksServer]:
    with JwksServer(jwks_of(ec_key)) as running:
        yield running


def client_for(url: str | None, jwks: dict[str, Any] | None = None) -> TrustedClient:
    return TrustedClient(iss=ISS, fhir_servers=(), tenant=None, jwks_url=url, jwks=jwks)


# ---------------------------------------------------------------------------------------------------- cache


def test_keys_are_cached_for_the_ttl(server: JwksServer, ec_key: SigningKey) -> None:
    clock = FakeClock()
    cache = JwksCache(clock=clock)
    client = client_for(server.url)
    for _ in range(10):
        assert cache.get_key(client, "ec-1") is not None
    clock.now += 3599
    assert cache.get_key(client, "ec-1") is not None
    assert len(server.request_paths) == 1


def test_expired_cache_is_refreshed_and_a_removed_key_stops_working(server: JwksServer, ec_key: SigningKey) -> None:
    clock = FakeClock()
    cache = JwksCache(clock=clock)
    client = client_for(server.url)
    assert cache.get_key(client, "ec-1") is not None
    server.set_jwks(jwks_of(SigningKey("EC-P384", kid="ec-2")))
    clock.now += 3600
    assert cache.get_key(client, "ec-1") is None
    assert cache.get_key(client, "ec-2") is not None
    assert len(server.request_paths) == 2


def test_failed_refresh_keeps_the_previous_keys_for_max_stale(
    server: JwksServer, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    cache = JwksCache(clock=clock, max_stale=7200)
    client = client_for(server.url)
    assert cache.get_key(client, "ec-1") is not None
    server.set_status(503)
    clock.now += 3600
    with caplog.at_level(logging.WARNING, logger="cds_service.security"):
        assert cache.get_key(client, "ec-1") is not None  # the JWKS host is down: keep serving the known key
    assert "JWKS fetch failed" in caplog.text and "HTTP 503" in caplog.text
    clock.now += 7201
    assert cache.get_key(client, "ec-1") is None  # too stale
    assert len(server.request_paths) == 3


def test_a_failing_host_is_retried_at_most_once_per_interval(ec_key: SigningKey) -> None:
    with JwksServer(jwks_of(ec_key)) as server:
        server.set_status(500)
        clock = FakeClock()
        cache = JwksCache(clock=clock)
        client = client_for(server.url)
        for _ in range(5):
            assert cache.get_key(client, "ec-1") is None
        # first use, then one unknown-kid refetch; then nothing more inside 30 s
        assert len(server.request_paths) == 2
        clock.now += 30
        assert cache.get_key(client, "ec-1") is None
        assert len(server.request_paths) == 3


def test_redirects_are_not_followed(ec_key: SigningKey) -> None:
    with JwksServer(jwks_of(ec_key)) as target, JwksServer({"keys": []}) as redirecting:
        redirecting.redirect_to(target.url)
        cache = JwksCache(clock=FakeClock())
        assert cache.get_key(client_for(redirecting.url), "ec-1") is None
        assert len(redirecting.request_paths) == 1
        assert target.request_paths == []


def test_a_slow_host_times_out(ec_key: SigningKey, caplog: pytest.LogCaptureFixture) -> None:
    with JwksServer(jwks_of(ec_key)) as server:
        server.set_delay(1.0)
        cache = JwksCache(clock=FakeClock(), timeout=0.2)
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="cds_service.security"):
            assert cache.get_key(client_for(server.url), "ec-1") is None
        assert time.monotonic() - started < 0.9
        assert "ReadTimeout" in caplog.text


def test_an_unreachable_host_is_a_missing_key(caplog: pytest.LogCaptureFixture) -> None:
    cache = JwksCache(clock=FakeClock())
    with caplog.at_level(logging.WARNING, logger="cds_service.security"):
        assert cache.get_key(client_for(f"http://127.0.0.1:{free_port()}/jwks.json"), "ec-1") is None
    assert "ConnectionError" in caplog.text


def test_an_oversized_jwks_is_refused(server: JwksServer, ec_key: SigningKey, caplog: pytest.LogCaptureFixture) -> None:
    padding = [{"kty": "EC", "kid": f"pad-{index}", "crv": "P-999", "x": "A" * 100} for index in range(3000)]
    server.set_jwks({"keys": [ec_key.public_jwk(), *padding]})
    cache = JwksCache(clock=FakeClock())
    with caplog.at_level(logging.WARNING, logger="cds_service.security"):
        assert cache.get_key(client_for(server.url), "ec-1") is None
    assert "larger than 262144 bytes" in caplog.text


def test_a_document_that_is_not_a_jwks_is_refused(server: JwksServer, caplog: pytest.LogCaptureFixture) -> None:
    server.set_jwks({"jwks": []})
    with caplog.at_level(logging.WARNING, logger="cds_service.security"):
        assert JwksCache(clock=FakeClock()).get_key(client_for(server.url), "ec-1") is None
    assert "not a JWK Set" in caplog.text


def test_pinned_keys_never_fetch_and_unknown_kids_use_the_url(
    server: JwksServer, rsa_key: SigningKey, ec_key: SigningKey
) -> None:
    cache = JwksCache(clock=FakeClock())
    client = client_for(server.url, jwks=jwks_of(rsa_key))
    assert cache.get_key(client, "rsa-1") is not None
    assert server.request_paths == []
    assert cache.get_key(client, "ec-1") is not None
    assert len(server.request_paths) == 1


def test_pinned_only_client_never_fetches(rsa_key: SigningKey) -> None:
    cache = JwksCache(clock=FakeClock())
    client = client_for(None, jwks=jwks_of(rsa_key))
    assert cache.get_key(client, "rsa-1") is not None
    assert cache.get_key(client, "other") is None
    assert cache.fetch_count == 0


def test_concurrent_first_use_fetches_once(server: JwksServer) -> None:
    cache = JwksCache()
    client = client_for(server.url)
    barrier = threading.Barrier(12)
    found: list[bool] = []

    def worker() -> None:
        barrier.wait()
        found.append(cache.get_key(client, "ec-1") is not None)

    threads = [threading.Thread(target=worker) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert found == [True] * 12
    assert len(server.request_paths) == 1


# ---------------------------------------------------------------------------------------------------- keys


def test_rsa_key_without_alg_allows_every_rsa_algorithm(rsa_key: SigningKey) -> None:
    assert parse_jwk(rsa_key.public_jwk()).algorithms == RSA_ALGORITHMS


def test_rsa_key_with_alg_allows_only_that_algorithm(rsa_key: SigningKey) -> None:
    assert parse_jwk(rsa_key.public_jwk(alg="RS384")).algorithms == {"RS384"}


@pytest.mark.parametrize(("kind", "algorithm"), [("EC-P256", "ES256"), ("EC-P384", "ES384")])
def test_ec_key_allows_only_its_curve_algorithm(kind: str, algorithm: str) -> None:
    assert parse_jwk(SigningKey(kind, kid="k").public_jwk()).algorithms == {algorithm}


def test_a_published_private_key_yields_only_its_public_half() -> None:
    key = SigningKey("EC-P384", kid="k")
    from jwt.algorithms import ECAlgorithm

    private_jwk = json.loads(ECAlgorithm.to_jwk(key.private_key))
    private_jwk["kid"] = "k"
    assert isinstance(parse_jwk(private_jwk).public_key, EllipticCurvePublicKey)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"kid": None}, "no \"kid\""),
        ({"use": "enc"}, "\"use\" is 'enc', not \"sig\""),
        ({"key_ops": ["encrypt"]}, "\"key_ops\" does not include \"verify\""),
        ({"alg": "ES256"}, "\"alg\" 'ES256' does not match curve P-384 (ES384)"),
        ({"alg": "HS256"}, "\"alg\" 'HS256' does not match curve P-384 (ES384)"),
        ({"crv": "secp256k1"}, "unsupported EC curve 'secp256k1'"),
        ({"y": None}, "missing y"),
        ({"x": "AAAA"}, "invalid key material"),
    ],
)
def test_unusable_ec_keys(ec_key: SigningKey, change: dict[str, Any], reason: str) -> None:
    jwk = {**ec_key.public_jwk(), **change}
    jwk = {name: value for name, value in jwk.items() if value is not None}
    with pytest.raises(ValueError) as caught:
        parse_jwk(jwk)
    assert str(caught.value).startswith(reason)


@pytest.mark.parametrize(
    ("jwk", "reason"),
    [
        ({"kty": "oct", "kid": "h", "k": "c2VjcmV0"}, "unsupported key type 'oct'"),
        ({"kty": "RSA", "kid": "r", "alg": "HS256", "n": "AQAB", "e": "AQAB"}, "\"alg\" 'HS256' is not an allowed RSA"),
        ({"kty": "RSA", "kid": "r", "n": "xjlCRBqkQRhb4RxRl6tEbJ9rW7c", "e": "AQAB"}, "RSA key of 160 bits"),
    ],
)
def test_unusable_keys(jwk: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_jwk(jwk)
    assert str(caught.value).startswith(reason)


def test_parse_jwks_skips_bad_keys_and_duplicate_kids(ec_key: SigningKey, rsa_key: SigningKey) -> None:
    impostor = SigningKey("EC-P384", kid="ec-1")
    document = {"keys": ["junk", {"kty": "oct", "kid": "h", "k": "x"}, ec_key.public_jwk(), impostor.public_jwk(),
                         rsa_key.public_jwk()]}
    keys = parse_jwks(document, source="test")
    assert set(keys) == {"ec-1", "rsa-1"}
    assert keys["ec-1"].public_key.public_numbers() == ec_key.private_key.public_key().public_numbers()


@pytest.mark.parametrize("document", [[], {"keys": {}}, {"keys": []}, {"keys": [{"kty": "oct", "kid": "h"}]}])
def test_parse_jwks_refuses_documents_without_usable_keys(document: Any) -> None:
    with pytest.raises(JwksFormatError):
        parse_jwks(document, source="test")
